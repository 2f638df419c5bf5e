"""From config fields to a ready VLM + processor: a new model from parts, or a saved vlmkit checkpoint."""

from __future__ import annotations

import importlib.util
import logging
from pathlib import Path

import torch

from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, ensure_special_tokens, load_media_processor
from vlmkit.models.rng import rng_untouched
from vlmkit.models.vlm import VLM

logger = logging.getLogger(__name__)


def resolve_attn_implementation(requested: str = "auto") -> str:
    """flash_attention_2 when flash-attn is installed and a GPU is present, else sdpa; or what was asked."""
    valid = ("auto", "flash_attention_2", "sdpa", "eager")
    if requested not in valid:
        raise ValueError(f"attn_implementation must be one of {', '.join(valid)}; got '{requested}'")
    if requested != "auto":
        if requested == "flash_attention_2" and not (
            torch.cuda.is_available() and importlib.util.find_spec("flash_attn")
        ):
            raise ValueError(
                "attn_implementation=flash_attention_2 needs a CUDA GPU and `pip install vlmkit[flash]`"
            )
        return requested
    if torch.cuda.is_available() and importlib.util.find_spec("flash_attn"):
        return "flash_attention_2"
    return "sdpa"


def quantization_config_4bit():
    """bitsandbytes nf4 with double quantization; a clear error before any weights load if unavailable."""
    if importlib.util.find_spec("bitsandbytes") is None:
        raise RuntimeError("load_in_4bit needs bitsandbytes: pip install 'vlmkit[qlora]'")
    from transformers import BitsAndBytesConfig

    compute = (
        torch.bfloat16 if torch.cuda.is_available() and torch.cuda.is_bf16_supported() else torch.float32
    )
    return BitsAndBytesConfig(
        load_in_4bit=True,
        bnb_4bit_quant_type="nf4",
        bnb_4bit_use_double_quant=True,
        bnb_4bit_compute_dtype=compute,
    )


def _local_or_name(path: str) -> str:
    """Absolute path for local directories (so adapters and configs can find them later)."""
    return str(Path(path).resolve()) if Path(path).exists() else path


def load_language_model(
    path: str, *, attn_implementation: str, load_in_4bit: bool = False, trust_remote_code=False
):
    from transformers import AutoModelForCausalLM

    kwargs = dict(attn_implementation=attn_implementation, trust_remote_code=trust_remote_code)
    if load_in_4bit:
        kwargs.update(quantization_config=quantization_config_4bit(), device_map={"": _device_index()})
    with rng_untouched():  # ZeRO-3's zero.Init draws random numbers while loading
        return AutoModelForCausalLM.from_pretrained(path, **kwargs)


def _device_index():
    return torch.cuda.current_device() if torch.cuda.is_available() else "cpu"


def apply_lora(model: VLM, lora) -> VLM:
    """Wrap the LLM with LoRA adapters (QLoRA: after preparing the 4-bit model for training)."""
    from peft import LoraConfig, get_peft_model, prepare_model_for_kbit_training

    lm = model.language_model
    if getattr(lm, "is_loaded_in_4bit", False):
        lm = prepare_model_for_kbit_training(lm, use_gradient_checkpointing=False)
    targets = lora.lora_target_modules
    target = "all-linear" if targets == ["all-linear"] else targets
    config = LoraConfig(
        r=lora.lora_r, lora_alpha=lora.lora_alpha, lora_dropout=lora.lora_dropout, target_modules=target,
        modules_to_save=list(getattr(lora, "lora_modules_to_save", None) or []) or None, task_type="CAUSAL_LM",
    )  # fmt: skip
    model.language_model = get_peft_model(lm, config)
    return model


def build_vlm(args, lora=None, *, is_trainable: bool = True) -> tuple[VLM, VLMProcessor]:
    """Build from `model_name_or_path` (a vlmkit checkpoint) or from encoder + LLM (+ stage-1 connector)."""
    for field in ("min_pixels", "max_pixels"):
        if getattr(args, field, None) is not None:
            raise ValueError(
                f"--{field} sets the dynamic resolution of Qwen2-VL-style native models; a vlmkit composite "
                "model's encoder has a fixed input size: drop it"
            )
    attn = resolve_attn_implementation(args.attn_implementation)
    trust = getattr(args, "trust_remote_code", False)
    load_in_4bit = bool(lora and lora.load_in_4bit)
    if load_in_4bit and not (lora and lora.use_lora):
        raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters: add --use_lora")
    if args.model_name_or_path:
        path = _local_or_name(resolve_model_path(args.model_name_or_path))  # adapters record absolute paths
        if not (Path(path) / "vlmkit_config.json").is_file():
            raise FileNotFoundError(
                f"--model_name_or_path {args.model_name_or_path}: not a vlmkit checkpoint (no vlmkit_config.json). "
                "To start from separate parts, pass --vision_tower/--audio_tower and --language_model."
            )
        quant = quantization_config_4bit() if load_in_4bit else None
        model = VLM.from_pretrained(
            path,
            attn_implementation=attn,
            is_trainable=is_trainable,
            quantization_config=quant,
            trust_remote_code=trust,
        )
        processor = VLMProcessor.from_pretrained(path)
        model.config.lineage = list(model.config.lineage) + [{"parent": str(Path(path).resolve())}]
    else:
        model, processor = _build_from_parts(args, attn, load_in_4bit, trust)
    if getattr(args, "use_liger_kernel", False):
        apply_liger_kernel(model)
    if lora and lora.use_lora and not model.is_peft:
        model = apply_lora(model, lora)
    return model, processor


