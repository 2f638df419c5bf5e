"""Argument groups shared by the recipes. A recipe's config is a dataclass that inherits the groups it needs."""

from __future__ import annotations

from dataclasses import dataclass, field


def _f(default, help_text: str):
    if isinstance(default, (list, dict)):
        return field(default_factory=lambda: type(default)(default), metadata={"help": help_text})
    return field(default=default, metadata={"help": help_text})


@dataclass
class RunArgs:
    """What every recipe accepts (the run contract)."""

    output_dir: str = _f(
        "outputs/run", "Directory for the model, config.yaml, metrics.json, logs and checkpoints."
    )
    seed: int = _f(42, "Random seed for initialisation, data order and sampling.")
    max_steps: int = _f(-1, "Optimizer steps to run; -1 means use num_train_epochs.")
    num_train_epochs: float = _f(1.0, "Epochs over the training data when max_steps is -1.")
    resume_from_checkpoint: str | None = _f(None, "A checkpoint directory, or 'latest' for the newest one.")
    save_steps: int = _f(0, "Save an atomic checkpoint every N optimizer steps (0: only at the end).")
    save_total_limit: int = _f(
        2, "Keep at most this many checkpoints (the one resumed from is never deleted)."
    )
    logging_steps: int = _f(10, "Log loss and learning rate every N optimizer steps.")
    report_to: list[str] = _f(["tensorboard"], "Accelerate trackers: tensorboard, wandb, or none.")
    on_bad_sample: str = _f(
        "error", "What to do with an unusable record: 'error' stops, 'skip' counts and drops."
    )
    max_bad_steps: int = _f(5, "Stop after this many consecutive non-finite losses or gradients.")
    trust_remote_code: bool = _f(False, "Allow model code from the Hub. Off unless you trust the repository.")


@dataclass
class OptimArgs:
    """Optimisation settings."""

    per_device_train_batch_size: int = _f(8, "Samples per device per micro-batch.")
    per_device_eval_batch_size: int = _f(32, "Samples per device for evaluation.")
    gradient_accumulation_steps: int = _f(1, "Micro-batches accumulated per optimizer step.")
    learning_rate: float = _f(2e-5, "Peak learning rate.")
    weight_decay: float = _f(0.0, "AdamW weight decay (not applied to biases and norms).")
    warmup_ratio: float = _f(0.03, "Fraction of steps for linear warm-up.")
    lr_scheduler_type: str = _f("cosine", "cosine, linear or constant (each after warm-up).")
    max_grad_norm: float = _f(1.0, "Gradient clipping norm (0 disables).")
    mixed_precision: str = _f("auto", "auto (bf16 on a GPU that supports it, else fp32), no, bf16 or fp16.")
    gradient_checkpointing: bool = _f(False, "Recompute activations in the backward pass to save memory.")
    dataloader_num_workers: int = _f(0, "Worker processes for data loading.")
    use_liger_kernel: bool = _f(
        False, "Liger Triton kernels in the LLM (RMSNorm, RoPE, SwiGLU); CUDA + liger-kernel only."
    )


@dataclass
class ModelArgs:
    """Which encoder, connector and language model make the VLM."""

    ALIASES = {"mm_projector_type": "connector", "pretrain_mm_mlp_adapter": "pretrain_connector"}

    model_name_or_path: str | None = _f(None, "A vlmkit checkpoint to start from (e.g. a stage-1 output).")
    vision_tower: str | None = _f(None, "Vision encoder: a from_pretrained path/name or vlmkit-tiny/<name>.")
    audio_tower: str | None = _f(
        None, "Audio encoder (wav2vec2): a from_pretrained path/name or vlmkit-tiny/<name>."
    )
    language_model: str | None = _f(None, "Causal LM: a from_pretrained path/name or vlmkit-tiny/<name>.")
    connector: str = _f("mlp2x_gelu", "Connector: linear, mlp2x_gelu or qformer (LLaVA's mm_projector_type).")
    connector_num_queries: int = _f(16, "Learned queries for the qformer connector.")
    connector_downsample: int = _f(1, "Stack this many consecutive encoder tokens into one (audio).")
    pretrain_connector: str | None = _f(
        None, "connector.safetensors (or LLaVA mm_projector.bin) from stage 1."
    )
    feature_layer: int = _f(-2, "Encoder hidden layer whose features feed the connector (LLaVA uses -2).")
    drop_cls_token: bool | None = _f(None, "Drop the CLS token from encoder features (default: per encoder).")
    attn_implementation: str = _f(
        "auto", "auto (flash_attention_2 if available on a GPU, else sdpa), sdpa, eager."
    )
    tune_encoder: bool = _f(False, "Also train the encoder in stage 2.")


@dataclass
class DataArgs:
    """Where the data is and how it is tokenized."""

    data_path: str | None = _f(
        None, "Training data file (LLaVA json, ShareGPT, messages, jsonl) or dataset name."
    )
    eval_data_path: str | None = _f(None, "Held-out data for the final metrics.")
    image_folder: str | None = _f(None, "Root for relative image paths.")
    audio_folder: str | None = _f(None, "Root for relative audio paths.")
    data_format: str = _f("auto", "auto, llava, sharegpt, messages, hf, preference or prompts.")
    allow_outside_media_root: bool = _f(False, "Allow media paths that escape image_folder/audio_folder.")
    max_length: int = _f(512, "Maximum tokens per sample, media tokens included.")
    truncation: str = _f("error", "A sample that would need cutting through media tokens: 'error' or 'drop'.")
    max_eval_samples: int = _f(0, "Evaluate on at most this many held-out samples (0: all).")
    max_new_tokens: int = _f(8, "Tokens generated per answer during evaluation.")
    packing: bool = _f(
        False, "Pack samples into rows of packing_max_tokens: no padding, attention within samples."
    )
    packing_max_tokens: int = _f(
        2048, "Token budget of one packed row (media tokens included); must be >= max_length."
    )
    group_by_length: bool = _f(
        False, "Without packing: batch samples of similar length together (less padding), order still random."
    )
    feature_cache_dir: str | None = _f(
        None, "Cache frozen-encoder features here and train from them (needs a frozen encoder)."
    )


@dataclass
class LoraArgs:
    """LoRA / QLoRA on the language model."""

    use_lora: bool = _f(False, "Train LoRA adapters on the LLM instead of all its weights.")
    lora_r: int = _f(16, "LoRA rank.")
    lora_alpha: int = _f(32, "LoRA scaling numerator (scale = alpha / r).")
    lora_dropout: float = _f(0.05, "Dropout on the LoRA input.")
    lora_target_modules: list[str] = _f(["all-linear"], "Module names to adapt, or all-linear.")
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
