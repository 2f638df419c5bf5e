"""Padding-free packing for native VLMs: whole samples back to back in one row, attention within each sample.

A packed row holds several encoded samples (text, the processor's expanded media tokens, labels); their
media inputs are merged in the same order, so the model fills its placeholder tokens sample by sample as it
would for an unpacked batch. Position ids restart at 0 for every sample, and `native_forward` hands the
boundaries to the attention explicitly (`vlmkit.models.packed_attention`: a 4-D block-diagonal causal mask for
sdpa/eager, flash-attn varlen offsets for one flattened row), as the composite model does.

- 1-D RoPE families (LLaVA, LLaVA-NeXT, LLaVA-OneVision, Idefics3 = SmolVLM v1): positions `arange` per sample.
- M-RoPE families (Qwen2-VL, Qwen2.5-VL): every sample's 3-D positions from the model's own
  `get_rope_index`, concatenated after a row of 1-D text positions, as transformers reads (4, R, T).
- Families whose image tokens attend both ways (PaliGemma, Gemma 3: `token_type_ids`) or that are not
  verified here are refused: a causal block mask would silently change what they compute.

The first label of every sample is -100 (as in `vlmkit.data.packing`), which it already is for every native
template (the first token is never an assistant token), so packed and unpacked batches supervise the same tokens.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from vlmkit.data.packing import packed_rows
from vlmkit.data.tokenize import IGNORE_INDEX
from vlmkit.models.native.collate import PER_SAMPLE_MEDIA, merge_media
from vlmkit.models.native.encoding import SEQUENCE_KEYS
from vlmkit.models.packed_attention import packed_attention_kwargs

# Each checked against unpacked logits (tests/models/native/test_native_packing.py).
PACKABLE = ("llava", "llava_next", "llava_onevision", "idefics3", "qwen2_vl", "qwen2_5_vl")
_REFUSED = {
    "paligemma": "its prefix (image and prompt) attends both ways (token_type_ids)",
    "gemma3": "its image tokens attend both ways (token_type_ids) and it has sliding-window layers",
}


def check_packable(model_type: str) -> None:
    """Raise a clear error for a family whose packed rows would not compute what unpacked ones do."""
    if model_type in PACKABLE:
        return
    why = _REFUSED.get(model_type, "packing is not verified for this family")
    raise ValueError(
        f"--packing is not available for native {model_type} models: {why}, so a packed causal mask would "
        f"change what the model computes. Train without --packing (--group_by_length cuts padding instead); "
        f"packing supports {', '.join(PACKABLE)}"
    )


def mrope_index(model) -> Callable[[dict], torch.Tensor] | None:
    """For an M-RoPE model (one with `get_rope_index`): sample -> its (3, T) positions; None for 1-D RoPE."""
    rope_index = next((m.get_rope_index for m in model.modules() if hasattr(m, "get_rope_index")), None)
    if rope_index is None:
        return None

    def positions(sample: dict) -> torch.Tensor:
        grids = {k: sample[k] for k in ("image_grid_thw", "video_grid_thw") if k in sample}
        with torch.no_grad():
            ids = sample["input_ids"]
            mm_types = sample.get("mm_token_type_ids", torch.zeros_like(ids))
            return rope_index(ids, mm_types.to(ids.device), **grids)[0][:, 0].cpu()

    return positions


class NativePackedCollator:
    """Packed rows (lists of encoded samples) or single samples -> one padding-free batch.

    Returns the per-token keys (R, T) without an attention mask, `position_ids` (R, T), or (4, R, T) with
    `rope_index` (see `mrope_index`), and the merged media. Rows shorter than the longest are right-padded
    with a dummy sequence of their own (labels -100). `flatten` puts the whole batch in one row (flash-attn).
    """

    def __init__(
        self,
        pad_token_id: int,
        model_type: str,
        *,
        rope_index: Callable[[dict], torch.Tensor] | None = None,
        flatten: bool = False,
    ):
        check_packable(model_type)
        self.pad_token_id, self.model_type = pad_token_id, model_type
        self.rope_index, self.flatten = rope_index, flatten

    def _positions(self, sample: dict) -> torch.Tensor:
        """(P, T): 1-D positions, with the sample's 3-D M-RoPE positions below them for M-RoPE models."""
        text = torch.arange(sample["input_ids"].shape[1])[None]
        return text if self.rope_index is None else torch.cat([text, self.rope_index(sample)])

    def _row_media(self, row: list[dict]) -> list[dict]:
        """Media items in placeholder order: every sample's own, or one per row for per-sample media."""
        per_sample = PER_SAMPLE_MEDIA.get(self.model_type, ())
        if not per_sample:
            return row
        merged = {}
        for key in per_sample:
            parts = [s[key] for s in row if key in s]
            if parts:
                merged[key] = torch.cat(parts, dim=1)  # the row's images one after another
        return [merged]

    def __call__(self, rows: list) -> dict:
        rows = packed_rows(rows, self.flatten)
        if not rows:
            return {"empty": True}
        keys = [k for k in SEQUENCE_KEYS if k in rows[0][0] and k != "attention_mask"]
        width = max(sum(s["input_ids"].shape[1] for s in r) for r in rows)
        columns: dict[str, list] = {k: [] for k in [*keys, "position_ids"]}
        for row in rows:
            pad = width - sum(s["input_ids"].shape[1] for s in row)
            for key in keys:
                fill = SEQUENCE_KEYS[key]
                fill = self.pad_token_id if fill is None else fill
                parts = [s[key][0] for s in row]
                if key == "labels":
                    parts = [torch.cat([p.new_full((1,), IGNORE_INDEX), p[1:]]) for p in parts]
                columns[key].append(torch.cat([*parts, parts[0].new_full((pad,), fill)]))
            positions = [self._positions(s) for s in row]
            dummy = torch.arange(pad).expand(positions[0].shape[0], -1)  # padding: a sequence of its own
            columns["position_ids"].append(torch.cat([*positions, dummy], dim=1))
        batch = {k: torch.stack(v) for k, v in columns.items()}
        positions = batch["position_ids"].transpose(0, 1)  # (P, R, T)
        batch["position_ids"] = positions[0] if self.rope_index is None else positions
        media_items = [m for row in rows for m in self._row_media(row)]
        return {**batch, **merge_media(media_items, self.model_type)}


def native_forward(model, batch: dict, *, use_cache: bool = False):
    """The model's forward on a batch (labels left out), packed rows' sample boundaries passed explicitly.

    `use_cache=True` with packed rows is refused (a KV cache would let later tokens see every sample)."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    positions = inputs.get("position_ids")
    if positions is not None:
        text_positions = positions[0] if positions.dim() == 3 else positions
        attn = model.config.get_text_config()._attn_implementation
        dtype = model.get_input_embeddings().weight.dtype
        inputs |= packed_attention_kwargs(
            attn, text_positions, inputs.get("attention_mask"), dtype, use_cache=use_cache
        )
    return model(**inputs, use_cache=use_cache)
