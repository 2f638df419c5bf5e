"""Argument groups shared by the recipes.

A recipe's config is a dataclass that inherits exactly the groups it reads, TRL-style (run, optimisation,
epochs, model, data, tokenization, packing, evaluation, LoRA, Hub) plus its own fields, so a flag that the recipe would
ignore is rejected like any unknown key. Fields declare their valid values (`choices`) or range (`ge`, `gt`,
...), checked when the config is parsed (`vlmkit.config.checks`).
"""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.checks import _f

ON_BAD_SAMPLE = ("error", "skip")
TRACKERS = ("tensorboard", "wandb", "mlflow", "comet_ml", "aim", "clearml", "dvclive", "all", "none")
LR_SCHEDULES = ("cosine", "linear", "constant")
MIXED_PRECISION = ("auto", "no", "bf16", "fp16")
ATTN_IMPLEMENTATIONS = ("auto", "flash_attention_2", "sdpa", "eager")
# CONNECTORS mirrors vlmkit.models.connectors.CONNECTORS (a test keeps them equal).
CONNECTORS = ("linear", "mlp2x_gelu", "qformer")
DATA_FORMATS = ("auto", "llava", "sharegpt", "messages", "hf", "preference", "prompts")
TRUNCATION = ("error", "drop")


@dataclass
class RunArgs:
    """What every recipe accepts (the run contract)."""

    output_dir: str = _f(
        "outputs/run", "Directory for the model, config.yaml, metrics.json, logs and checkpoints."
    )
    seed: int = _f(42, "Random seed for initialisation, data order and sampling.", ge=0)
    max_steps: int = _f(-1, "Optimizer steps to run; -1 means use num_train_epochs.", ge=1, also=(-1,))
    resume_from_checkpoint: str | None = _f(None, "A checkpoint directory, or 'latest' for the newest one.")
    save_steps: int = _f(0, "Save an atomic checkpoint every N optimizer steps (0: only at the end).", ge=0)
    save_total_limit: int = _f(
        2, "Keep at most this many checkpoints (0: all; the one resumed from is never deleted).", ge=0
    )
    logging_steps: int = _f(10, "Log loss and learning rate every N optimizer steps.", ge=1)
    report_to: list[str] = _f(
        ["tensorboard"], "Accelerate trackers: tensorboard, wandb (or another Accelerate tracker), or none.",
        choices=TRACKERS,
    )  # fmt: skip
    on_bad_sample: str = _f(
        "error", "What to do with an unusable record: 'error' stops, 'skip' counts and drops.",
        choices=ON_BAD_SAMPLE,
    )  # fmt: skip
    max_bad_steps: int = _f(5, "Stop after this many consecutive non-finite losses or gradients.", ge=1)
    trust_remote_code: bool = _f(False, "Allow model code from the Hub. Off unless you trust the repository.")


@dataclass
class EpochArgs:
    """Training length in passes over the data and its loading (recipes whose loop walks a dataset)."""

    num_train_epochs: float = _f(1.0, "Epochs over the training data when max_steps is -1.", gt=0)
    dataloader_num_workers: int = _f(0, "Worker processes for data loading.", ge=0)


@dataclass
class OptimArgs:
    """Optimisation settings."""

    per_device_train_batch_size: int = _f(8, "Samples per device per micro-batch.", ge=1)
    per_device_eval_batch_size: int = _f(32, "Samples per device for evaluation.", ge=1)
    gradient_accumulation_steps: int = _f(1, "Micro-batches accumulated per optimizer step.", ge=1)
    learning_rate: float = _f(2e-5, "Peak learning rate.", ge=0)
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).", ge=0)
    warmup_ratio: float = _f(0.03, "Fraction of steps for linear warm-up.", ge=0, le=1)
    lr_scheduler_type: str = _f(
        "cosine", "cosine, linear or constant (each after warm-up).", choices=LR_SCHEDULES
    )
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).", ge=0)
    mixed_precision: str = _f(
        "auto", "auto (bf16 on a GPU that supports it, else fp32), no, bf16 or fp16.", choices=MIXED_PRECISION
    )
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")


