"""Prompts computed once per group: the rows of an RL batch that repeat a prompt share its forward pass.

GRPO samples `num_generations` completions of each prompt, so a batch holds every prompt G times (the same
`Sample`, tokenized once: identical left-padded rows and media). Under causal attention the keys and values
of a prompt's positions depend on that prompt alone, so they are computed for one row per distinct prompt
and gathered for every row (`Cache.batch_select_indices`); only the rest runs on all B rows:
- generation prefills the first P - 1 prompt positions this way (`prefilled_cache`), then `generate` runs
  the last prompt position and the responses on the KV cache as before;
- a log-prob pass (reference, old policy, the update) runs the first P - 1 positions per distinct prompt
  and the last T + 1 (those whose logits the pass keeps) per row (`shared_prefix_forward`). With a gradient,
  the gather sums the rows' gradients into their shared prompt, as the full pass sums them over its copies;
- a frozen encoder encodes each distinct media item once (`SharedPrompts.media_rows`).
This regroups the same computation: logits and gradients equal the full pass's up to float rounding (products
over fewer rows, and the gradient sums, may round differently), so sampled tokens stay the same unless a draw
falls within rounding of a boundary; over a long run such differences can grow as any rounding change does.
Shapes as in `vlmkit.rlhf.rollout`.
"""

from __future__ import annotations

import functools
import inspect
from dataclasses import dataclass

import torch
from torch import Tensor, nn


@dataclass
class SharedPrompts:
    """Which rows of a batch repeat a prompt. rows: (U,) one row per distinct prompt; index: (B,) each row's
    position in `rows`; media_rows: (n_U,) the media items of `rows`, in order; media_index: (n,) each media
    item's position in `media_rows`; prompt_length: P, the batch's (left-padded) prompt length."""

    rows: Tensor
    index: Tensor
    media_rows: Tensor
    media_index: Tensor
    prompt_length: int


def shared_prompts(
    samples: list, media_counts: list[int], prompt_length: int, device
) -> SharedPrompts | None:
    """The rows holding the same `Sample` object share its prompt; None when every prompt is distinct."""
    rows: list[int] = []
    position: dict[int, int] = {}  # id(sample) -> its position in rows
    for r, s in enumerate(samples):
        if id(s) not in position:
            position[id(s)] = len(rows)
            rows.append(r)
    if len(rows) == len(samples) or prompt_length < 2:
        return None
    index = [position[id(s)] for s in samples]
    starts = [0]
    for n in media_counts:
        starts.append(starts[-1] + n)
    media_rows = [m for r in rows for m in range(starts[r], starts[r + 1])]
    first_media = [0]
    for r in rows:
        first_media.append(first_media[-1] + media_counts[r])
    media_index = [first_media[index[r]] + j for r in range(len(samples)) for j in range(media_counts[r])]

    def tensor(values: list[int]) -> Tensor:
        return torch.tensor(values, dtype=torch.long, device=device)

    return SharedPrompts(tensor(rows), tensor(index), tensor(media_rows), tensor(media_index), prompt_length)


def _cache_name(language_model: nn.Module) -> str:
    """The KV cache's keyword in this transformers version: `cache` (later 5.x) or `past_key_values`."""
    base = language_model.get_base_model() if hasattr(language_model, "get_base_model") else language_model
    return _cache_keyword(type(base))


@functools.cache
def _cache_keyword(model_class: type) -> str:
    return "cache" if "cache" in inspect.signature(model_class.forward).parameters else "past_key_values"


def partitioned(module: nn.Module) -> bool:
    """Whether `module`'s parameters are split across processes (DeepSpeed ZeRO-3 marks them with `ds_id`, FSDP2
    makes them DTensors, FSDP1 flattens them). Each forward then gathers them collectively, so every process
    must run the same passes, while how many of its rows repeat a prompt differs: no sharing there."""
    param = next(iter(module.parameters()), None)
    if param is None:
        return False
    return (
        hasattr(param, "ds_id") or hasattr(param, "_local_tensor") or type(param).__name__ == "FlatParameter"
    )


def can_share(policy: nn.Module, inputs: dict, logits_to_keep: int, output_hidden_states: bool) -> bool:
    """Whether `shared_prefix_forward` computes what `policy`'s full pass over `inputs` would return: a
    repeated prompt, logits wanted for the tail only (no hidden states), no activation checkpointing in
    training (which turns the cache off), no media placeholder in the tail, and parameters that are not
    partitioned across processes (see `partitioned`)."""
    shared: SharedPrompts | None = inputs.get("shared_prompts")
    if shared is None or output_hidden_states or partitioned(policy):
        return False
    tail = inputs["input_ids"].shape[1] - (shared.prompt_length - 1)
    if not 0 < logits_to_keep <= tail:
        return False
    lm = policy.language_model
    if lm.training and any(getattr(m, "gradient_checkpointing", False) is True for m in lm.modules()):
        return False
    return not bool(
        (inputs["input_ids"][:, shared.prompt_length - 1 :] == policy.config.media_token_id).any()
    )


def _prompt_cache(policy: nn.Module, inputs: dict, shared: SharedPrompts) -> tuple[str, object]:
    """(the cache's keyword, the KV cache of the first P - 1 positions of every row): one row per distinct
    prompt runs, then each row gathers its prompt's keys and values."""
    rows, prefix = shared.rows, shared.prompt_length - 1
    media, features = inputs.get("media"), inputs.get("media_features")
    if features is not None:
        features, media = features[shared.media_rows], None
    elif media is not None:
        media = media[shared.media_rows]
    embeds = policy.embed(inputs["input_ids"][rows, :prefix], media, features)
    name = _cache_name(policy.language_model)
    out = policy.language_model(
        inputs_embeds=embeds, attention_mask=inputs["attention_mask"][rows, :prefix],
        position_ids=inputs["position_ids"][rows, :prefix], use_cache=True, logits_to_keep=1,
    )  # fmt: skip
    cache = getattr(out, name)
    cache.batch_select_indices(shared.index)
    return name, cache


def shared_prefix_forward(policy: nn.Module, inputs: dict, logits_to_keep: int):
    """A composite VLM's output on `Rollout.model_inputs()` (logits (B, logits_to_keep, V)), each distinct
    prompt computed once (see the module docstring; check `can_share` first)."""
    prefix = inputs["shared_prompts"].prompt_length - 1
    name, cache = _prompt_cache(policy, inputs, inputs["shared_prompts"])
    tail = policy.language_model.get_input_embeddings()(inputs["input_ids"][:, prefix:])
    return policy.language_model(
        inputs_embeds=tail, attention_mask=inputs["attention_mask"],
        position_ids=inputs["position_ids"][:, prefix:], use_cache=True, logits_to_keep=logits_to_keep,
        **{name: cache},
    )  # fmt: skip


@torch.no_grad()
def prefilled_cache(policy: nn.Module, inputs: dict) -> dict:
    """`generate`'s keyword argument holding the KV cache of the first P - 1 prompt positions of every row,
    each distinct prompt computed once (`inputs`: a prompt batch's `model_inputs()`; check `can_share`)."""
    name, cache = _prompt_cache(policy, inputs, inputs["shared_prompts"])
    return {name: cache}
