"""The PPO loop for VLMs: rollouts -> scores -> KL-shaped rewards -> GAE -> clipped policy and value updates.

One PPO step (Ziegler et al. 2019; Ouyang et al. 2022):
1. sample one response per prompt with the policy (`rollout.py`), score it (`rewards.py`), and subtract
   `missing_eos_penalty` from responses that never end;
2. with no gradient, compute the policy's log-probs and values and the reference's log-probs;
3. per-token rewards = -kl_coef * KL estimate, plus the score on the last token; GAE advantages and returns;
   advantages whitened;
4. `num_ppo_epochs` passes over the batch in `num_mini_batches` shuffled mini-batches of
   `gradient_accumulation_steps` micro-batches: clipped policy loss + vf_coef * clipped value loss;
5. the KL controller sees the batch's mean KL per response.
Losses are token means over the whole mini-batch (all micro-batches, all processes), so batch 8 x
accumulation 1 and batch 1 x accumulation 8 give the same update. Each mini-batch update goes through the
shared `OptimizerStepper` (the NaN/inf guard: a non-finite update is skipped and counted in `bad_steps`,
`max_bad_steps` in a row stop the run) and checkpoints through the shared `Checkpointer`: they hold the
policy, the value model, optimizer, scheduler, KL controller and RNG states; the data order is a function
of the step.
"""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import Tensor, nn

from vlmkit.data.records import Sample
from vlmkit.eval.answers import exact_match
from vlmkit.rlhf.kl import build_kl_controller, kl_estimate
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
from vlmkit.rlhf.rollout import (
    Rollout,
    generate_rollout,
    make_prompt_batch,
    response_logprobs,
    response_slice,
    unwrapped_for_generation,
)  # fmt: skip
from vlmkit.rlhf.value_model import ActorCritic, prepare_frozen, reference_logits, save_value_model
from vlmkit.training.accelerator import fill_deepspeed_auto
from vlmkit.training.loop import Checkpointer, StepLog
from vlmkit.training.optim import build_optimizer, param_groups
from vlmkit.training.stepping import OptimizerStepper, ensure_finite_weights

