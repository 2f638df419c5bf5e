"""Merge a LoRA adapter into its base LLM and write a full, self-contained checkpoint.

A vlmkit adapter becomes a full vlmkit checkpoint; a native transformers VLM's adapter directory (adapter +
connector trained in full + processor files) becomes a full transformers checkpoint that
`AutoModelForImageTextToText.from_pretrained` loads with no peft and no vlmkit.

The base LLM is loaded in its saved precision (never 4-bit, even for a QLoRA adapter), so the merged weights
are `W + scale * B @ A` exactly; the encoder is copied into the output so nothing is referenced by path.
A reward model's adapter stays a reward model: its score head (which reads the merged backbone) goes along.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from vlmkit.models.native.loading import is_native_adapter, load_native_checkpoint, save_processor
from vlmkit.models.reward_files import HEAD_FILE, REWARD_CONFIG_FILE
from vlmkit.models.vlm import VLM


def merge_lora(model: VLM) -> VLM:
    """Fold the LoRA weights into the LLM (in place); a model without adapters is returned unchanged."""
    if model.is_peft:
        model.language_model = model.language_model.merge_and_unload()
    return model


def _carry_reward_head(adapter_dir: Path, out: Path) -> None:
    """Copy a reward model's score head and its config beside the merged backbone (nothing for a policy)."""
    if (adapter_dir / HEAD_FILE).is_file():
        for name in (HEAD_FILE, REWARD_CONFIG_FILE):
            shutil.copy2(adapter_dir / name, out / name)


def merge_checkpoint(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Load the adapter checkpoint at `adapter_dir`, merge it, and save encoder + connector + full LLM to `out_dir`
    (with the score head when it is a reward model)."""
    from vlmkit.models.build import load_vlm

    adapter_dir = Path(adapter_dir)
    if is_native_adapter(adapter_dir):
        out = merge_native_checkpoint(adapter_dir, out_dir)
        _carry_reward_head(adapter_dir, out)
        return out
    if not (adapter_dir / "language_model" / "adapter_config.json").is_file():
        raise ValueError(
            f"{adapter_dir} holds no LoRA adapter (language_model/adapter_config.json is missing): nothing to "
            "merge. A full checkpoint can be used or exported as it is."
        )
    model, processor = load_vlm(str(adapter_dir))
    model = merge_lora(model)
    model.config.lineage = list(model.config.lineage) + [{"merged_from": str(adapter_dir.resolve())}]
    out = Path(out_dir)
    model.save_pretrained(out, save_encoder=True)
    processor.save_pretrained(out)
    _carry_reward_head(adapter_dir, out)
    return out


def merge_native_checkpoint(adapter_dir: str | Path, out_dir: str | Path) -> Path:
    """Fold a native VLM's LoRA adapter (and its fully trained modules) into the base; save model + processor."""
    model, processor = load_native_checkpoint(adapter_dir)
    merged = model.merge_and_unload()
    out = Path(out_dir)
    merged.save_pretrained(out)
    save_processor(processor, out)
    return out
