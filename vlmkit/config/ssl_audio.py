"""Config of the stage-0 wav2vec 2.0 speech pretraining recipe (recipes/wav2vec2_pretrain.py)."""

from __future__ import annotations

from dataclasses import dataclass

from vlmkit.config.args import EpochArgs, HubArgs, OptimArgs, RunArgs, _f


@dataclass
class Wav2Vec2PretrainConfig(HubArgs, OptimArgs, EpochArgs, RunArgs):
    """wav2vec 2.0: span-masked latent frames, contrastive task over Gumbel-quantized targets."""

    # ---- model ----------------------------------------------------------------------------------
    model_name_or_path: str | None = _f(
        None,
        "Continue from a wav2vec2 checkpoint (Wav2Vec2ForPreTraining or Wav2Vec2Model directory; a "
        "missing quantizer starts fresh). Default: a new model from the architecture fields below.",
    )
    hidden_size: int = _f(64, "Transformer width.", ge=1)
    num_hidden_layers: int = _f(2, "Transformer layers.", ge=1)
    num_attention_heads: int = _f(4, "Attention heads.", ge=1)
    intermediate_size: int = _f(128, "Transformer feed-forward width.", ge=1)
    conv_dim: list[int] = _f([64, 64, 64, 64, 64, 64, 64], "Channels of each feature-encoder conv layer.")
    conv_stride: list[int] = _f(
        [5, 2, 2, 2, 2, 2, 2], "Stride of each conv layer (product 320: 20 ms frames at 16 kHz)."
    )
    conv_kernel: list[int] = _f([10, 3, 3, 3, 3, 2, 2], "Kernel width of each conv layer.")
    feat_extract_norm: str = _f(
        "group",
        "'group' (wav2vec2-base: GroupNorm in the first conv layer) or 'layer' (-large).",
        choices=("group", "layer"),
    )
    num_conv_pos_embeddings: int = _f(16, "Width of the convolutional relative position embedding.")
    num_conv_pos_embedding_groups: int = _f(4, "Groups of the position-embedding convolution.")
    num_codevector_groups: int = _f(2, "G: codebooks of the product quantizer.", ge=1)
    num_codevectors_per_group: int = _f(32, "V: entries per codebook.", ge=2)
    codevector_dim: int = _f(64, "Width of a quantized vector (all groups concatenated).")
    proj_codevector_dim: int = _f(32, "Width of the space where context and targets are compared.")
    dropout: float = _f(0.1, "Dropout in the transformer (hidden, attention, activation).", ge=0, lt=1)
    layerdrop: float = _f(0.0, "Probability of skipping a whole transformer layer in training.", ge=0, le=1)

    # ---- objective --------------------------------------------------------------------------------
    mask_prob: float = _f(
        0.65, "Span starts per frame x mask_length (masks ~half of the frames).", ge=0, le=1
    )
    mask_length: int = _f(5, "Frames per masked span (5 x 20 ms = 100 ms).", ge=1)
    min_masks: int = _f(2, "Minimum masked spans per clip.", ge=0)
    num_negatives: int = _f(
        20, "Distractors per masked frame, drawn from the clip's other masked frames.", ge=1
    )
    contrastive_temperature: float = _f(0.1, "kappa: temperature of the cosine-similarity logits.", gt=0)
    diversity_loss_weight: float = _f(0.1, "alpha: weight of the codebook diversity loss.", ge=0)
    max_gumbel_temperature: float = _f(2.0, "Gumbel-softmax temperature at step 0.", gt=0)
    min_gumbel_temperature: float = _f(0.5, "Floor of the Gumbel-softmax temperature.", gt=0)
    gumbel_temperature_decay: float = _f(0.995, "Temperature multiplier per optimizer step.", gt=0, le=1)

    # ---- data -------------------------------------------------------------------------------------
    data_path: str | None = _f(
        "vlmkit-data/spoken_digits/ssl_train.json", "JSON list of {audio, label} clips to pretrain on."
    )
    eval_data_path: str | None = _f(
        "vlmkit-data/spoken_digits/ssl_eval.json",
        "Held-out clips (another accent) for the linear probe and the codebook perplexity.",
    )
    audio_folder: str | None = _f(None, "Root of relative audio paths (default: the data file's folder).")
    eval_audio_folder: str | None = _f(
        None, "Root of relative audio paths of the held-out clips (default: audio_folder)."
    )
    allow_outside_media_root: bool = _f(False, "Allow audio paths that escape audio_folder.")
    sampling_rate: int = _f(16000, "Sampling rate the audio is resampled to.", ge=1)
    audio_samples: int = _f(
        16000, "Clip length in samples; longer clips are cut, shorter ones zero-padded.", ge=1
    )

    # ---- evaluation -------------------------------------------------------------------------------
    probe_layer: int = _f(
        -1,
        "Hidden state whose mean over frames the linear probe reads: 0 = the projected conv features "
        "(transformer input), -1 = the last layer.",
    )
    probe_c: float = _f(1.0, "Inverse L2 strength of the logistic-regression probe.", gt=0)

    # ---- defaults of the shared groups for this recipe ---------------------------------------------
    output_dir: str = _f("outputs/spoken_digits/wav2vec2", "Where the encoder, metrics and logs go.")
    learning_rate: float = _f(1e-3, "Peak learning rate (AdamW).")
    per_device_train_batch_size: int = _f(16, "Clips per device per micro-batch.")
    warmup_ratio: float = _f(0.08, "Fraction of steps for linear warm-up.")
    weight_decay: float = _f(0.01, "AdamW weight decay (not applied to biases and norms).")
