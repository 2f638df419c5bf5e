"""Export a vlmkit image model to transformers' native `LlavaForConditionalGeneration` + `LlavaProcessor`.

The exported directory loads with plain transformers (no vlmkit), so vLLM / TGI / transformers users can serve it:

    model = LlavaForConditionalGeneration.from_pretrained(out_dir)
    processor = AutoProcessor.from_pretrained(out_dir)

Llava can represent exactly one layout: a CLIP or SigLIP vision tower, one hidden layer of it (optionally without
CLS), and a Linear-GELU-Linear projector (`mlp2x_gelu`). Anything else is refused with the reason, before any
file is written. A LoRA adapter is merged into its base LLM first.
"""

from __future__ import annotations

from pathlib import Path

import torch

from vlmkit.data.records import IMAGE_TOKEN
from vlmkit.models.encoders import encoder_spec
from vlmkit.models.processor import VLMProcessor
from vlmkit.models.vlm import VLM, VLMConfig

# Vision towers that Llava instantiates with `AutoModel.from_config` and reads the same way vlmkit does.
LLAVA_TOWERS = ("clip_vision_model", "clip", "siglip_vision_model", "siglip")
_WHY_NOT = {
    "vit_mae": "Llava calls the tower without vlmkit's identity noise, so ViTMAEModel would mask and shuffle "
    "patches; export works for CLIP and SigLIP towers",
    "vit": "only CLIP and SigLIP towers are checked to give the same features inside Llava",
    "wav2vec2": "Llava is an image-text architecture; an audio (wav2vec2) encoder has no Llava equivalent",
}


class ExportError(ValueError):
    """The model cannot be represented as a native transformers Llava."""


def check_llava_compatible(config: VLMConfig) -> None:
    """Raise `ExportError` naming the reason unless `config` maps onto `LlavaForConditionalGeneration`."""
    tower = config.encoder_model_type
    if config.modality != "image" or tower not in LLAVA_TOWERS:
        reason = _WHY_NOT.get(tower, f"tower '{tower}' is not one of {', '.join(LLAVA_TOWERS)}")
        raise ExportError(f"cannot export to Llava: encoder '{tower}': {reason}")
    if config.connector != "mlp2x_gelu":
        raise ExportError(
            f"cannot export to Llava: connector '{config.connector}' has no Llava equivalent (Llava's projector "
            "is Linear-GELU-Linear, vlmkit's 'mlp2x_gelu'); train with --connector mlp2x_gelu to export"
        )
    if int(config.connector_kwargs.get("downsample", 1)) != 1:
        raise ExportError(
            "cannot export to Llava: the connector stacks tokens (connector_downsample > 1), which Llava's "
            "projector does not do"
        )


def llava_config(model: VLM):
    """The `LlavaConfig` for a (merged, non-PEFT) vlmkit image model."""
    from transformers import LlavaConfig

    lm = model.language_model
    drop_cls = model.config.drop_cls_token and encoder_spec(model.config.encoder_model_type).has_cls
    return LlavaConfig(
        vision_config=model.encoder.config,
        text_config=lm.config,
        image_token_index=model.config.media_token_id,
        image_seq_length=model.config.num_media_tokens,
        projector_hidden_act="gelu",
        multimodal_projector_bias=True,
        vision_feature_layer=model.config.feature_layer,
        vision_feature_select_strategy="default" if drop_cls else "full",
        tie_word_embeddings=bool(getattr(lm.config, "tie_word_embeddings", False)),
    )


def llava_state_dict(model: VLM, tied: bool) -> dict[str, torch.Tensor]:
    """vlmkit weights under Llava's parameter names (`model.vision_tower.*`, `model.multi_modal_projector.*`,
    `model.language_model.*`, `lm_head.*`; the head is left out when tied to the input embeddings)."""
    lm = model.language_model
    parts = {
        "model.vision_tower.": model.encoder,
        "model.multi_modal_projector.": model.connector,
        "model.language_model.": getattr(lm, lm.base_model_prefix),
    }
    if not tied:
        parts["lm_head."] = lm.get_output_embeddings()
    return {
        prefix + key: value.detach().cpu().contiguous()
        for prefix, module in parts.items()
        for key, value in module.state_dict().items()
    }


def _check_keys(config, state: dict[str, torch.Tensor]) -> None:
    """Every Llava parameter is present with the right shape (checked on a meta-device model: no memory)."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        expected = LlavaForConditionalGeneration(config).state_dict()
    if config.tie_word_embeddings:
        expected.pop("lm_head.weight", None)
    missing = sorted(set(expected) - set(state))
    unexpected = sorted(set(state) - set(expected))
    wrong = [k for k in expected if k in state and tuple(expected[k].shape) != tuple(state[k].shape)]
    if missing or unexpected or wrong:
        raise ExportError(
            f"the Llava layout does not fit this model: missing {missing[:5]}, unexpected {unexpected[:5]}, "
            f"shape mismatch {wrong[:5]}"
        )


def llava_processor(model: VLM, processor: VLMProcessor):
    """A `LlavaProcessor` that expands `<image>` to the same number of tokens as vlmkit does."""
    from transformers import LlavaProcessor

    enc = model.encoder.config
    has_cls = encoder_spec(model.config.encoder_model_type).has_cls
    drop_cls = model.config.drop_cls_token and has_cls
    llava = LlavaProcessor(
        image_processor=processor.media_processor,
        tokenizer=processor.tokenizer,
        patch_size=enc.patch_size,
        vision_feature_select_strategy="default" if drop_cls else "full",
        chat_template=processor.tokenizer.chat_template,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=int(has_cls),
    )
    tokens = (enc.image_size // enc.patch_size) ** 2 + int(has_cls) - int(drop_cls)
    if tokens != model.config.num_media_tokens:
        raise ExportError(
            f"Llava would expand <image> to {tokens} tokens but the model uses {model.config.num_media_tokens}"
        )
    return llava


def export_llava(model: VLM, processor: VLMProcessor, out_dir: str | Path) -> Path:
    """Write `model` (LoRA merged first) as a transformers Llava checkpoint + processor into `out_dir`."""
    from huggingface_hub import save_torch_state_dict

    from vlmkit.models.merge import merge_lora

    check_llava_compatible(model.config)
    model = merge_lora(model)
    config = llava_config(model)
    config.dtype = next(model.language_model.parameters()).dtype
    state = llava_state_dict(model, tied=config.tie_word_embeddings)
    _check_keys(config, state)
    hf_processor = llava_processor(model, processor)

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    config.save_pretrained(out)
    model.language_model.generation_config.save_pretrained(out)
    save_torch_state_dict(state, out, max_shard_size="5GB")
    hf_processor.save_pretrained(out)
    return out


def export_checkpoint(checkpoint: str | Path, out_dir: str | Path) -> Path:
    """Load a vlmkit checkpoint (full or adapter) and export it with `export_llava`."""
    from vlmkit.models.build import load_vlm

    config = VLMConfig.load(Path(checkpoint))
    check_llava_compatible(config)  # refuse before loading any weights
    model, processor = load_vlm(str(checkpoint))
    return export_llava(model, processor, out_dir)
