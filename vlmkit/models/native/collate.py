"""Batches of native-VLM samples: one collator that pads and merges what each family's processor returns.

Per-token keys (`SEQUENCE_KEYS`) are padded to the longest sample (right for training, left for generation).
Media keys are merged the way each model reads them:

- one row per image (LLaVA, PaliGemma, Gemma 3: `pixel_values` (N, 3, H, W); Qwen2-VL: patches
  (sum of patches, D) with `image_grid_thw` (N, 3); LLaVA-NeXT/OneVision: (N, P, 3, H, W) with
  `image_sizes`, P zero-padded to the largest): concatenated, so text-only samples simply add nothing;
- one row per sample (Idefics3/SmolVLM: `pixel_values` (B, tiles, 3, H, W) and `pixel_attention_mask`):
  tiles zero-padded, and an all-zero row for a text-only sample, which the model drops as padding;
- `batch_num_images` (OneVision): images per sample, 0 for a text-only one.
"""

from __future__ import annotations

import torch

from vlmkit.models.native.encoding import SEQUENCE_KEYS

PER_SAMPLE_MEDIA = {"idefics3": ("pixel_values", "pixel_attention_mask"),
                    "smolvlm": ("pixel_values", "pixel_attention_mask")}  # fmt: skip


def _pad_dim1(tensors: list[torch.Tensor]) -> list[torch.Tensor]:
    """Zero-pad dim 1 of same-rank tensors to the largest size."""
    width = max(t.shape[1] for t in tensors)
    out = []
    for t in tensors:
        pad = t.new_zeros((t.shape[0], width - t.shape[1], *t.shape[2:]))
        out.append(torch.cat([t, pad], dim=1))
    return out


def pad_token_keys(items: list[dict], pad_token_id: int, *, left: bool = False) -> dict[str, torch.Tensor]:
    """The per-token keys of `items` (each (1, T_i)) padded into (B, T_max)."""
    width = max(it["input_ids"].shape[1] for it in items)
    batch = {}
    for key, value in SEQUENCE_KEYS.items():
        if key not in items[0]:
            continue
        fill = pad_token_id if value is None else value
        rows = []
        for it in items:
            row = it[key][0]
            pad = row.new_full((width - len(row),), fill)
            rows.append(torch.cat([pad, row] if left else [row, pad]))
        batch[key] = torch.stack(rows)
    return batch


class NativeCollator:
    """Collate encoded samples (`NativeEncoder.encode` / `encode_prompt` outputs) into one batch.

    None items (a sample whose media failed to load under `on_bad_sample: skip`) are dropped; a batch left
    empty is `{"empty": True}`, which the training loop steps over.
    """

    def __init__(self, pad_token_id: int, model_type: str, *, left_pad: bool = False):
        self.pad_token_id, self.model_type, self.left_pad = pad_token_id, model_type, left_pad

    def __call__(self, items: list[dict | None]) -> dict:
        items = [it for it in items if it is not None]
        if not items:
            return {"empty": True}
        batch = pad_token_keys(items, self.pad_token_id, left=self.left_pad)
        return {**batch, **merge_media(items, self.model_type)}


def merge_media(items: list[dict], model_type: str) -> dict[str, torch.Tensor]:
    """The media keys of `items` merged into batch tensors, in item order (see the module docstring).

    For a family with per-sample media (Idefics3) each item is one batch row."""
    batch = {}
    media_keys = sorted({k for it in items for k in it} - set(SEQUENCE_KEYS))
    per_sample = PER_SAMPLE_MEDIA.get(model_type, ())
    for key in media_keys:
        present = [it[key] for it in items if key in it]
        if key == "batch_num_images":
            batch[key] = torch.cat([it.get(key, torch.zeros(1, dtype=torch.long)) for it in items])
        elif key in per_sample:
            like = present[0]
            rows = [it.get(key, like.new_zeros((1, 1, *like.shape[2:]))) for it in items]
            batch[key] = torch.cat(_pad_dim1(rows))
        elif present[0].dim() == 5:  # any-res patches per image
            batch[key] = torch.cat(_pad_dim1(present))
        else:
            batch[key] = torch.cat(present)
    return batch
