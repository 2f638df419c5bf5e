"""What every RL loop for VLMs shares (PPO, GRPO): prompts per step, rollouts, log-probs, the guarded
optimizer step, checkpoints, logs, evaluation and saving.

A subclass supplies `make_experience(samples)` (sample, score, compare with the reference),
`update(experience, step)` (optimizer steps through `self.stepper`) and `rollout_stats(experience)`;
`train()` runs them step after step with exact resume. The data order is a function of the step, so a
resumed run reads exactly what an uninterrupted one reads.
"""

from __future__ import annotations

import logging
import math
import time
from abc import ABC, abstractmethod
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from vlmkit.data.records import Sample
from vlmkit.eval.answers import exact_match
from vlmkit.rlhf.kl import kl_estimate
from vlmkit.rlhf.rewards import RewardSet
from vlmkit.rlhf.rollout import (
    Rollout,
    RolloutEngine,
    hf_generate,
    response_logprobs,
    response_slice,
    unwrapped_for_generation,
)  # fmt: skip
from vlmkit.rlhf.value_model import ActorCritic, prepare_frozen, reference_logits, save_value_model
from vlmkit.training.accelerator import fill_deepspeed_auto
from vlmkit.training.loop import Checkpointer, StepLog, enable_activation_checkpointing
from vlmkit.training.optim import build_optimizer, param_groups
from vlmkit.training.precision import upcast_trainable_parameters
from vlmkit.training.stepping import OptimizerStepper, ensure_finite_weights

logger = logging.getLogger(__name__)


def disable_dropout(model: nn.Module) -> None:
    """RL needs ratio == 1 on the first update: no dropout noise between rollout and update."""
    for module in model.modules():
        if isinstance(module, nn.Dropout):
            module.p = 0.0


def same_in_train_and_eval(policy: nn.Module) -> bool:
    """True when train mode computes what eval mode does: no active dropout module (`disable_dropout`), no
    attention dropout in the LLM config, a frozen encoder (which `VLM.train` keeps in eval mode), and no
    activation checkpointing (which turns the KV cache off in train mode)."""
    for m in policy.modules():
        if (isinstance(m, nn.Dropout) and m.p > 0) or getattr(m, "gradient_checkpointing", False) is True:
            return False
    if getattr(policy.language_model.config, "attention_dropout", 0.0):
        return False
    return not any(p.requires_grad for p in policy.encoder.parameters())


@dataclass
class RLResult:
    """What `RLTrainer.train` hands back."""

    global_step: int
    bad_steps: int = 0  # optimizer updates skipped for a non-finite loss or gradient
    history: list[dict] = field(default_factory=list)
    train_seconds: float = 0.0


