"""The GRPO loop for VLMs (critic-free): groups of sampled completions -> rewards -> group-relative
advantages -> clipped token-level updates with a k3 KL to the reference.

One GRPO step (Shao et al. 2024; variants from Liu et al. 2025 and Yu et al. 2025):
1. each process takes `prompts_per_step` prompts and samples `num_generations` completions of each (a group);
2. the rewards (`rewards.RewardSet`: verifiable functions and/or a reward model, weighted) score them;
   advantages are computed over the groups of all processes (`grpo_math.group_advantages`), so "batch"
   scaling sees the global batch; groups whose rewards are all equal carry no signal and are counted;
3. with no gradient: the reference's log-probs when beta > 0, the sampling policy's when the policy moves
   before the batch is used up (`num_iterations` or `steps_per_generation` > 1; otherwise the ratio is
   exactly 1 and the old log-probs are the current ones, detached);
4. `num_iterations` passes over the batch, each `steps_per_generation` optimizer steps over shuffled
   mini-batches of per_device_train_batch_size x gradient_accumulation_steps completions, the loss
   normalised by `loss_type` over each optimizer step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from vlmkit.data.records import Sample
from vlmkit.rlhf.grpo_math import clipped_token_loss, group_advantages, loss_sum_and_count
from vlmkit.rlhf.ppo_math import entropy_from_logits
from vlmkit.rlhf.rl_trainer import RLTrainer
from vlmkit.rlhf.rollout import Rollout, rollout_engine


@dataclass
class GroupExperience:
    """A scored batch of groups; tensors (B, T) unless noted, B = prompts x num_generations."""

    rollout: Rollout
    advantages: Tensor  # (B,)
    scores: Tensor  # (B,)
    old_logprobs: Tensor | None  # when the policy moves before the batch is used up
    ref_logprobs: Tensor | None  # when beta > 0
    zero_std_groups: int  # over all processes
    num_groups: int

    @property
    def mask(self) -> Tensor:
        return self.rollout.response_mask


class GRPOTrainer(RLTrainer):
    """Runs GRPO (or Dr. GRPO, DAPO, RLOO by config) on prompts; `model` is an ActorCritic without a value
    model. `reference` is a frozen starting policy, or None (LoRA: adapters off; beta 0: no KL term)."""

    name = "GRPO"
    kl_estimator = "k3"

    def __init__(self, cfg, accelerator, model, processor, reward, prompts: list[Sample], *, reference=None):
        super().__init__(cfg, accelerator, model, processor, reward, prompts, reference=reference)
        if cfg.beta > 0 and not self.has_reference:
            raise ValueError(
                "beta > 0 needs the reference policy: pass a frozen copy (or train LoRA adapters)"
            )
        self.engine = rollout_engine(cfg.use_vllm)

    @staticmethod
    def prompts_per_rank(cfg) -> int:
        return cfg.prompts_per_step

    def prompts_for_step(self, step: int) -> list[Sample]:
        """Each of this step's prompts `num_generations` times in a row (one group per prompt)."""
        return [p for p in super().prompts_for_step(step) for _ in range(self.cfg.num_generations)]

    @torch.no_grad()
    def make_experience(self, samples: list[Sample]) -> GroupExperience:
        """Steps 1-3 of the module docstring."""
        cfg, acc = self.cfg, self.accelerator
        rollout = self.sample(samples)
        scores = self.reward(rollout)
        groups = group_advantages(
            acc.gather(scores), cfg.num_generations, cfg.scale_rewards, cfg.advantage_baseline
        )
        rows = len(rollout)
        advantages = groups.advantages[acc.process_index * rows : (acc.process_index + 1) * rows]
        old, ref = [], []
        for chunk in self.chunks(rows):
            sub = rollout.select(chunk)
            if cfg.num_iterations > 1 or cfg.steps_per_generation > 1:
                old.append(self.forward(sub)[0])
            if cfg.beta > 0:
                ref.append(self.ref_logprobs(sub))
        return GroupExperience(
            rollout, advantages.to(self.device), scores, torch.cat(old) if old else None,
            torch.cat(ref) if ref else None, groups.zero_std_groups, groups.num_groups,
        )  # fmt: skip

    def update(self, exp: GroupExperience, step: int) -> dict[str, float]:
        """Step 4 of the module docstring; mean per-micro-batch stats."""
        cfg = self.cfg

        def items(rows: list[int]) -> float:
            mask = exp.mask[rows]
            return float(loss_sum_and_count(mask.float(), mask, cfg.loss_type, cfg.max_new_tokens)[1])

        passes = cfg.num_iterations
        return self.optimizer_steps(exp, step, passes, items, self._micro_step)

    def _micro_step(self, exp: GroupExperience, rows: list[int]) -> dict[str, float]:
        cfg = self.cfg
        sub = exp.rollout.select(rows)
        mask = sub.response_mask
        logprobs, resp_logits, _ = self.forward(sub)
        old = exp.old_logprobs[rows] if exp.old_logprobs is not None else logprobs.detach()
        ref = exp.ref_logprobs[rows] if exp.ref_logprobs is not None else None
        per_token, stats = clipped_token_loss(
            logprobs, old, exp.advantages[rows], mask, cfg.epsilon, cfg.epsilon_high, ref, cfg.beta
        )
        total, items = loss_sum_and_count(per_token, mask, cfg.loss_type, cfg.max_new_tokens)
        self.stepper.backward(total)  # a sum over items: the stepper divides by the step's items
        entropy = entropy_from_logits(resp_logits.detach(), mask).item()
        return {"loss": total.item() / max(items, 1), "entropy": entropy, **stats}

    def rollout_stats(self, exp: GroupExperience) -> dict[str, float]:
        """Reward and length statistics over every completion of the step (all processes)."""
        per_row = torch.stack([exp.scores, exp.mask.sum(1).float(), exp.rollout.has_eos.float()], dim=1)
        rows = self.accelerator.gather(per_row.float())
        return {
            "reward_mean": rows[:, 0].mean().item(), "reward_std": rows[:, 0].std().item(),
            "response_length": rows[:, 1].mean().item(), "eos_fraction": rows[:, 2].mean().item(),
            "zero_std_groups": float(exp.zero_std_groups),
            "zero_std_group_fraction": exp.zero_std_groups / exp.num_groups,
            **self.reward_stats(),
        }  # fmt: skip