logger = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    """PPO needs ratio == 1 on the first mini-batch: no dropout noise between rollout and update."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


@dataclass
class Experience:
    """A scored rollout batch with everything the PPO update needs; tensors (B, T) unless noted."""

    rollout: Rollout
    logprobs: Tensor
    ref_logprobs: Tensor
    values: Tensor
    advantages: Tensor
    returns: Tensor
    scores: Tensor  # (B,) after the missing-EOS penalty
    kl: Tensor  # (B,) per-response KL (sum over tokens)
    rewards: Tensor  # (B,) per-response total of the shaped rewards

    @property
    def mask(self) -> Tensor:
        return self.rollout.response_mask


@dataclass
class PPOResult:
    """What `PPOTrainer.train` hands back."""

    global_step: int
    bad_steps: int = 0  # optimizer updates skipped for a non-finite loss or gradient
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


class PPOTrainer:
    """Runs PPO on prompts. `reward` maps a Rollout to (B,) scores; `reference` is a frozen starting policy,
    or None for a LoRA policy (its adapters are disabled for reference passes)."""

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
        if cfg.rollout_batch_size < 2:
            raise ValueError(
                f"rollout_batch_size is {cfg.rollout_batch_size}; PPO needs at least 2 responses per step"
            )
        if len(prompts) < cfg.rollout_batch_size * accelerator.num_processes:
            raise ValueError(
                f"{len(prompts)} training prompts are fewer than one rollout batch ({cfg.rollout_batch_size} x {accelerator.num_processes} processes)"
            )
        self.cfg, self.accelerator, self.processor, self.reward, self.prompts = (
            cfg,
            accelerator,
            processor,
            reward,
            prompts,
        )
        self.tokenizer = processor.tokenizer
        disable_dropout(model)
        value_lr = cfg.value_learning_rate or cfg.learning_rate
        groups = param_groups(
            model, cfg.learning_rate, cfg.weight_decay, {"value_head.": value_lr, "critic.": value_lr}
        )
        optimizer, self.scheduler = build_optimizer(
            groups,
            cfg.learning_rate,
            cfg.lr_scheduler_type,
            int(cfg.warmup_ratio * cfg.max_steps),
            cfg.max_steps,
        )
        # No DataLoader is prepared here: DeepSpeed takes its micro-batch size (and clipping) from the config.
        fill_deepspeed_auto(
            accelerator, max_grad_norm=cfg.max_grad_norm, micro_batch_size=cfg.per_device_train_batch_size
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self.kl_ctl = build_kl_controller(cfg.kl_controller, cfg.init_kl_coef, cfg.kl_target, cfg.kl_horizon)
        self.stepper = OptimizerStepper(
            accelerator, self.model, self.optimizer, max_grad_norm=cfg.max_grad_norm,
            max_bad_steps=cfg.max_bad_steps, output_dir=cfg.output_dir,
        )  # fmt: skip
        # Saved as JSON beside accelerate's files (never a pickle): see training.loop.restore_checkpoint.
        self.stateful = {"scheduler": self.scheduler, "kl_controller": self.kl_ctl}
        self.reference = prepare_frozen(reference, accelerator) if reference is not None else None
        self.device = accelerator.device
        self._orders: dict[int, list[int]] = {}

    # ---- pieces -------------------------------------------------------------------------------------
    @property
    def bare(self) -> ActorCritic:
        return self.accelerator.unwrap_model(self.model)

    def prompts_for_step(self, step: int) -> list[Sample]:
        """This process's prompts of PPO step `step`: a slice of seeded per-epoch permutations, so resuming
        at any step reads exactly what an uninterrupted run reads."""
        per_rank, n = self.cfg.rollout_batch_size, len(self.prompts)
        start = (step * self.accelerator.num_processes + self.accelerator.process_index) * per_rank
        out = []
        for pos in range(start, start + per_rank):
            epoch, i = divmod(pos, n)
            if epoch not in self._orders:
                g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                self._orders = {epoch: torch.randperm(n, generator=g).tolist()}
            out.append(self.prompts[self._orders[epoch][i]])
        return out

    def _forward(self, rollout: Rollout, with_values: bool) -> tuple[Tensor, Tensor, Tensor | None]:
        """(log-probs (B, T), response logits (B, T, V), values (B, T) or None) of the current policy."""
        logits, values = self.model(**rollout.model_inputs(), with_values=with_values)
        logprobs, resp_logits = response_logprobs(logits, rollout, self.cfg.temperature)
        if values is not None:
            values = values[:, response_slice(rollout.query_ids.shape[1], rollout.response_ids.shape[1])]
        return logprobs, resp_logits, values

    def _ref_logprobs(self, rollout: Rollout) -> Tensor:
        logits = reference_logits(self.model, self.bare.policy, rollout.model_inputs(), self.reference)
        return response_logprobs(logits, rollout, self.cfg.temperature)[0]

    def _chunks(self, n: int, size: int) -> list[list[int]]:
        return [list(range(i, min(n, i + size))) for i in range(0, n, size)]

    def sample(self, samples: list[Sample], do_sample: bool = True) -> Rollout:
        """Generate one response per prompt with the current policy (parameters gathered under ZeRO-3)."""
        batch = make_prompt_batch(samples, self.processor, self.device)
        with unwrapped_for_generation(self.model, self.accelerator) as bare:
            return generate_rollout(
                bare.policy, batch, self.tokenizer, max_new_tokens=self.cfg.max_new_tokens,
                temperature=self.cfg.temperature, top_p=self.cfg.top_p, do_sample=do_sample,
            )  # fmt: skip

    @torch.no_grad()
    def score_and_compare(self, rollout: Rollout) -> tuple[Tensor, Tensor, Tensor, Tensor]:
        """Raw scores (B,), policy log-probs (B, T), reference log-probs (B, T), values (B, T)."""
        scores = self.reward(rollout)
        parts = {"logprobs": [], "ref": [], "values": []}
        for rows in self._chunks(len(rollout), self.cfg.per_device_train_batch_size):
            sub = rollout.select(rows)
            logprobs, _, values = self._forward(sub, with_values=True)
            parts["logprobs"].append(logprobs)
            parts["values"].append(values)
            parts["ref"].append(self._ref_logprobs(sub))
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
                scores, rollout.response_ids, self.tokenizer.eos_token_id, cfg.missing_eos_penalty, mask
            )
        rewards, kl = compute_rewards(
            scores, logprobs, ref_logprobs, mask, self.kl_ctl.value, cfg.kl_estimator
        )
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

    def update(self, exp: Experience, step: int) -> dict[str, float]:
        """Step 4: PPO epochs over shuffled mini-batches; returns the mean of the per-micro-batch stats,
        plus `skipped_updates` (mini-batch updates the NaN/inf guard skipped)."""
        cfg, acc = self.cfg, self.accelerator
        micro, gas = cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps
        mini = micro * gas
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        totals: dict[str, float] = {}
        count, skipped = 0, 0
        self.model.train()
        for _ in range(cfg.num_ppo_epochs):
            order = torch.randperm(len(exp.rollout), generator=g).tolist()
            for m in range(0, len(order), mini):
                mb = order[m : m + mini]
                self.stepper.begin(float(exp.mask[mb].sum()), step + 1)
                for k in range(0, mini, micro):
                    with acc.accumulate(self.model):
                        stats = self._micro_step(exp, mb[k : k + micro])
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    count += 1
                skipped += self.stepper.outcome.verdict != "ok"
        self.scheduler.step()
        return {**{k: v / count for k, v in totals.items()}, "skipped_updates": float(skipped)}

    def _micro_step(self, exp: Experience, rows: list[int]) -> dict[str, float]:
        cfg = self.cfg
        sub = exp.rollout.select(rows)
        mask = sub.response_mask
        logprobs, resp_logits, values = self._forward(sub, with_values=True)
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

    # ---- the loop -----------------------------------------------------------------------------------
    def train(self) -> PPOResult:
        """Run PPO steps until `max_steps`, resuming from `resume_from_checkpoint` when given."""
        cfg, acc = self.cfg, self.accelerator
        checkpoints = Checkpointer(acc, self.model, cfg, self.stateful)
        start = checkpoints.resume(cfg.max_steps)
        if checkpoints.resume_dir is not None:
            logger.info("resumed PPO at step %d (kl_coef %.4g)", start, self.kl_ctl.value)
        log = StepLog(acc, cfg, cfg.max_steps, resume_step=checkpoints.resumed_step)
        result = PPOResult(global_step=start)
        logger.info("PPO: %d responses per process per step, %d steps", cfg.rollout_batch_size, cfg.max_steps)
        t_start = time.perf_counter()
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            kl_coef = self.kl_ctl.value
            exp = self.make_experience(self.prompts_for_step(step))
            t1 = time.perf_counter()
            bad_before = self.stepper.bad_steps
            stats = self.update(exp, step)
            t2 = time.perf_counter()
            skipped = stats.pop("skipped_updates")
            record = {"step": step + 1, **self._rollout_stats(exp), **self._reduce(stats), "kl_coef": kl_coef}
            self.kl_ctl.update(record["kl"], cfg.rollout_batch_size * acc.num_processes)
            record.update(lr=self.scheduler.get_last_lr()[0], rollout_seconds=t1 - t0, update_seconds=t2 - t1)
            if skipped:
                verdict = "bad" if self.stepper.bad_steps > bad_before else "overflow"
                record.update(skipped=verdict, skipped_updates=int(skipped))
            result.history.append(record)
            result.global_step, result.bad_steps = step + 1, self.stepper.bad_steps
            log.write(record)
            checkpoints.maybe_save(step + 1, cfg.max_steps, healthy=not self.stepper.consecutive_bad)
        ensure_finite_weights(acc, self.model, "the trained policy", cfg.output_dir)
        result.train_seconds = time.perf_counter() - t_start
        return result

    def _reduce(self, stats: dict[str, float]) -> dict[str, float]:
        names = sorted(stats)
        values = self.accelerator.reduce(torch.tensor([stats[k] for k in names], device=self.device), "mean")
        return dict(zip(names, values.tolist()))

    def _rollout_stats(self, exp: Experience) -> dict[str, float]:
        """Means/stds over every response of the step (all processes)."""
        acc, mask = self.accelerator, exp.mask
        per_row = torch.stack(
            [exp.scores, exp.rewards, exp.kl, mask.sum(1).float(), exp.rollout.has_eos.float()], dim=1
        )
        rows = acc.gather(per_row.float())
        ev = explained_variance(exp.values, exp.returns, mask)
        return {
            "score_mean": rows[:, 0].mean().item(), "score_std": rows[:, 0].std().item(),
            "reward_mean": rows[:, 1].mean().item(), "reward_std": rows[:, 1].std().item(),
            "kl": rows[:, 2].mean().item(), "response_length": rows[:, 3].mean().item(),
            "eos_fraction": rows[:, 4].mean().item(), "explained_variance": ev if math.isfinite(ev) else 0.0,
        }  # fmt: skip

    # ---- evaluation and saving ----------------------------------------------------------------------
    @torch.no_grad()
    def greedy_answers(self, samples: list[Sample]) -> list[str]:
        """The current policy's greedy answers to `samples` (every process answers the same ones)."""
        size = self.cfg.per_device_eval_batch_size
        return [
            text
            for i in range(0, len(samples), size)
            for text in self.sample(samples[i : i + size], False).texts
        ]

    @torch.no_grad()
    def evaluate(self, samples: list[Sample], batch_size: int | None = None) -> dict[str, float]:
        """Held-out metrics of the current policy on `samples`:

        accuracy: greedy answers vs the reference answers (exact match after normalisation, as
        `vlmkit.eval.answers.answer_accuracy`); reward: mean score of sampled responses (rollout
        temperature, before any missing-EOS penalty); kl: mean KL to the reference per sampled response
        (the run's estimator, summed over tokens). Sampling is seeded and leaves the global RNG untouched.
        """
        acc = self.accelerator
        size = batch_size or self.cfg.per_device_eval_batch_size
        per_rank = math.ceil(len(samples) / acc.num_processes)
        # Equal shares on every process (padded by repeating), so collective forwards stay in step.
        mine = [
            (i % len(samples))
            for i in range(acc.process_index * per_rank, (acc.process_index + 1) * per_rank)
        ]
        valid = [acc.process_index * per_rank + j < len(samples) for j in range(per_rank)]
        rows: list[list[float]] = []  # correct, score, kl, length, has reference, real (not padding)
        devices = [torch.cuda.current_device()] if torch.cuda.is_available() else []
        with torch.random.fork_rng(devices=devices):
            torch.manual_seed(self.cfg.seed)
            for start in range(0, per_rank, size):
                chunk = [samples[i] for i in mine[start : start + size]]
                greedy = self.sample(chunk, do_sample=False)
                rollout = self.sample(chunk, do_sample=True)
                scores, logprobs, ref_logprobs, _ = self.score_and_compare(rollout)
                kl = (kl_estimate(logprobs, ref_logprobs, self.cfg.kl_estimator) * rollout.response_mask).sum(
                    1
                )
                for j, (text, ref) in enumerate(zip(greedy.texts, greedy.references)):
                    correct = float(ref is not None and exact_match(text, ref))
                    length = rollout.response_mask[j].sum().item()
                    real = float(valid[start + j])
                    rows.append(
                        [correct, scores[j].item(), kl[j].item(), length, float(ref is not None), real]
                    )
        table = acc.gather(torch.tensor(rows, device=self.device))
        table = table[table[:, 5] > 0]
        has_ref = table[:, 4] > 0
        return {
            "accuracy": int(table[has_ref, 0].sum()) / int(has_ref.sum()) if has_ref.any() else float("nan"),
            "reward": table[:, 1].mean().item(), "kl": table[:, 2].mean().item(),
            "response_length": table[:, 3].mean().item(),
        }  # fmt: skip

    def save(self, out_dir: str | Path) -> None:
        """The policy (full or adapter) in from_pretrained form + processor, and `value_model/` beside it."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # collective under ZeRO-3: every rank calls it
        if acc.is_main_process:
            bare = self.bare
            policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
            bare.policy.save_pretrained(out_dir, state_dict=policy_state)
            self.processor.save_pretrained(out_dir)
            save_value_model(bare, out_dir, state)
        acc.wait_for_everyone()