class RLTrainer(ABC):
    """The shared RL loop. `reward` maps a Rollout to (B,) scores; `reference` is a frozen starting policy,
    or None (a LoRA policy's reference is itself with the adapters disabled; with neither, no KL exists).

    `lr_overrides` maps parameter-name prefixes to learning rates; `stateful` holds objects saved in
    checkpoints beside the scheduler (e.g. PPO's KL controller).
    """

    name = "RL"
    kl_estimator = "k3"  # estimator of the KL reported by `evaluate`

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
        lr_overrides: dict[str, float] | None = None,
        stateful: dict[str, Any] | None = None,
    ):
        if cfg.rollout_batch_size < 2:
            raise ValueError(
                f"rollout_batch_size is {cfg.rollout_batch_size}; {self.name} needs at least 2 responses per step"
            )
        if len(prompts) < self.prompts_per_rank(cfg) * accelerator.num_processes:
            raise ValueError(
                f"{len(prompts)} training prompts are fewer than one step's prompts "
                f"({self.prompts_per_rank(cfg)} x {accelerator.num_processes} processes)"
            )
        self.cfg, self.accelerator, self.processor = cfg, accelerator, processor
        self.reward, self.prompts, self.tokenizer = reward, prompts, processor.tokenizer
        disable_dropout(model)
        if cfg.gradient_checkpointing:
            enable_activation_checkpointing(model.policy)
        upcast_trainable_parameters(model, accelerator)
        groups = param_groups(model, cfg.learning_rate, cfg.weight_decay, lr_overrides)
        optimizer, self.scheduler = build_optimizer(
            groups, cfg.learning_rate, cfg.lr_scheduler_type, int(cfg.warmup_ratio * cfg.max_steps), cfg.max_steps
        )  # fmt: skip
        # No DataLoader is prepared here: DeepSpeed takes its micro-batch size (and clipping) from the config.
        fill_deepspeed_auto(
            accelerator, max_grad_norm=cfg.max_grad_norm, micro_batch_size=cfg.per_device_train_batch_size
        )
        self.model, self.optimizer = accelerator.prepare(model, optimizer)
        self._bare = accelerator.unwrap_model(self.model)  # unwrap_model is not free: once
        self.kind = self._bare.policy_kind  # composite or native: how the policy is run (rl_kinds.RLKind)
        self._same_in_eval = self.kind.same_in_train_and_eval(self._bare.policy)
        self.never_sampled = self.kind.never_sampled(self._bare.policy, processor)
        self.stop_token_ids = self.kind.stop_token_ids(self._bare.policy, processor)  # what ends a response
        self.stepper = OptimizerStepper(
            accelerator, self.model, self.optimizer, max_grad_norm=cfg.max_grad_norm,
            max_bad_steps=cfg.max_bad_steps, output_dir=cfg.output_dir,
        )  # fmt: skip
        # Saved as JSON beside accelerate's files (never a pickle): see training.loop.restore_checkpoint.
        self.stateful = {"scheduler": self.scheduler, **(stateful or {})}
        self.reference = prepare_frozen(reference, accelerator) if reference is not None else None
        self.device = accelerator.device
        self.engine: RolloutEngine = hf_generate  # generation behind one call (see rollout.RolloutEngine)
        self._orders: dict[int, list[int]] = {}

    # ---- what a subclass supplies --------------------------------------------------------------------
    @staticmethod
    def prompts_per_rank(cfg) -> int:
        """Distinct prompts each process reads per step."""
        return cfg.rollout_batch_size

    @abstractmethod
    def make_experience(self, samples: list[Sample]):
        """Sample responses to `samples`, score them and compute what `update` needs (no gradient)."""

    @abstractmethod
    def update(self, experience, step: int) -> dict[str, float]:
        """Optimizer steps on one experience through `self.stepper`; per-process mean stats, including
        `skipped_updates` (updates the NaN/inf guard skipped)."""

    @abstractmethod
    def rollout_stats(self, experience) -> dict[str, float]:
        """Statistics of the experience over all processes (rewards, KL, lengths...)."""

    def optimizer_steps(
        self, experience, step: int, passes: int, items: Callable[[list[int]], float], micro_step
    ) -> dict[str, float]:
        """`passes` shuffled passes over the experience's rows in mini-batches of per_device_train_batch_size x
        gradient_accumulation_steps, one guarded optimizer step each; `items(rows)` counts what a mini-batch's
        loss sums over, `micro_step(experience, rows)` backwards one micro-batch and returns its stats.

        Returns the mean of the per-micro-batch stats plus `skipped_updates` (updates the NaN guard skipped).
        The order is a function of (seed, step), so a resumed run updates exactly as an uninterrupted one."""
        cfg, acc = self.cfg, self.accelerator
        micro = cfg.per_device_train_batch_size
        mini = micro * cfg.gradient_accumulation_steps
        g = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
        totals: dict[str, float] = {}
        count, skipped = 0, 0
        if not self.model.training:  # train() is not free on transformers models
            self.model.train()
        for _ in range(passes):
            order = torch.randperm(len(experience.rollout), generator=g).tolist()
            for m in range(0, len(order), mini):
                batch = order[m : m + mini]
                self.stepper.begin(items(batch), step + 1)
                for k in range(0, mini, micro):
                    with acc.accumulate(self.model):
                        stats = micro_step(experience, batch[k : k + micro])
                    for key, value in stats.items():
                        totals[key] = totals.get(key, 0.0) + value
                    count += 1
                skipped += self.stepper.outcome.verdict != "ok"
        self.scheduler.step()
        return {**{k: v / count for k, v in totals.items()}, "skipped_updates": float(skipped)}

    def after_step(self, record: dict) -> None:  # noqa: B027 - an optional hook
        """Called with each step's record before it is logged (PPO updates its KL controller here)."""

    # ---- pieces -------------------------------------------------------------------------------------
    @property
    def bare(self) -> ActorCritic:
        return self._bare

    @property
    def media_token_id(self) -> int | list[int]:
        """The media token(s): never sampled, so excluded from every log-prob (see `response_logprobs`)."""
        return self.never_sampled

    @property
    def has_reference(self) -> bool:
        return self.reference is not None or self.kind.is_peft(self.bare.policy)

    def prompts_for_step(self, step: int) -> list[Sample]:
        """This process's prompts of step `step`: a slice of seeded per-epoch permutations, so resuming
        at any step reads exactly what an uninterrupted run reads."""
        per_rank, n = self.prompts_per_rank(self.cfg), len(self.prompts)
        start = (step * self.accelerator.num_processes + self.accelerator.process_index) * per_rank
        out = []
        for pos in range(start, start + per_rank):
            epoch, i = divmod(pos, n)
            if epoch not in self._orders:
                g = torch.Generator().manual_seed(self.cfg.seed * 100_003 + epoch)
                self._orders = {epoch: torch.randperm(n, generator=g).tolist()}
            out.append(self.prompts[self._orders[epoch][i]])
        return out

    def forward(self, rollout: Rollout, with_values: bool = False) -> tuple[Tensor, Tensor, Tensor | None]:
        """(log-probs (B, T), response logits (B, T, V), values (B, T) or None) of the current policy."""
        inputs = rollout.model_inputs()
        logits, values = self.model(**inputs, with_values=with_values, logits_to_keep=rollout.logits_to_keep)
        logprobs, resp_logits = response_logprobs(logits, rollout, self.cfg.temperature, self.media_token_id)
        if values is not None:
            values = values[:, response_slice(rollout.query_ids.shape[1], rollout.response_ids.shape[1])]
        return logprobs, resp_logits, values

    def ref_logprobs(self, rollout: Rollout) -> Tensor:
        """(B, T) log-probs of the sampled tokens under the frozen reference policy."""
        inputs = {**rollout.model_inputs(), "logits_to_keep": rollout.logits_to_keep}
        logits = reference_logits(self.model, self.bare.policy, inputs, self.reference)
        return response_logprobs(logits, rollout, self.cfg.temperature, self.media_token_id)[0]

    def chunks(self, n: int, size: int | None = None) -> list[list[int]]:
        """Row indices in micro-batches of `size` (default per_device_train_batch_size)."""
        size = size or self.cfg.per_device_train_batch_size
        return [list(range(i, min(n, i + size))) for i in range(0, n, size)]

    def sample(self, samples: list[Sample], do_sample: bool = True) -> Rollout:
        """Generate one response per prompt with the current policy (parameters gathered under ZeRO-3)."""
        batch = self.kind.prompt_batch(samples, self.processor, self.device, self.bare.policy)
        with unwrapped_for_generation(self.model, self.accelerator, self.bare) as bare:
            return self.engine(
                bare.policy, batch, self.tokenizer, max_new_tokens=self.cfg.max_new_tokens,
                temperature=self.cfg.temperature, top_p=self.cfg.top_p, do_sample=do_sample,
                eval_mode=not self._same_in_eval,
            )  # fmt: skip

    def reduce_mean(self, stats: dict[str, float]) -> dict[str, float]:
        """Each scalar averaged over processes."""
        names = sorted(stats)
        values = self.accelerator.reduce(torch.tensor([stats[k] for k in names], device=self.device), "mean")
        return dict(zip(names, values.tolist()))

    def reward_stats(self) -> dict[str, float]:
        """Each reward source's mean score in the last scored batch (averaged over processes) and its
        zeroed samples so far (summed), when the reward is a `RewardSet`."""
        if not isinstance(self.reward, RewardSet):
            return {}
        stats = self.reward.stats()
        out = self.reduce_mean({k: v for k, v in stats.items() if k.startswith("reward_")})
        counts = {k: v for k, v in stats.items() if k.startswith("bad_reward_")}
        names = sorted(counts)
        summed = self.accelerator.reduce(torch.tensor([counts[k] for k in names], device=self.device), "sum")
        return {**out, **dict(zip(names, summed.tolist()))}

    # ---- the loop -----------------------------------------------------------------------------------
    def train(self) -> RLResult:
        """Run steps until `max_steps`, resuming from `resume_from_checkpoint` when given."""
        cfg, acc = self.cfg, self.accelerator
        checkpoints = Checkpointer(acc, self.model, cfg, self.stateful)
        start = checkpoints.resume(cfg.max_steps)
        if checkpoints.resume_dir is not None:
            logger.info("resumed %s at step %d", self.name, start)
        log = StepLog(acc, cfg, cfg.max_steps, resume_step=checkpoints.resumed_step)
        result = RLResult(global_step=start)
        logger.info("%s: %d responses per process per step, %d steps", self.name, cfg.rollout_batch_size,
                    cfg.max_steps)  # fmt: skip
        t_start = time.perf_counter()
        for step in range(start, cfg.max_steps):
            t0 = time.perf_counter()
            exp = self.make_experience(self.prompts_for_step(step))
            t1 = time.perf_counter()
            bad_before = self.stepper.bad_steps
            stats = self.update(exp, step)
            t2 = time.perf_counter()
            skipped = stats.pop("skipped_updates")
            record = {"step": step + 1, **self.rollout_stats(exp), **self.reduce_mean(stats)}
            self.after_step(record)
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
    def response_kl(self, rollout: Rollout) -> Tensor:
        """(B,) KL to the reference per response (`kl_estimator`, summed over tokens); NaN without one."""
        if not self.has_reference:
            return torch.full((len(rollout),), math.nan, device=self.device)
        parts = []
        for rows in self.chunks(len(rollout)):
            sub = rollout.select(rows)
            logprobs = self.forward(sub)[0]
            kl = kl_estimate(logprobs, self.ref_logprobs(sub), self.kl_estimator)
            parts.append((kl * sub.response_mask).sum(1))
        return torch.cat(parts)

    @torch.no_grad()
    def evaluate(self, samples: list[Sample], batch_size: int | None = None) -> dict[str, float]:
        """Held-out metrics of the current policy on `samples`:

        accuracy: greedy answers vs the reference answers (exact match after normalisation, as
        `vlmkit.eval.answers.answer_accuracy`); reward: mean score of sampled responses (rollout
        temperature, before any missing-EOS penalty); kl: mean KL to the reference per sampled response
        (summed over tokens; left out when there is no reference). Sampling is seeded and leaves the
        global RNG untouched.
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
                scores, kl = self.reward(rollout), self.response_kl(rollout)
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
        metrics = {
            "accuracy": int(table[has_ref, 0].sum()) / int(has_ref.sum()) if has_ref.any() else float("nan"),
            "reward": table[:, 1].mean().item(), "kl": table[:, 2].mean().item(),
            "response_length": table[:, 3].mean().item(),
        }  # fmt: skip
        if not self.has_reference:
            del metrics["kl"]
        return metrics

    def save(self, out_dir: str | Path) -> None:
        """The policy (full or adapter) in from_pretrained form + processor, and `value_model/` if any (a
        critic there is a reward model checkpoint with the processor files)."""
        acc = self.accelerator
        state = acc.get_state_dict(self.model)  # collective under ZeRO-3: every rank calls it
        if acc.is_main_process:
            bare = self.bare
            policy_state = {k[len("policy.") :]: v for k, v in state.items() if k.startswith("policy.")}
            bare.policy.save_pretrained(out_dir, state_dict=policy_state)
            self.processor.save_pretrained(out_dir)
            if bare.kind != "none":
                value_dir = save_value_model(bare, out_dir, state)
                if bare.kind == "reward_model":  # a reward model checkpoint, complete with its processor
                    self.processor.save_pretrained(value_dir)
        acc.wait_for_everyone()
