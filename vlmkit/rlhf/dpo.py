"""Direct Preference Optimisation for VLMs (vlmkit composite or native transformers): the loss as pure
functions, the frozen reference, metrics.

The reference is the starting policy, frozen: with LoRA, the same model with its adapters switched off
(no second copy; the connector stays frozen so that "adapters off" really is the start); without LoRA,
a frozen copy of the starting model.
"""

from __future__ import annotations

import copy
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader
from transformers.integrations import is_deepspeed_zero3_enabled

from vlmkit.data.tokenize import IGNORE_INDEX
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.vlm import VLM
from vlmkit.rlhf.ppo_math import logprobs_from_logits
from vlmkit.training.vlm_kinds import vlm_kind


# ---- pure functions ---------------------------------------------------------------------------------
def sequence_logps(logits: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
    """Summed log-probability of the supervised tokens of each row.

    logits: (N, T, V), position t predicting token t + 1; labels: (N, T) with -100 off the answer.
    Returns (N,) float32: sum over t of log p(labels[t] | tokens < t) where labels[t] != -100.
    """
    shifted = labels[:, 1:]
    token_logps = logprobs_from_logits(logits[:, :-1], shifted)
    return (token_logps * (shifted != IGNORE_INDEX)).sum(dim=1)


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float,
    label_smoothing: float = 0.0,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """DPO loss per pair, and the implicit rewards.

    All inputs (B,) summed sequence log-probs. With h = (pi_c - pi_r) - (ref_c - ref_r):
    loss = -(1 - eps) * log sigmoid(beta * h) - eps * log sigmoid(-beta * h), eps = label_smoothing.
    Returns (loss (B,), chosen_rewards (B,), rejected_rewards (B,)), rewards = beta * (pi - ref), detached.
    """
    if not 0.0 <= label_smoothing < 0.5:
        raise ValueError(f"label_smoothing must be in [0, 0.5), got {label_smoothing}")
    h = (policy_chosen_logps - policy_rejected_logps) - (ref_chosen_logps - ref_rejected_logps)
    loss = -F.logsigmoid(beta * h) * (1 - label_smoothing)
    if label_smoothing:
        loss = loss - F.logsigmoid(-beta * h) * label_smoothing
    chosen_rewards = beta * (policy_chosen_logps - ref_chosen_logps).detach()
    rejected_rewards = beta * (policy_rejected_logps - ref_rejected_logps).detach()
    return loss, chosen_rewards, rejected_rewards


def answer_lengths(labels: torch.Tensor) -> torch.Tensor:
    """Supervised tokens per row (N,) of labels (N, T), counted as `sequence_logps` counts them."""
    return (labels[:, 1:] != IGNORE_INDEX).sum(dim=1)


def length_normalized_nll(logps: torch.Tensor, lengths: torch.Tensor) -> torch.Tensor:
    """Mean negative log-likelihood per token of each sequence (B,): -logps / lengths."""
    return -logps / lengths.clamp(min=1).to(logps.dtype)


def reward_stats(chosen_rewards: torch.Tensor, rejected_rewards: torch.Tensor) -> dict[str, float]:
    """reward_accuracy (share of pairs with a higher implicit reward for chosen) and reward_margin."""
    diff = (chosen_rewards - rejected_rewards).float()
    wins = int((diff > 0).sum())  # counted exactly, not as a float32 mean
    return {"reward_accuracy": wins / max(1, diff.numel()), "reward_margin": float(diff.mean())}


# ---- policy and reference ---------------------------------------------------------------------------
def _unwrap(model: nn.Module) -> nn.Module:
    """The module under a DDP / DeepSpeed wrapper (both keep it in `.module`)."""
    return getattr(model, "module", model)


def batch_logps(model: nn.Module, batch: dict) -> torch.Tensor:
    """Summed answer log-probs (2B,) of every row of a preference batch under `model` (composite: ids,
    mask and media; native: the processor's keys too)."""
    out = model(**{k: v for k, v in batch.items() if k not in ("labels", "num_pairs")})
    return sequence_logps(out.logits, batch["labels"])


def _has_adapters(model: nn.Module) -> bool:
    """LoRA adapters on a composite VLM's LLM, or a native VLM wrapped as a PeftModel."""
    return hasattr(model, "peft_config") or bool(getattr(model, "is_peft", False))


def adapters_disabled(model: nn.Module):
    """Context manager running `model` with its LoRA adapters (and fully trained peft modules) switched off."""
    if hasattr(model, "peft_config"):  # a native VLM as a PeftModel
        return model.disable_adapter()
    return model.language_model.disable_adapter()


class ReferencePolicy:
    """Sequence log-probs (2B,) of the frozen starting policy for a PreferenceCollator batch."""

    def __init__(self, policy: nn.Module, *, adapters_off: bool):
        self.adapters_off = adapters_off
        self.copy = None
        if adapters_off:
            if not _has_adapters(policy):
                raise ValueError("an adapters-off reference needs a policy with LoRA adapters (--use_lora)")
        else:
            self.copy = copy.deepcopy(policy).eval().requires_grad_(False)

    @contextmanager
    def as_model(self, policy: nn.Module) -> Iterator[nn.Module]:
        """The starting policy as a model to run (e.g. to generate): `policy` with its adapters switched off,
        or the frozen copy (on `policy`'s device)."""
        if self.copy is not None:
            yield self.copy.to(next(_unwrap(policy).parameters()).device)
            return
        module = _unwrap(policy)
        with adapters_disabled(module):
            yield module

    @torch.no_grad()
    def logps(self, policy: nn.Module, batch: dict) -> torch.Tensor:
        if self.copy is None:
            module = _unwrap(policy)
            with adapters_disabled(module):
                return batch_logps(module, batch)
        device = batch["input_ids"].device
        if next(self.copy.parameters()).device != device:
            self.copy.to(device)
        return batch_logps(self.copy, batch)


def build_dpo_policy(cfg) -> tuple[nn.Module, object, ReferencePolicy]:
    """The policy to train (from `model_name_or_path`: a vlmkit or a native transformers VLM), its processor
    and its frozen reference.

    --use_lora: fresh adapters on a full checkpoint; only they train, the reference switches them off.
    Otherwise the connector and LLM (or the checkpoint's own adapters) train against a frozen copy.
    """
    if cfg.use_lora:
        start = Path(resolve_model_path(cfg.model_name_or_path or ""))
        if (start / "language_model" / "adapter_config.json").is_file():
            raise ValueError(
                f"--model_name_or_path {cfg.model_name_or_path} is a LoRA checkpoint; DPO with --use_lora "
                "needs a full starting model (switching the new adapters off must give the start). Merge the "
                "adapter into a full checkpoint first, or drop --use_lora to keep training this adapter "
                "against a frozen copy."
            )
        if cfg.tune_encoder:
            raise ValueError("--tune_encoder cannot be combined with --use_lora in DPO (the reference "
                             "is the same model with adapters off, so only adapters may train)")  # fmt: skip
    elif is_deepspeed_zero3_enabled():
        raise ValueError(
            "DPO under DeepSpeed ZeRO-3 needs --use_lora true: the reference is then the same sharded weights "
            "with the adapters off (a frozen full copy of a partitioned model cannot run on its own)"
        )
    kind = vlm_kind(cfg)  # the connector is frozen under LoRA: switching the adapters off gives the start
    model, processor = kind.build(cfg, tune_connector=not cfg.use_lora)
    kind.set_trainable(model, cfg, "instruct", tune_connector=not cfg.use_lora)
    return model, processor, ReferencePolicy(model, adapters_off=cfg.use_lora)


# ---- training-loop plug-in and evaluation ----------------------------------------------------------
class DPOLoss:
    """compute_loss for the training loop: (sum of per-pair losses, logged extras); items = pairs.

    Per pair: the DPO loss, plus `rpo_alpha` times the chosen answer's per-token NLL when rpo_alpha > 0
    (DPO + NLL, as in RPO), which keeps the chosen answers likely while the margin grows.
    """

    def __init__(
        self,
        reference: ReferencePolicy,
        beta: float,
        label_smoothing: float = 0.0,
        rpo_alpha: float = 0.0,
    ):
        self.reference, self.beta, self.label_smoothing = reference, beta, label_smoothing
        self.rpo_alpha = rpo_alpha

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        b = batch["num_pairs"]
        ref = self.reference.logps(model, batch)
        logps = batch_logps(model, batch)
        loss, chosen_r, rejected_r = dpo_loss(
            logps[:b], logps[b:], ref[:b], ref[b:], self.beta, self.label_smoothing
        )
        extras = reward_stats(chosen_r, rejected_r)
        if self.rpo_alpha:
            nll = length_normalized_nll(logps[:b], answer_lengths(batch["labels"][:b]))
            loss = loss + self.rpo_alpha * nll
            extras["chosen_nll"] = float(nll.detach().mean())
        return loss.sum(), extras


def chosen_rows(batch: dict) -> dict:
    """The chosen half of a PreferenceCollator batch (rows [0, B) and their media, which comes first)."""
    b, media = batch["num_pairs"], batch.get("media")
    return {
        "input_ids": batch["input_ids"][:b], "attention_mask": batch["attention_mask"][:b],
        "labels": batch["labels"][:b], "media": media[: len(media) // 2] if media is not None else None,
    }  # fmt: skip


class ChosenNLL:
    """compute_loss of the SFT baseline of DPO: each pair's chosen answer's per-token NLL, summed over pairs
    (items = pairs, as DPOLoss). It is exactly the term RPO adds to DPO (`rpo_alpha`); the rejected answers
    and the reference are never run."""

    def __call__(self, model: nn.Module, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen = chosen_rows(batch)
        logps = batch_logps(model, chosen)
        nll = length_normalized_nll(logps, answer_lengths(chosen["labels"]))
        return nll.sum(), {"chosen_nll": float(nll.detach().mean())}


@torch.no_grad()
def evaluate_dpo(
    model: VLM,
    reference: ReferencePolicy,
    dataset,
    collate_fn,
    *,
    beta: float,
    label_smoothing: float = 0.0,
    batch_size: int = 32,
) -> dict[str, float]:
    """Held-out loss (mean DPO loss), reward_accuracy and reward_margin of the implicit reward, the policy's
    logp_chosen/rejected, and its likelihood preference: likelihood_accuracy (share of pairs with
    logp_chosen > logp_rejected) and logp_margin (mean logp_chosen - logp_rejected), with the same two of the
    reference (the starting policy) as likelihood_accuracy_before and logp_margin_before (and its
    logp_chosen_before / logp_rejected_before)."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    losses, chosen_r, rejected_r, chosen_lp, rejected_lp, ref_c, ref_r = [], [], [], [], [], [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
        if batch.get("empty"):
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        b = batch["num_pairs"]
        ref = reference.logps(model, batch)
        logps = batch_logps(model, batch)
        loss, c, r = dpo_loss(logps[:b], logps[b:], ref[:b], ref[b:], beta, label_smoothing)
        losses.append(loss.cpu())
        chosen_r.append(c.cpu())
        rejected_r.append(r.cpu())
        chosen_lp.append(logps[:b].cpu())
        rejected_lp.append(logps[b:].cpu())
        ref_c.append(ref[:b].cpu())
        ref_r.append(ref[b:].cpu())
    model.train(was_training)
    if not losses:
        raise ValueError("no held-out preference pair could be scored (every item was skipped)")
    stats = reward_stats(torch.cat(chosen_r), torch.cat(rejected_r))
    policy = reward_stats(torch.cat(chosen_lp), torch.cat(rejected_lp))
    start = reward_stats(torch.cat(ref_c), torch.cat(ref_r))
    return {
        "loss": float(torch.cat(losses).mean()),
        **stats,
        "logp_chosen": float(torch.cat(chosen_lp).mean()),
        "logp_rejected": float(torch.cat(rejected_lp).mean()),
        "likelihood_accuracy": policy["reward_accuracy"], "logp_margin": policy["reward_margin"],
        "likelihood_accuracy_before": start["reward_accuracy"], "logp_margin_before": start["reward_margin"],
        "logp_chosen_before": float(torch.cat(ref_c).mean()), "logp_rejected_before": float(torch.cat(ref_r).mean()),
    }  # fmt: skip
