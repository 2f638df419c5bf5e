"""Sequence boundaries of packed rows, handed explicitly to the LLM's attention.

A packed row holds several samples back to back; its position ids restart at 0 at every sample start
(`vlmkit.data.packing`). transformers notices such resets by itself only when there is no attention mask
and no KV cache, and silently attends across samples otherwise. So the boundaries are passed explicitly:

- sdpa / eager: a 4-D block-diagonal causal mask (boolean for sdpa, additive in the model dtype for eager),
  which transformers uses as given;
- flash_attention_2/3: the varlen kwargs `cu_seq_lens_q/k` and `max_length_q/k` of the one flattened row
  (`PackedCollator(flatten=True)`), which transformers passes to `flash_attn_varlen_func`.

A KV cache cannot hold packed rows (the next token would attend to every sample), so `use_cache=True` with
packed rows is refused.
"""

from __future__ import annotations

import torch

from vlmkit.data.packing import block_causal_mask


def is_packed(position_ids: torch.Tensor | None, attention_mask: torch.Tensor | None) -> bool:
    """True when some row holds several samples: its position ids restart at 0 after the first token.

    Rows with a 2-D padding mask are padded rows, not packed ones (left-padded prompts repeat positions too).
    """
    if position_ids is None or (attention_mask is not None and attention_mask.dim() == 2):
        return False
    return bool((position_ids[:, 1:] == 0).any())


def packed_attention_kwargs(
    attn_implementation: str,
    position_ids: torch.Tensor | None,
    attention_mask: torch.Tensor | None,
    dtype: torch.dtype,
    *,
    use_cache: bool = False,
) -> dict:
    """Keyword arguments for the LLM call that carry the sample boundaries of packed rows.

    position_ids: (R, T). Returns {} for rows that are not packed or that already carry a 4-D mask,
    {"attention_mask": (R, 1, T, T)} for sdpa/eager, the flash varlen kwargs for flash attention.
    """
    if not is_packed(position_ids, attention_mask):
        return {}
    if use_cache:
        raise ValueError(
            "use_cache=True with packed rows (position ids restart inside a row): a KV cache would let later "
            "tokens attend to every packed sample; call the model with use_cache=False, or unpack the rows"
        )
    if attention_mask is not None:  # an explicit 4-D block-diagonal mask (PackedCollator(explicit_mask=True))
        return {}
    if attn_implementation.startswith("flash_attention"):
        if position_ids.shape[0] != 1:
            raise ValueError(
                f"{attn_implementation} takes packed samples as one flattened row (PackedCollator(flatten=True)); "
                f"got {position_ids.shape[0]} rows"
            )
        begins = position_ids[0] == 0
        begins[0] = True  # a row always starts a sample
        starts = begins.nonzero().view(-1)
        total = torch.tensor([position_ids.shape[1]], device=starts.device)
        cu_seq_lens = torch.cat([starts, total]).to(torch.int32)
        longest = int(cu_seq_lens.diff().max())
        return {
            "cu_seq_lens_q": cu_seq_lens, "cu_seq_lens_k": cu_seq_lens,
            "max_length_q": longest, "max_length_k": longest,
        }  # fmt: skip
    if attn_implementation == "sdpa":
        return {"attention_mask": block_causal_mask(position_ids, torch.bool)}
    if attn_implementation == "eager":
        return {"attention_mask": block_causal_mask(position_ids, dtype)}
    raise ValueError(
        f"packed rows need sdpa, eager or flash attention in the LLM; it uses '{attn_implementation}'. "
        "Set --attn_implementation sdpa or turn --packing off"
    )
