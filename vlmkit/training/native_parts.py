"""The three parts of a native VLM (vision tower, connector, language model), what trains, and LoRA on them.

Defaults follow what fine-tuning a released VLM usually needs: the vision tower frozen, the connector
(LLaVA's `multi_modal_projector`, Qwen2-VL's `visual.merger`, Idefics3's `connector`) trained in full, the
language model trained in full or through LoRA adapters on its linear layers. Beside LoRA, what trains in
full (connector, a tuned vision tower, `modules_to_save`) is a peft `modules_to_save` copy, so that the adapter
directory saves it and "adapters off" (the RL reference) is the untouched start.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

from torch import nn

from vlmkit.training.freeze import count_parameters

logger = logging.getLogger(__name__)

_VISION = ("vision_tower", "visual", "vision_model")
_CONNECTOR = ("multi_modal_projector", "connector", "merger")
_LANGUAGE = ("language_model", "text_model")


@dataclass
class NativeParts:
    """Dotted module names (relative to the model) of each part."""

    vision: str
    connector: str
    language_model: str


def _find(model: nn.Module, names: tuple[str, ...], what: str) -> str:
    modules = dict(model.named_modules())
    for candidate in sorted(modules, key=lambda n: n.count(".")):
        if candidate.rsplit(".", 1)[-1] in names:
            return candidate
    raise ValueError(f"{type(model).__name__}: no {what} module (looked for {', '.join(names)})")


def native_parts(model: nn.Module) -> NativeParts:
    """Locate vision tower, connector and language model in a transformers image-text model."""
    return NativeParts(
        vision=_find(model, _VISION, "vision tower"),
        connector=_find(model, _CONNECTOR, "connector"),
        language_model=_find(model, _LANGUAGE, "language model"),
    )


def set_native_trainable(
    model: nn.Module,
    *,
    tune_vision_tower: bool = False,
    tune_connector: bool = True,
    tune_language_model: bool = True,
) -> tuple[int, int]:
    """Freeze/unfreeze the parts (LoRA weights always train when present); logs and returns the counts."""
    base = model.get_base_model() if hasattr(model, "peft_config") else model
    parts = native_parts(base)
    is_peft = hasattr(model, "peft_config")
    model.requires_grad_(False)
    if tune_language_model and not is_peft:
        base.get_submodule(parts.language_model).requires_grad_(True)
        base.get_output_embeddings().requires_grad_(True)
    if is_peft:  # LoRA weights and the full copies peft keeps of `modules_to_save` (connector, lm_head...)
        for name, p in model.named_parameters():
            if ("lora_" in name or "modules_to_save." in name) and p.is_floating_point():
                p.requires_grad_(True)
        tower_copy = [n for n, p in model.named_parameters() if p.requires_grad and _in_tower(n, parts)]
        if tune_vision_tower and not tower_copy:
            raise ValueError(
                "tune_vision_tower with LoRA: this adapter does not keep a trainable copy of the vision tower "
                "(it was made without --tune_vision_tower), so a trained tower would not be saved; start "
                "from the base model with --use_lora --tune_vision_tower, or train in full"
            )
    else:  # the tower, then the connector: Qwen2-VL's merger lives inside the tower
        base.get_submodule(parts.vision).requires_grad_(tune_vision_tower)
        base.get_submodule(parts.connector).requires_grad_(tune_connector)
        for p in _outside_the_parts(base, parts):  # LLaVA-NeXT/OneVision's image_newline: connector-side
            p.requires_grad_(tune_connector)
    trainable, frozen = count_parameters(model)
    logger.info(
        "trainable %d / frozen %d parameters (vision tower %s, connector %s, language model %s)",
        trainable, frozen, "trained" if tune_vision_tower else "frozen", "trained" if tune_connector else "frozen",
        "LoRA" if is_peft else ("trained" if tune_language_model else "frozen"),
    )  # fmt: skip
    return trainable, frozen


def _outside_the_parts(model: nn.Module, parts: NativeParts) -> list[nn.Parameter]:
    """Parameters in none of the three parts nor the LM head (LLaVA-NeXT's learned `image_newline`). They train
    with the connector in full fine-tuning; beside LoRA they stay as they are (peft saves modules only)."""
    prefixes = tuple(f"{name}." for name in (parts.vision, parts.connector, parts.language_model))
    head = {id(p) for p in model.get_output_embeddings().parameters()}
    return [p for n, p in model.named_parameters() if not n.startswith(prefixes) and id(p) not in head]


def _in_tower(name: str, parts: NativeParts) -> bool:
    """Whether the (possibly peft-prefixed) parameter `name` belongs to the vision tower, not the connector."""
    return f"{parts.vision}." in name and f"{parts.connector}." not in name


def tower_modules(model: nn.Module) -> list[str]:
    """What `--tune_vision_tower` trains beside LoRA, as module names: the tower, or, where the connector sits
    inside it (Qwen2-VL's `visual.merger`), the tower's other parts that hold parameters (a list's items one
    by one: peft copies modules, not lists)."""
    parts = native_parts(model)
    if not parts.connector.startswith(parts.vision + "."):
        return [parts.vision]
    names = []
    for name, child in model.get_submodule(parts.vision).named_children():
        name = f"{parts.vision}.{name}"
        items = child.named_children() if isinstance(child, (nn.ModuleList, nn.ModuleDict)) else [("", child)]
        for item, module in items:
            full = f"{name}.{item}" if item else name
            if next(module.parameters(), None) is not None and not parts.connector.startswith(full):
                names.append(full)
    return names


def language_model_linear_names(model: nn.Module) -> list[str]:
    """Full names of the language model's linear layers (the default LoRA targets)."""
    prefix = native_parts(model).language_model + "."
    return [n for n, m in model.named_modules() if n.startswith(prefix) and isinstance(m, nn.Linear)]


def lora_target_names(model: nn.Module, requested: list[str] | None) -> list[str]:
    """The language-model linear layers LoRA adapts: all of them for None or `["all-linear"]`, else those
    whose last name is in `requested` (e.g. q_proj v_proj). Vision-tower layers of the same name are never
    adapted: `--tune_vision_tower` trains the tower in full instead."""
    linear = language_model_linear_names(model)
    if not requested or list(requested) == ["all-linear"]:
        return linear
    chosen = [n for n in linear if n.rsplit(".", 1)[-1] in requested]
    if not chosen:
        valid = sorted({n.rsplit(".", 1)[-1] for n in linear})
        raise ValueError(
            f"lora_target_modules {list(requested)} match no linear layer of the language model; "
            f"valid: all-linear or any of {', '.join(valid)}"
        )
    return chosen


def apply_native_lora(
    model: nn.Module,
    *,
    r: int = 16,
    alpha: int = 32,
    dropout: float = 0.0,
    target_modules: list[str] | None = None,
    modules_to_save: list[str] | None = None,
    tune_vision_tower: bool = False,
    tune_connector: bool = True,
):
    """Wrap `model` with LoRA adapters on the language model (`lora_target_names`; default: all its linear layers).

    The connector (when `tune_connector`), the vision tower (when `tune_vision_tower`) and `modules_to_save`
    (e.g. `["lm_head"]`) train in full and are saved with the adapter.
    """
    from peft import LoraConfig, get_peft_model

    targets = lora_target_names(model, target_modules)
    if not targets:
        raise ValueError(f"{type(model).__name__}: no LoRA target modules found in the language model")
    full = list(modules_to_save or [])
    if tune_connector:
        full.append(native_parts(model).connector.rsplit(".", 1)[-1])
    if tune_vision_tower:
        full += tower_modules(model)
    config = LoraConfig(
        r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=targets, bias="none", modules_to_save=full
    )
    peft_model = get_peft_model(model, config)
    set_native_trainable(peft_model, tune_vision_tower=tune_vision_tower, tune_connector=tune_connector)
    return peft_model
