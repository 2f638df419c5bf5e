"""The PPO loop for VLMs: rollouts -> scores -> KL-shaped rewards -> GAE -> clipped policy and value updates.

One PPO step (Ziegler et al. 2019; Ouyang et al. 2022):
1. sample one response per prompt with the policy (`rollout.py`), score it (`rewards.py`), and subtract
   `missing_eos_penalty` from responses that never end;
2. with no gradient, compute the policy's log-probs and values and the reference's log-probs;
3. per-token rewards = -kl_coef * KL estimate, plus the score on the last token (standardised with the first
   batch's statistics when `normalize_scores`; a critic started from the reward model is fitted to the first
   batch's returns: `reward_scale.py`); GAE advantages and returns; advantages whitened;
4. `num_ppo_epochs` passes over the batch in `num_mini_batches` shuffled mini-batches of
   `gradient_accumulation_steps` micro-batches: clipped policy loss + vf_coef * clipped value loss;
5. the KL controller sees the batch's mean KL per response.
The reward only says what the policy optimises; `gold_accuracy` in the log (sampled answers that match the
prompts' reference answers: `verifiable.exact_answer`) is measured beside it and never rewarded, so a proxy
reward that rises while gold accuracy falls (reward hacking) shows in the log and the pipeline report.
Losses are token means over the whole mini-batch (all micro-batches, all processes), so batch 8 x
accumulation 1 and batch 1 x accumulation 8 give the same update. Each mini-batch update goes through the
shared `OptimizerStepper` (the NaN/inf guard: a non-finite update is skipped and counted in `bad_steps`,
`max_bad_steps` in a row stop the run) and checkpoints through the shared `Checkpointer`: they hold the
policy, the value model, optimizer, scheduler, KL controller and RNG states; the data order is a function
of the step.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor

from vlmkit.data.records import Sample
from vlmkit.rlhf.kl import build_kl_controller
from vlmkit.rlhf.ppo_math import (
    apply_missing_eos_penalty,
    compute_gae,
    compute_rewards,
    entropy_from_logits,
    explained_variance,
    masked_whiten,
    policy_loss,
    value_loss,
)  # fmt: skip
from vlmkit.rlhf.reward_scale import (
    RewardScale,
    affine_fit_sums,
    monte_carlo_returns,
    rescale_linear_,
    solve_affine_fit,
)
from vlmkit.rlhf.rl_trainer import RLTrainer
from vlmkit.rlhf.rollout import Rollout
from vlmkit.rlhf.value_model import ActorCritic
from vlmkit.rlhf.verifiable import exact_answer


@dataclass
class Experience:
    """A scored rollout batch with everything the PPO update needs; tensors (B, T) unless noted."""

    rollout: Rollout
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    scores: Tensor  # (B,) after the missing-EOS penalty, in the reward's own units (before normalisation)
    kl: Tensor  # (B,) per-response KL (sum over tokens)
    rewards: Tensor  # (B,) per-response total of the shaped rewards

    @property
    def mask(self) -> Tensor:
        return self.rollout.response_mask


class PPOTrainer(RLTrainer):
    """Runs PPO on prompts. `reward` maps a Rollout to (B,) scores; `reference` is a frozen starting policy,
    or None for a LoRA policy (its adapters are disabled for reference passes)."""

    name = "PPO"

    def __init__(
        self,
        cfg,
        accelerator,
        model: ActorCritic,
        processor,
        reward,
        prompts: list[Sample],
        *,
        reference=None,
    ):
        value_lr = cfg.value_learning_rate or cfg.learning_rate
        self.kl_ctl = build_kl_controller(cfg.kl_controller, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.scale = RewardScale(cfg.normalize_scores, cfg.calibrate_critic and model.kind == "reward_model")
        super().__init__(
            cfg, accelerator, model, processor, reward, prompts, reference=reference,
            lr_overrides={"value_head.": value_lr, "critic.": value_lr},
            stateful={"kl_controller": self.kl_ctl, "reward_scale": self.scale},
        )  # fmt: skip

    @property
    def kl_estimator(self) -> str:
        return self.cfg.kl_estimator

    @torch.no_grad()
    def score_and_compare(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw scores (B,), policy log-probs (B, T), reference log-probs (B, T), values (B, T)."""
        scores = self.reward(rollout)
        parts = {"logprobs": [], "ref": [], "values": []}
        for rows in self.chunks(len(rollout)):
            sub = rollout.select(rows)
            logprobs, _, values = self.forward(sub, with_values=True)
            parts["logprobs"].append(logprobs)
            parts["values"].append(values)
            parts["ref"].append(self.ref_logprobs(sub))
        cat = {k: torch.cat(v) for k, v in parts.items()}
        return scores, cat["logprobs"], cat["ref"], cat["values"]

    @torch.no_grad()
    def make_experience(self, samples: list[Sample]) -> Experience:
        """Steps 1-3 of the module docstring."""
        cfg = self.cfg
        rollout = self.sample(samples)
        scores, logprobs, ref_logprobs, values = self.score_and_compare(rollout)
        mask = rollout.response_mask
        if cfg.missing_eos_penalty:
            scores = apply_missing_eos_penalty(
                scores, rollout.response_ids, self.stop_token_ids, cfg.missing_eos_penalty, mask
            )
        if self.scale.needs_statistics:
            self.scale.fit(self.accelerator.gather(scores))
        normalized = self.scale.normalize(scores)
        rewards, kl = compute_rewards(
            normalized, logprobs, ref_logprobs, mask, self.kl_ctl.value, cfg.kl_estimator
        )
        if self.scale.critic_pending:
            values = self.calibrate_critic(values, rewards, mask)
        advantages, returns = compute_gae(rewards, values, mask, cfg.gamma, cfg.lam)
        if cfg.whiten_advantages:
            advantages = masked_whiten(advantages, mask)
        return Experience(
            rollout,
            logprobs,
            ref_logprobs,
            values * mask,
            advantages,
            returns,
            scores,
            kl.sum(1),
            rewards.sum(1),
        )

    def calibrate_critic(self, values: Tensor, rewards: Tensor, mask: Tensor) -> Tensor:
        """Fit the critic head to this batch's Monte-Carlo returns (every process's tokens) once; the values
        (B, T) the new head gives."""
        sums = affine_fit_sums(values, monte_carlo_returns(rewards, mask, self.cfg.gamma), mask)
        scale, shift = solve_affine_fit(self.accelerator.reduce(sums.to(self.device), "sum").cpu())
        rescale_linear_(self.bare.critic.score_head, scale, shift)
        self.scale.critic_fit = (scale, shift)
        return values * scale + shift

    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """Step 4: PPO epochs over shuffled mini-batches (losses are token means over each mini-batch)."""
        tokens = lambda rows: float(exp.mask[rows].sum())  # noqa: E731
        return self.optimizer_steps(exp, step, self.cfg.num_ppo_epochs, tokens, self._micro_step)

    def _micro_step(self, exp: Experience, rows: list[int]) -> dict[str, float]:
        cfg = self.cfg
        sub = exp.rollout.select(rows)
        mask = sub.response_mask
        logprobs, resp_logits, values = self.forward(sub, with_values=True)
        pg, pg_stats = policy_loss(logprobs, exp.logprobs[rows], exp.advantages[rows], mask, cfg.cliprange)
        vf, vf_stats = value_loss(values, exp.values[rows], exp.returns[rows], mask, cfg.cliprange_value)
        loss = pg + cfg.vf_coef * vf
        self.stepper.backward(loss * mask.sum())  # a token sum: the stepper divides by the update's tokens
        return {
            "loss": loss.item(), "policy_loss": pg.item(), "value_loss": vf.item(),
            "entropy": entropy_from_logits(resp_logits.detach(), mask).item(),
            "clip_fraction": pg_stats["clip_fraction"].item(), "approx_kl": pg_stats["approx_kl"].item(),
            "value_clip_fraction": vf_stats["value_clip_fraction"].item(),
        }  # fmt: skip

    def after_step(self, record: dict) -> None:
        """The KL controller sees the step's mean KL per response; the record keeps the coefficient used."""
        record["kl_coef"] = self.kl_ctl.value
        self.kl_ctl.update(record["kl"], self.cfg.rollout_batch_size * self.accelerator.num_processes)

    def rollout_stats(self, exp: Experience) -> dict[str, float]:
        """Means/stds over every response of the step (all processes)."""
        acc, mask = self.accelerator, exp.mask
        rollout, device = exp.rollout, mask.device
        graded = torch.tensor([float(ref is not None) for ref in rollout.references], device=device)
        gold = exact_answer(rollout.texts, rollout.references)
        per_row = torch.stack(
            [exp.scores, exp.rewards, exp.kl, mask.sum(1).float(), rollout.has_eos.float(),
             torch.tensor(gold, device=device), graded], dim=1,
        )  # fmt: skip
        rows = acc.gather(per_row.float())
        ev = explained_variance(exp.values, exp.returns, mask)
        # Gold accuracy of the sampled answers (prompts with a reference answer): evaluation only, never a reward.
        gold_stats = {"gold_accuracy": rows[rows[:, 6] > 0, 5].mean().item()} if rows[:, 6].any() else {}
        return {
            "score_mean": rows[:, 0].mean().item(), "score_std": rows[:, 0].std().item(),
            "reward_mean": rows[:, 1].mean().item(), "reward_std": rows[:, 1].std().item(),
            "kl": rows[:, 2].mean().item(), "response_length": rows[:, 3].mean().item(),
            "eos_fraction": rows[:, 4].mean().item(), "explained_variance": ev if math.isfinite(ev) else 0.0,
            **gold_stats, **self.reward_stats(),
        }  # fmt: skip
