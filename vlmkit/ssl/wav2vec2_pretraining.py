"""wav2vec 2.0 pretraining on top of transformers' ``Wav2Vec2ForPreTraining``.

The model supplies the convolutional feature encoder, the transformer and the Gumbel-softmax product
quantizer; the objective is vlmkit's own: span masks from :func:`vlmkit.ssl.masking.span_mask`,
distractors from :func:`vlmkit.ssl.masking.sample_negatives`, the contrastive and diversity losses of
:mod:`vlmkit.ssl.wav2vec2_objective`, and the Gumbel temperature schedule set on the quantizer at
every optimizer step.

The saved directory is a ``Wav2Vec2ForPreTraining`` checkpoint plus its ``Wav2Vec2FeatureExtractor``
(like ``facebook/wav2vec2-base``): ``Wav2Vec2Model.from_pretrained`` reads the encoder out of it, so
stage 1 takes it as ``--audio_tower`` unchanged, and pretraining can continue from it.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from vlmkit.ssl.masking import sample_negatives, span_mask
from vlmkit.ssl.wav2vec2_objective import (
    codebook_perplexity,
    contrastive_logits,
    contrastive_loss,
    diversity_loss,
    gumbel_temperature,
)

__all__ = [
    "Wav2Vec2PretrainingStep",
    "build_feature_extractor",
    "build_pretraining_model",
    "eval_codebook_perplexity",
    "pooled_features",
    "pretraining_losses",
    "probe_metrics",
    "random_init_like",
    "save_pretrained_encoder",
    "wav2vec2_config",
]


def wav2vec2_config(cfg):
    """A ``Wav2Vec2Config`` from the architecture and objective fields of ``Wav2Vec2PretrainConfig``."""
    from transformers import Wav2Vec2Config

    if not len(cfg.conv_dim) == len(cfg.conv_stride) == len(cfg.conv_kernel):
        raise ValueError(
            f"conv_dim, conv_stride and conv_kernel need one entry per conv layer; got {len(cfg.conv_dim)}, "
            f"{len(cfg.conv_stride)} and {len(cfg.conv_kernel)}"
        )
    if cfg.feat_extract_norm not in ("group", "layer"):
        raise ValueError(f"feat_extract_norm must be 'group' or 'layer', got {cfg.feat_extract_norm!r}")
    return Wav2Vec2Config(
        hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_hidden_layers,
        num_attention_heads=cfg.num_attention_heads,
        intermediate_size=cfg.intermediate_size,
        conv_dim=tuple(cfg.conv_dim),
        conv_stride=tuple(cfg.conv_stride),
        conv_kernel=tuple(cfg.conv_kernel),
        feat_extract_norm=cfg.feat_extract_norm,
        do_stable_layer_norm=cfg.feat_extract_norm == "layer",  # the two published layouts
        num_conv_pos_embeddings=cfg.num_conv_pos_embeddings,
        num_conv_pos_embedding_groups=cfg.num_conv_pos_embedding_groups,
        num_codevector_groups=cfg.num_codevector_groups,
        num_codevectors_per_group=cfg.num_codevectors_per_group,
        codevector_dim=cfg.codevector_dim,
        proj_codevector_dim=cfg.proj_codevector_dim,
        hidden_dropout=cfg.dropout,
        attention_dropout=cfg.dropout,
        activation_dropout=cfg.dropout,
        feat_proj_dropout=0.0,
        feat_quantizer_dropout=0.0,
        final_dropout=0.0,
        layerdrop=cfg.layerdrop,
        # Recorded for readers of the config; the masks themselves come from vlmkit.ssl.masking.
        # mask_time_prob > 0 also makes the model create its learned mask embedding.
        mask_time_prob=cfg.mask_prob,
        mask_time_length=cfg.mask_length,
        mask_time_min_masks=cfg.min_masks,
        num_negatives=cfg.num_negatives,
        contrastive_logits_temperature=cfg.contrastive_temperature,
        diversity_loss_weight=cfg.diversity_loss_weight,
        vocab_size=32,
    )


def build_pretraining_model(cfg, *, seed: int | None = None) -> nn.Module:
    """``Wav2Vec2ForPreTraining`` from ``cfg.model_name_or_path``, or new from the config fields.

    ``seed`` fixes the initialisation of a new model (used for the random-init probe baseline).
    """
    from transformers import Wav2Vec2ForPreTraining

    if cfg.model_name_or_path:
        from vlmkit.models.model_paths import resolve_model_path

        path = resolve_model_path(cfg.model_name_or_path)
        return Wav2Vec2ForPreTraining.from_pretrained(path, trust_remote_code=cfg.trust_remote_code)
    config = wav2vec2_config(cfg)
    if seed is None:
        return Wav2Vec2ForPreTraining(config)
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Wav2Vec2ForPreTraining(config)


def build_feature_extractor(path: str | None = None, sampling_rate: int = 16000):
    """The feature extractor saved with a checkpoint at ``path``, else a new normalising one."""
    from transformers import Wav2Vec2FeatureExtractor

    if path:
        from vlmkit.models.model_paths import resolve_model_path

        return Wav2Vec2FeatureExtractor.from_pretrained(resolve_model_path(path))
    return Wav2Vec2FeatureExtractor(
        feature_size=1, sampling_rate=sampling_rate, padding_value=0.0, do_normalize=True,
        return_attention_mask=True,
    )  # fmt: skip


def pretraining_losses(
    model: nn.Module,
    input_values: Tensor,
    mask_time_indices: Tensor,
    negatives_idx: Tensor,
    *,
    contrastive_temperature: float = 0.1,
    diversity_weight: float = 0.1,
) -> dict[str, Tensor]:
    """One forward pass of the wav2vec 2.0 objective.

    Args:
        model: a ``Wav2Vec2ForPreTraining`` (possibly wrapped by DDP).
        input_values: (B, L) normalised audio.
        mask_time_indices: (B, T) bool, True = masked latent frame (T = frames of L samples).
        negatives_idx: (B, T, K) distractor indices into the flattened (B*T) frames.

    Returns:
        ``loss`` (contrastive + diversity_weight * diversity, scalar), ``contrastive_loss`` (mean over
        masked frames), ``diversity_loss`` and ``codebook_perplexity`` (soft, over masked frames).
    """
    mask = mask_time_indices.to(input_values.device)
    out = model(input_values, mask_time_indices=mask)
    logits = contrastive_logits(
        out.projected_states, out.projected_quantized_states, negatives_idx, contrastive_temperature
    )
    contrastive = contrastive_loss(logits, mask)
    quantizer = _unwrap(model).quantizer
    perplexity = out.codevector_perplexity
    diversity = diversity_loss(perplexity, quantizer.num_groups, quantizer.num_vars)
    return {
        "loss": contrastive + diversity_weight * diversity,
        "contrastive_loss": contrastive,
        "diversity_loss": diversity,
        "codebook_perplexity": perplexity,
    }


def _unwrap(model: nn.Module) -> nn.Module:
    while hasattr(model, "module"):  # DDP / accelerate wrappers
        model = model.module
    return model


class Wav2Vec2PretrainingStep:
    """The ``compute_loss`` of :func:`vlmkit.training.loop.train` for wav2vec 2.0 (mean loss per step).

    Per call: set the Gumbel temperature of the current optimizer step on the quantizer, draw span masks
    and distractors on the CPU from its own generator, and return ``(loss, extras)`` where extras hold
    the contrastive and diversity losses, the codebook perplexity, the temperature and the masked
    fraction. Use it with ``count_items=lambda batch: 1``. It has ``state_dict``/``load_state_dict``
    (call count and generator), so pass it as ``extra_state`` for an exact resume.
    """

    def __init__(
        self,
        *,
        mask_prob: float,
        mask_length: int,
        min_masks: int,
        num_negatives: int,
        contrastive_temperature: float = 0.1,
        diversity_weight: float = 0.1,
        max_temperature: float = 2.0,
        min_temperature: float = 0.5,
        temperature_decay: float = 0.995,
        gradient_accumulation_steps: int = 1,
        seed: int = 0,
    ):
        self.mask_prob, self.mask_length, self.min_masks = mask_prob, mask_length, min_masks
        self.num_negatives = num_negatives
        self.contrastive_temperature, self.diversity_weight = contrastive_temperature, diversity_weight
        self.schedule = (max_temperature, min_temperature, temperature_decay)
        self.gradient_accumulation_steps = gradient_accumulation_steps
        self.calls = 0
        self.generator = torch.Generator().manual_seed(seed)

    @property
    def optimizer_step(self) -> int:
        return self.calls // self.gradient_accumulation_steps

    def temperature(self) -> float:
        max_t, min_t, decay = self.schedule
        return gumbel_temperature(self.optimizer_step, max_t, min_t, decay)

    def masks(self, batch: int, frames: int) -> tuple[Tensor, Tensor]:
        """(B, T) bool span mask and (B, T, K) distractor indices, on the CPU."""
        mask = span_mask(
            (batch, frames), self.mask_prob, self.mask_length, None, self.min_masks, self.generator
        )
        return mask, sample_negatives(mask, self.num_negatives, self.generator)

    def __call__(self, model: nn.Module, batch: dict) -> tuple[Tensor, dict[str, float]]:
        inner = _unwrap(model)
        temperature = self.temperature()
        inner.set_gumbel_temperature(temperature)
        input_values = batch["input_values"]
        frames = int(inner._get_feat_extract_output_lengths(input_values.shape[1]))
        mask, negatives = self.masks(input_values.shape[0], frames)
        self.calls += 1
        losses = pretraining_losses(
            model, input_values, mask, negatives,
            contrastive_temperature=self.contrastive_temperature, diversity_weight=self.diversity_weight,
        )  # fmt: skip
        extras = {k: float(v.detach()) for k, v in losses.items() if k != "loss"}
        extras.update(gumbel_temperature=temperature, masked_fraction=float(mask.float().mean()))
        return losses["loss"], extras

    def state_dict(self) -> dict:
        return {"calls": self.calls, "generator": self.generator.get_state()}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])
        self.generator.set_state(state["generator"])


def _batches(loader: Iterable[dict]) -> Iterable[tuple[Tensor, Tensor]]:
    for batch in loader:
        if not batch.get("empty"):  # every clip of the batch was skipped
            yield batch["input_values"], batch["labels"]


@torch.no_grad()
def pooled_features(encoder: nn.Module, loader: Iterable[dict], layer: int = -1) -> tuple[Tensor, Tensor]:
    """Mean over frames of one hidden state of a frozen encoder, for a linear probe.

    Args:
        encoder: a ``Wav2Vec2Model`` (or ``Wav2Vec2ForPreTraining``: its ``wav2vec2`` is used).
        loader: batches ``{"input_values": (B, L), "labels": (B,)}`` of fixed-length clips.
        layer: index into ``hidden_states`` (0 = transformer input, -1 = last layer).

    Returns:
        features (N, D) float32 and labels (N,).
    """
    encoder = getattr(_unwrap(encoder), "wav2vec2", _unwrap(encoder))
    was_training = encoder.training
    encoder.eval()
    device = next(encoder.parameters()).device
    feats, labels = [], []
    for values, y in _batches(loader):
        hidden = encoder(values.to(device), output_hidden_states=True).hidden_states[layer]  # (B, T, D)
        feats.append(hidden.mean(dim=1).float().cpu())
        labels.append(y)
    encoder.train(was_training)
    return torch.cat(feats), torch.cat(labels)


@torch.no_grad()
def eval_codebook_perplexity(model: nn.Module, loader: Iterable[dict]) -> float:
    """Perplexity of the hard (argmax) codeword choices over every frame of ``loader``, summed over groups.

    G * V when all codewords are used equally often, G when the quantizer has collapsed to one
    codeword per group.
    """
    inner = _unwrap(model)
    quantizer = inner.quantizer
    was_training = inner.training
    inner.eval()
    device = next(inner.parameters()).device
    one_hots = []
    for values, _ in _batches(loader):
        extract = inner.wav2vec2(values.to(device)).extract_features  # (B, T, C)
        logits = quantizer.weight_proj(extract)  # (B, T, G*V)
        logits = logits.view(-1, quantizer.num_groups, quantizer.num_vars)
        one_hots.append(F.one_hot(logits.argmax(-1), quantizer.num_vars).float().cpu())  # (B*T, G, V)
    inner.train(was_training)
    return float(codebook_perplexity(torch.cat(one_hots)))


def save_pretrained_encoder(
    model: nn.Module,
    feature_extractor,
    out_dir: str | Path,
    *,
    state_dict: dict | None = None,
    save_function: Callable | None = None,
) -> None:
    """Save the ``Wav2Vec2ForPreTraining`` checkpoint and its feature extractor into ``out_dir``.

    ``Wav2Vec2Model.from_pretrained(out_dir)`` (and so ``--audio_tower out_dir``) loads the encoder.
    """
    kwargs = {"state_dict": state_dict} if state_dict is not None else {}
    if save_function is not None:
        kwargs["save_function"] = save_function
    _unwrap(model).save_pretrained(out_dir, **kwargs)
    feature_extractor.save_pretrained(out_dir)


def random_init_like(model: nn.Module, seed: int) -> nn.Module:
    """A freshly initialised ``Wav2Vec2ForPreTraining`` with ``model``'s config (the probe baseline)."""
    from transformers import Wav2Vec2ForPreTraining

    with torch.random.fork_rng():
        torch.manual_seed(seed)
        return Wav2Vec2ForPreTraining(_unwrap(model).config)


def probe_metrics(
    model: nn.Module,
    baseline: nn.Module,
    train_loader: Iterable[dict],
    eval_loader: Iterable[dict],
    *,
    layer: int = -1,
    c: float = 1.0,
    seed: int = 0,
) -> dict[str, float]:
    """Held-out metrics of a pretrained encoder against a random-init one of the same config.

    A logistic-regression probe is fit on mean-pooled ``layer`` features of ``train_loader`` and
    scored on ``eval_loader``; the codebook perplexity is measured on ``eval_loader``.
    """
    from vlmkit.ssl.probe import linear_probe_accuracy

    def probe(encoder: nn.Module) -> float:
        x_train, y_train = pooled_features(encoder, train_loader, layer)
        x_eval, y_eval = pooled_features(encoder, eval_loader, layer)
        return linear_probe_accuracy(x_train, y_train, x_eval, y_eval, seed=seed, c=c)

    quantizer = _unwrap(model).quantizer
    return {
        "eval_linear_probe_accuracy": probe(model),
        "eval_linear_probe_accuracy_random_init": probe(baseline),
        "eval_codebook_perplexity": eval_codebook_perplexity(model, eval_loader),
        "eval_codebook_size": float(quantizer.num_groups * quantizer.num_vars),
    }
