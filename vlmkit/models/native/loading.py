"""Load a native transformers image-text checkpoint (model + processor) with errors that say what to do.

A native checkpoint is a directory (or Hub name) whose `config.json` maps to `AutoModelForImageTextToText`
(Qwen2-VL, LLaVA-hf, SmolVLM, Gemma 3, PaliGemma...); a vlmkit composite checkpoint has `vlmkit_config.json`
instead (see `vlmkit.models.vlm`) and loads with `vlmkit.models.build.load_vlm`.

Without torchvision, transformers cannot build the video processor that Qwen2-VL and LLaVA-OneVision
processors hold; images never need it, so those processors load (and save) image-only here.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from unittest import mock

from vlmkit.models.vlm import CONFIG_FILE as VLMKIT_CONFIG_FILE

# Patterns (matched from the start of a module name) kept out of 4-bit quantization.
QUANTIZATION_SKIP = (
    r".*\.vision_tower", r".*\.visual", r".*\.vision_model", r".*\.multi_modal_projector", r".*\.connector",
    "lm_head",
)  # fmt: skip


class NativeModelError(ValueError):
    """A checkpoint that cannot be loaded as a native image-text model; the message says what to do."""


def _read_config(path: Path) -> dict | None:
    file = path / "config.json"
    return json.loads(file.read_text()) if file.is_file() else None


def image_text_model_types() -> set[str]:
    """The model types `AutoModelForImageTextToText` maps (llava, qwen2_vl, idefics3, gemma3...)."""
    from transformers.models.auto.modeling_auto import MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES

    return set(MODEL_FOR_IMAGE_TEXT_TO_TEXT_MAPPING_NAMES)


def is_native_vlm(path: str | Path) -> bool:
    """True for a local directory holding a transformers image-text checkpoint (not a vlmkit composite)."""
    path = Path(path)
    if (path / VLMKIT_CONFIG_FILE).is_file():
        return False
    config = _read_config(path)
    return bool(config) and config.get("model_type") in image_text_model_types()


def check_native_config(path: str | Path, *, trust_remote_code: bool = False) -> dict:
    """The checkpoint's config.json, or a NativeModelError naming what is wrong and what to do."""
    path = Path(path)
    if (path / VLMKIT_CONFIG_FILE).is_file():
        raise NativeModelError(
            f"{path} is a vlmkit composite checkpoint ({VLMKIT_CONFIG_FILE}), not a native transformers one; "
            "load it with vlmkit.models.build.load_vlm"
        )
    config = _read_config(path)
    if config is None:
        raise NativeModelError(f"{path}: no config.json; pass a transformers image-text checkpoint directory")
    model_type, archs = config.get("model_type"), config.get("architectures") or []
    if "auto_map" in config and not trust_remote_code:
        raise NativeModelError(
            f"{path}: the model ({model_type or archs}) ships its own code (auto_map in config.json); read that "
            "code, then pass trust_remote_code=True (--trust_remote_code true) to run it"
        )
    if model_type not in image_text_model_types() and "auto_map" not in config:
        raise NativeModelError(
            f"{path}: architecture {', '.join(archs) or model_type} (model_type '{model_type}') is not an "
            "image-text model (AutoModelForImageTextToText has no mapping for it). Pass a VLM checkpoint "
            "such as Qwen2-VL, LLaVA or SmolVLM, or build a vlmkit composite from this language model with "
            "--vision_tower and --language_model"
        )
    return config


@contextmanager
def image_only(processor_cls: type) -> Iterator[None]:
    """Within this block `processor_cls` builds, saves and loads without a video processor (no torchvision)."""
    from transformers.utils import is_torchvision_available

    attributes = processor_cls.get_attributes()
    if is_torchvision_available() or "video_processor" not in attributes:
        yield
        return
    kept = [a for a in attributes if a != "video_processor"]
    with mock.patch.object(processor_cls, "get_attributes", classmethod(lambda cls: kept)):
        yield


def save_processor(processor, out_dir: str | Path) -> None:
    """`processor.save_pretrained`, image-only where the processor's video processor is absent."""
    with image_only(type(processor)):
        processor.save_pretrained(out_dir)


def _processor_class(path: Path):
    import transformers

    for name in ("processor_config.json", "tokenizer_config.json"):
        file = path / name
        if file.is_file() and (cls_name := json.loads(file.read_text()).get("processor_class")):
            return getattr(transformers, cls_name, None)
    return None


def load_processor(path: str | Path, *, trust_remote_code: bool = False):
    """`AutoProcessor.from_pretrained`, checked for a chat template (needed to build labels)."""
    from transformers import AutoProcessor

    path = Path(path)
    cls = _processor_class(path) if path.is_dir() else None
    if cls is not None and "video_processor" in cls.get_attributes():
        with image_only(cls):
            processor = cls.from_pretrained(path, trust_remote_code=trust_remote_code)
        if not hasattr(processor, "video_processor"):
            processor.video_processor = None
    else:
        processor = AutoProcessor.from_pretrained(path, trust_remote_code=trust_remote_code)
    if not getattr(processor, "chat_template", None):
        raise NativeModelError(
            f"{path}: the processor has no chat template (no chat_template.jinja / chat_template.json), so "
            "conversations cannot be formatted nor assistant tokens found. Copy the template of the model "
            "you fine-tune from into the directory as chat_template.jinja"
        )
    return processor


def load_native_vlm(
    path: str | Path,
    *,
    trust_remote_code: bool = False,
    torch_dtype=None,
    attn_implementation: str | None = None,
    load_in_4bit: bool = False,
):
    """(model, processor) of a native image-text checkpoint; NativeModelError when it is not one."""
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.build import _device_index, quantization_config_4bit

    path = Path(path)
    check_native_config(path, trust_remote_code=trust_remote_code)
    processor = load_processor(path, trust_remote_code=trust_remote_code)
    kwargs: dict = {"trust_remote_code": trust_remote_code}
    if torch_dtype is not None:
        kwargs["dtype"] = torch_dtype
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    if load_in_4bit:
        from transformers import BitsAndBytesConfig

        # Only the language model is quantized: the tower, the connector (trained in full) and lm_head stay.
        settings = {**quantization_config_4bit().to_dict(), "llm_int8_skip_modules": [*QUANTIZATION_SKIP]}
        quantization = BitsAndBytesConfig.from_dict(settings)
        kwargs.update(quantization_config=quantization, device_map={"": _device_index()})
    model = AutoModelForImageTextToText.from_pretrained(path, **kwargs)
    return model, processor


def is_native_adapter(path: str | Path) -> bool:
    """True for a local PEFT adapter directory whose base checkpoint is a native image-text model."""
    file = Path(path) / "adapter_config.json"
    if not file.is_file():
        return False
    base = json.loads(file.read_text()).get("base_model_name_or_path")
    return bool(base) and is_native_vlm(base)


def load_native_checkpoint(path: str | Path, *, is_trainable: bool = False, trust_remote_code: bool = False):
    """(model, processor) of a native checkpoint: a full model, or a LoRA adapter directory (adapter + the
    connector it trained in full + processor files) applied to the base its adapter_config.json names."""
    path = Path(path)
    if not is_native_adapter(path):
        return load_native_vlm(path, trust_remote_code=trust_remote_code)
    from peft import PeftModel

    base_path = json.loads((path / "adapter_config.json").read_text())["base_model_name_or_path"]
    base, _ = load_native_vlm(base_path, trust_remote_code=trust_remote_code)
    model = PeftModel.from_pretrained(base, path, is_trainable=is_trainable)
    return model, load_processor(path, trust_remote_code=trust_remote_code)