@dataclass
class ModelArgs:
    """Which encoder, connector and language model make the VLM, and how it runs."""

    ALIASES = {
        "mm_projector_type": "connector", "pretrain_mm_mlp_adapter": "pretrain_connector",
        "tune_vision_tower": "tune_encoder",
    }  # fmt: skip

    model_name_or_path: str | None = _f(
        None,
        "A vlmkit checkpoint to start from (e.g. a stage-1 output), or a transformers image-text model "
        "(Qwen2-VL, LLaVA-hf, SmolVLM, Gemma 3...: directory, Hub name or vlmkit-tiny/native-<family>).",
    )
    vision_tower: str | None = _f(None, "Vision encoder: a from_pretrained path/name or vlmkit-tiny/<name>.")
    audio_tower: str | None = _f(
        None, "Audio encoder (wav2vec2): a from_pretrained path/name or vlmkit-tiny/<name>."
    )
    language_model: str | None = _f(None, "Causal LM: a from_pretrained path/name or vlmkit-tiny/<name>.")
    connector: str = _f(
        "mlp2x_gelu",
        "Connector: linear, mlp2x_gelu or qformer (LLaVA's mm_projector_type).",
        choices=CONNECTORS,
    )
    connector_num_queries: int = _f(16, "Learned queries for the qformer connector.", ge=1)
    connector_downsample: int = _f(1, "Stack this many consecutive encoder tokens into one (audio).", ge=1)
    pretrain_connector: str | None = _f(
        None, "connector.safetensors (or LLaVA mm_projector.bin) from stage 1."
    )
    feature_layer: int = _f(-2, "Encoder hidden layer whose features feed the connector (LLaVA uses -2).")
    drop_cls_token: bool | None = _f(None, "Drop the CLS token from encoder features (default: per encoder).")
    attn_implementation: str = _f(
        "auto", "auto (flash_attention_2 if available on a GPU, else sdpa), sdpa, eager.",
        choices=ATTN_IMPLEMENTATIONS,
    )  # fmt: skip
    use_liger_kernel: bool = _f(
        False, "Liger Triton kernels in the LLM (RMSNorm, RoPE, SwiGLU); CUDA + liger-kernel only."
    )


TUNE_ENCODER_HELP = "Also train the encoder (vision tower); alias --tune_vision_tower."
TUNE_CONNECTOR_HELP = (
    "Train the connector (LLaVA's multi_modal_projector, Qwen2-VL's merger) in full, "
    "also beside LoRA adapters."
)


@dataclass
class DataArgs:
    """Where the training and held-out data and their media are."""

    data_path: str | None = _f(
        None, "Training data file (LLaVA json, ShareGPT, messages, jsonl) or dataset name."
    )
    eval_data_path: str | None = _f(None, "Held-out data for the final metrics.")
    image_folder: str | None = _f(
        None,
        "Root for relative image paths (default: the data file's folder; vlmkit-data/... files: their own).",
    )
    audio_folder: str | None = _f(None, "Root for relative audio paths (default: image_folder).")
    eval_image_folder: str | None = _f(
        None, "Root for relative image paths of the held-out data (default: image_folder)."
    )
    eval_audio_folder: str | None = _f(
        None, "Root for relative audio paths of the held-out data (default: audio_folder)."
    )
    data_format: str = _f(
        "auto", "auto, llava, sharegpt, messages, hf, preference or prompts.", choices=DATA_FORMATS
    )
    allow_outside_media_root: bool = _f(False, "Allow media paths that escape image_folder/audio_folder.")


@dataclass
class TokenizeArgs:
    """How samples become token sequences."""

    max_length: int = _f(512, "Maximum tokens per sample, media tokens included.", ge=1)
    truncation: str = _f(
        "error",
        "A sample that would need cutting through media tokens: 'error' or 'drop'.",
        choices=TRUNCATION,
    )
    min_pixels: int | None = _f(
        None,
        "Qwen2-VL-style native models (dynamic resolution): an image holds at least this many pixels.",
        ge=1,
    )
    max_pixels: int | None = _f(
        None,
        "Qwen2-VL-style native models: an image holds at most this many pixels (fewer image tokens).",
        ge=1,
    )


@dataclass
class PackingArgs:
    """How supervised samples are batched (stages 1 and 2)."""

    packing: bool = _f(
        False, "Pack samples into rows of packing_max_tokens: no padding, attention within samples."
    )
    packing_max_tokens: int = _f(
        2048, "Token budget of one packed row (media tokens included); must be >= max_length.", ge=1
    )
    group_by_length: bool = _f(
        False, "Without packing: batch samples of similar length together (less padding), order still random."
    )
    feature_cache_dir: str | None = _f(
        None, "Cache frozen-encoder features here and train from them (needs a frozen encoder)."
    )


@dataclass
class EvalArgs:
    """How much held-out data the final metrics use."""

    max_eval_samples: int = _f(0, "Evaluate on at most this many held-out samples (0: all).", ge=0)


@dataclass
class LoraArgs:
    """LoRA / QLoRA on the language model."""

    use_lora: bool = _f(False, "Train LoRA adapters on the LLM instead of all its weights.")
    lora_r: int = _f(16, "LoRA rank.", ge=1)
    lora_alpha: int = _f(32, "LoRA scaling numerator (scale = alpha / r).", gt=0)
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.", ge=0, lt=1)
    lora_target_modules: list[str] = _f(
        ["all-linear"], "Linear layers of the language model to adapt (e.g. q_proj v_proj), or all-linear."
    )
    lora_modules_to_save: list[str] = _f(
        [], "LLM modules trained in full and saved with the adapter (e.g. lm_head, embed_tokens)."
    )
    load_in_4bit: bool = _f(
        False, "QLoRA: load the LLM in 4-bit nf4 with double quantization (bitsandbytes)."
    )


@dataclass
class HubArgs:
    """Sharing on the Hugging Face Hub. The token comes from HF_TOKEN or `hf auth login`, never from a config."""

    push_to_hub: bool = _f(False, "Upload the output directory when training ends (access checked first).")
    hub_model_id: str | None = _f(None, "Repository id, e.g. your-name/vlmkit-digits-lora.")
    hub_private: bool = _f(False, "Create the repository as private.")