def apply_liger_kernel(model: VLM) -> bool:
    """Patch the LLM with Liger's Triton kernels (RMSNorm, RoPE, SwiGLU); False (with a message) off CUDA.

    The fused linear cross-entropy stays off: vlmkit computes the loss from the logits itself.
    """
    if not torch.cuda.is_available():
        logger.warning(
            "use_liger_kernel: Liger kernels need a CUDA GPU; training without them on this machine"
        )
        return False
    if importlib.util.find_spec("liger_kernel") is None:
        raise RuntimeError("use_liger_kernel needs the liger-kernel package: pip install liger-kernel")
    from transformers.integrations.liger import apply_liger_kernel as _apply

    _apply(model.language_model, {"fused_linear_cross_entropy": False, "cross_entropy": False})
    logger.info("applied Liger kernels to the %s LLM", model.language_model.config.model_type)
    return True


def _build_from_parts(args, attn: str, load_in_4bit: bool, trust: bool) -> tuple[VLM, VLMProcessor]:
    from transformers import AutoTokenizer

    tower = args.vision_tower or args.audio_tower
    if not tower or not args.language_model:
        raise ValueError(
            "give --model_name_or_path (a vlmkit checkpoint), or both an encoder (--vision_tower or "
            "--audio_tower) and --language_model"
        )
    if args.vision_tower and args.audio_tower:
        raise ValueError("give either --vision_tower or --audio_tower, not both")
    tower_path = _local_or_name(resolve_model_path(tower))
    lm_path = _local_or_name(resolve_model_path(args.language_model))
    tokenizer = AutoTokenizer.from_pretrained(lm_path, trust_remote_code=trust)
    added = ensure_special_tokens(tokenizer)
    language_model = load_language_model(
        lm_path, attn_implementation=attn, load_in_4bit=load_in_4bit, trust_remote_code=trust
    )
    if added:
        logger.info("added tokens %s to the tokenizer; resizing the LLM embeddings", added)
        language_model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
    modality = "audio" if args.audio_tower else "image"
    media_token = "<image>" if modality == "image" else "<audio>"
    kwargs = {"num_queries": args.connector_num_queries, "downsample": args.connector_downsample}
    kwargs = {k: v for k, v in kwargs.items() if not (k == "downsample" and v == 1)}
    if args.connector != "qformer":
        kwargs.pop("num_queries")
    model = VLM.from_components(
        encoder_path=tower_path,
        language_model=language_model,
        media_token_id=tokenizer.convert_tokens_to_ids(media_token),
        connector=args.connector,
        connector_kwargs=kwargs,
        feature_layer=args.feature_layer,
        drop_cls_token=args.drop_cls_token,
        attn_implementation=attn,
        pretrain_connector=args.pretrain_connector,
        trust_remote_code=trust,
    )
    if model.config.modality != modality:
        raise ValueError(
            f"{tower} is a {model.config.modality} encoder; pass it as --{model.config.modality}_tower"
        )
    model.config.encoder_name_or_path = tower_path
    model.config.language_model_name_or_path = lm_path
    media_processor = load_media_processor(tower_path, modality)
    spec = MediaSpec(modality=modality, num_media_tokens=model.config.num_media_tokens)
    if modality == "audio":
        spec.sampling_rate = int(getattr(media_processor, "sampling_rate", 16000))
        spec.audio_samples = model.config.audio_samples
    return model, VLMProcessor(tokenizer, media_processor, spec)


def load_vlm(path: str, *, is_trainable: bool = False) -> tuple[VLM, VLMProcessor]:
    """Load a vlmkit checkpoint (full or adapter) with its processor, for inference."""
    path = resolve_model_path(path)
    model = VLM.from_pretrained(
        path, attn_implementation=resolve_attn_implementation("auto"), is_trainable=is_trainable
    )
    return model, VLMProcessor.from_pretrained(path)
