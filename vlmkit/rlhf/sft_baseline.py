"""The compute-matched supervised baseline of an RL or DPO run: is the reward (or preference) worth more than
the answers?

The matching rule (what "compute-matched" counts). From the RL run's starting policy, the baseline
- reads exactly the RL run's prompts, step by step: the RL trainer's own `prompts_for_step` (the same seeded
  order; GRPO's groups included, so every prompt appears as many times as the RL run sampled it);
- takes exactly the RL run's optimizer updates: per step, the same passes over the step's rows (PPO's
  num_ppo_epochs, GRPO's num_iterations) in the same shuffled mini-batches of per_device_train_batch_size x
  gradient_accumulation_steps (`RLTrainer.optimizer_steps`), for max_steps steps, with the same optimizer,
  learning rate, schedule, clipping and trainable policy parameters;
- replaces each sampled response by the prompt's reference answer (teacher-forced: the tokens stage-2 SFT
  supervises, up to and including the end-of-turn EOS; for a native VLM, its own encoder's labels) and the RL
  loss by that answer's negative log-likelihood (temperature 1, token mean over each update).
So the baseline and the RL run see the same prompts as often, through the same number of updates of the same
size. Not matched, by design: the RL run's generation and its reference/critic/reward forwards (SFT needs none),
and the value model (only the policy trains). The baseline knows the right answer, which RL must find through
its reward: RL is worth its cost here only where it beats this baseline. Both are measured by the same
`RLTrainer.evaluate` on the same held-out prompts, and compared prompt by prompt (paired).

DPO's baseline (`train_sft_on_chosen`) follows the same rule in the SFT training loop: the same start, the
same pairs in the same order through the same optimizer updates, each pair's chosen answer as the target
(per-token NLL, the term RPO adds); it is evaluated by DPO's own evaluation (held-out pairs and questions).

The baseline inherits the run's learning rate and schedule (that is what "same updates" means here); they need
not be SFT's best, so a separately tuned SFT could only be stronger: a win over this baseline is necessary for
RL to be worth it, not sufficient.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import math
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import torch

from vlmkit.data.preference import count_pairs
from vlmkit.data.records import BadSampleError, Sample
from vlmkit.data.tokenize import IGNORE_INDEX, assistant_spans
from vlmkit.eval.answers import exact_match
from vlmkit.models.encoders import encode
from vlmkit.rlhf.dpo import ChosenNLL, build_dpo_policy
from vlmkit.rlhf.rl_kinds import NATIVE_RL, rl_kind_of_model
from vlmkit.rlhf.rl_trainer import RLTrainer
from vlmkit.rlhf.rollout import Rollout, response_logprobs
from vlmkit.rlhf.value_model import ActorCritic, is_zero3
from vlmkit.training.loop import TrainResult, train

logger = logging.getLogger(__name__)

BASELINE_DIR = "sft_baseline"  # inside the RL run's output_dir: the baseline's train_log.jsonl
SIGNIFICANCE_Z = 1.96  # "RL beats the baseline": the paired accuracy gain exceeds 1.96 standard errors


def passes_per_step(cfg) -> int:
    """Passes of the RL update over each step's rows: PPO's num_ppo_epochs, GRPO's num_iterations."""
    for name in ("num_ppo_epochs", "num_iterations"):
        if hasattr(cfg, name):
            return getattr(cfg, name)
    raise ValueError(f"{type(cfg).__name__} has neither num_ppo_epochs nor num_iterations")


def _require_answer(sample: Sample) -> None:
    if not sample.turns or sample.turns[-1].role != "assistant":
        raise BadSampleError(
            sample.source, sample.index, "answer",
            "the SFT baseline trains on the prompts' reference answers; this prompt has none",
        )  # fmt: skip


def _stop_set(stop_ids: int | list[int]) -> set[int]:
    return {stop_ids} if isinstance(stop_ids, int) else set(stop_ids)


def _cut_after_stop(ids: list[int], stop_ids: int | list[int]) -> list[int]:
    """`ids` up to and including the first stop token, as a sampled response would end."""
    stops = _stop_set(stop_ids)
    for i, token in enumerate(ids):
        if token in stops:
            return ids[: i + 1]
    return ids


def answer_tokens(sample: Sample, tokenizer) -> list[int]:
    """The token ids stage-2 SFT supervises for the sample's final assistant turn (its reference answer),
    cut after the first EOS, as a sampled response would be."""
    _require_answer(sample)
    messages = [{"role": t.role, "content": t.text} for t in sample.turns]
    text, spans = assistant_spans(tokenizer, messages, sample.source, sample.index)
    start, end = spans[-1]
    ids = tokenizer(text[start:end], add_special_tokens=False)["input_ids"]
    return _cut_after_stop(ids, tokenizer.eos_token_id)


def native_answer_tokens(sample: Sample, encoder, stop_ids: list[int]) -> list[int]:
    """For a native VLM: the token ids its stage-2 SFT supervises for the final assistant turn (the last run
    of `NativeEncoder.encode`'s labels: the answer and its end-of-turn token), cut after the first stop token."""
    _require_answer(sample)
    labels = encoder.encode(sample)["labels"][0].tolist()
    end = len(labels)
    while end and labels[end - 1] == IGNORE_INDEX:
        end -= 1
    start = end
    while start and labels[start - 1] != IGNORE_INDEX:
        start -= 1
    return _cut_after_stop(labels[start:end], stop_ids)


@dataclass
class AnswerBatch:
    """A step's prompts with their reference answers as responses (what `optimizer_steps` reads)."""

    rollout: Rollout


class SFTBaselineTrainer(RLTrainer):
    """Supervised fine-tuning on the reference answers, stepped exactly like the RL trainer `matched`
    (see the module docstring). `policy` is a fresh copy of the RL run's starting policy; `reference` (the
    RL run's) only serves `evaluate`'s KL."""

    name = "SFT baseline"

    def __init__(self, cfg, accelerator, policy, processor, reward, matched: RLTrainer, *, reference=None):
        self.matched = matched
        self._targets: dict[int, list[int]] = {}
        self.updates = 0  # optimizer updates taken (this process)
        self.rows_trained = 0  # answer rows read by the first pass of each step (this process)
        kind = rl_kind_of_model(policy)  # the parameters the RL recipes train
        kind.set_trainable(policy, cfg, "instruct", tune_connector=not kind.is_peft(policy))
        super().__init__(
            cfg, accelerator, ActorCritic(policy), processor, reward, matched.prompts, reference=reference
        )

    def prompts_per_rank(self, cfg) -> int:
        return type(self.matched).prompts_per_rank(cfg)

    def prompts_for_step(self, step: int) -> list[Sample]:
        return self.matched.prompts_for_step(step)

    def _answer(self, sample: Sample) -> list[int]:
        if id(sample) not in self._targets:
            if self.kind is NATIVE_RL:
                answer = native_answer_tokens(sample, self.processor, self.stop_token_ids)
            else:
                answer = answer_tokens(sample, self.tokenizer)
            self._targets[id(sample)] = answer
        return self._targets[id(sample)]

    @torch.no_grad()
    def make_experience(self, samples: list[Sample]) -> AnswerBatch:
        """The prompts (left-padded) with their answers (right-padded) in place of sampled responses."""
        batch = self.kind.prompt_batch(samples, self.processor, self.device, self.bare.policy)
        answers = [self._answer(s) for s in samples]
        width = max(len(a) for a in answers)
        ids = torch.full((len(samples), width), self.tokenizer.pad_token_id, dtype=torch.long)
        mask = torch.zeros(len(samples), width, dtype=torch.bool)
        for row, answer in enumerate(answers):
            ids[row, : len(answer)] = torch.tensor(answer)
            mask[row, : len(answer)] = True
        batch.response_ids, batch.response_mask = ids.to(self.device), mask.to(self.device)
        stops = _stop_set(self.stop_token_ids)
        batch.has_eos = torch.tensor([bool(stops & set(a)) for a in answers], device=self.device)
        batch.texts = [r or "" for r in batch.references]
        if self.kind is NATIVE_RL:  # a native VLM runs its own tower in each forward
            return AnswerBatch(batch)
        encoder = self.bare.policy.encoder
        if batch.media is not None and not any(p.requires_grad for p in encoder.parameters()):
            cfg = self.bare.policy.config
            batch.media_features = encode(encoder, batch.media, cfg.feature_layer, cfg.drop_cls_token)
        return AnswerBatch(batch)

    def update(self, batch: AnswerBatch, step: int) -> dict[str, float]:
        """The RL run's passes and mini-batches; each update's loss is the token mean NLL of its answers."""
        mask = batch.rollout.response_mask
        self.rows_trained += len(batch.rollout)

        def tokens(rows: list[int]) -> float:  # called once per optimizer update
            self.updates += 1
            return float(mask[rows].sum())

        return self.optimizer_steps(batch, step, passes_per_step(self.cfg), tokens, self._micro_step)

    def _micro_step(self, batch: AnswerBatch, rows: list[int]) -> dict[str, float]:
        sub = batch.rollout.select(rows)
        logits, _ = self.model(**sub.model_inputs(), with_values=False, logits_to_keep=sub.logits_to_keep)
        logprobs, _ = response_logprobs(logits, sub, 1.0, self.media_token_id)
        nll = -(logprobs * sub.response_mask).sum()
        self.stepper.backward(nll)  # a token sum: the stepper divides by the update's tokens
        return {"loss": nll.item() / max(1, int(sub.response_mask.sum()))}

    def rollout_stats(self, batch: AnswerBatch) -> dict[str, float]:
        return self.reduce_mean({"response_length": batch.rollout.response_mask.sum(1).float().mean().item()})


def check_sft_baseline(cfg, accelerator, *, held_out: bool) -> None:
    """Refuse, before any training, a baseline the run cannot give: it needs held-out data (`held_out`) and
    a second optimizer in the same process, which DeepSpeed does not allow."""
    if not cfg.sft_baseline:
        return
    if not held_out:
        raise ValueError(
            "--sft_baseline true compares on held-out data: give --eval_data_path (DPO: or --eval_prompts_path)"
        )
    if getattr(accelerator.state, "deepspeed_plugin", None) is not None or is_zero3(accelerator):
        raise ValueError(
            "--sft_baseline trains a second model in the same process, which DeepSpeed does not support: "
            "run the baseline without DeepSpeed, or set --sft_baseline false"
        )


@contextlib.contextmanager
def _trackers_paused(accelerator) -> Iterator[None]:
    """The baseline's steps stay out of the RL run's TensorBoard/W&B curves (they go to its own log)."""
    trackers, accelerator.trackers = accelerator.trackers, []
    try:
        yield
    finally:
        accelerator.trackers = trackers


def paired_comparison(rl_correct: list[bool], baseline_correct: list[bool]) -> dict[str, float | bool]:
    """RL's accuracy gain over the baseline on the same prompts, its paired standard error and the verdict.

    Per prompt d = rl - baseline in {-1, 0, 1}; gain = mean(d); stderr = std(d) / sqrt(n). RL beats the
    baseline when gain > 1.96 stderr (a paired test at about 5%); a gain inside the noise is not a win."""
    if len(rl_correct) != len(baseline_correct) or not rl_correct:
        raise ValueError(
            f"paired comparison needs equal, non-empty lists ({len(rl_correct)}, {len(baseline_correct)})"
        )
    d = torch.tensor([float(a) - float(b) for a, b in zip(rl_correct, baseline_correct)], dtype=torch.float64)
    gain = d.mean().item()
    stderr = (d.std().item() / math.sqrt(len(d))) if len(d) > 1 else float("inf")
    return {
        "baseline_accuracy_rl_minus_sft": gain,
        "baseline_accuracy_rl_minus_sft_stderr": stderr,
        "baseline_beaten": bool(gain > SIGNIFICANCE_Z * stderr),
    }


def correctness(answers: list[str], samples: list[Sample]) -> list[bool]:
    """Per prompt with a reference answer (its final assistant turn, as `tokenize_prompt` reads it): is the
    answer right, as `RLTrainer.evaluate` counts accuracy."""
    refs = [s.turns[-1].text if s.turns and s.turns[-1].role == "assistant" else None for s in samples]
    return [exact_match(a, r) for a, r in zip(answers, refs) if r is not None]


def baseline_config(cfg, accelerator):
    """The run's config with output_dir/sft_baseline as output (created), no resume and no checkpoints; the
    global RNG is reseeded with the run's seed, so the baseline starts as the run did."""
    out = Path(cfg.output_dir) / BASELINE_DIR
    if accelerator.is_main_process:
        out.mkdir(parents=True, exist_ok=True)
    torch.manual_seed(cfg.seed)
    return dataclasses.replace(cfg, output_dir=str(out), resume_from_checkpoint=None, save_steps=0)


def train_sft_on_chosen(cfg, accelerator, train_set, collate_fn) -> TrainResult:
    """DPO's compute-matched SFT baseline, trained: from the same start (`build_dpo_policy`), the same pairs in
    the same order through the same optimizer updates (the training loop with DPO's seed, batch size,
    accumulation, max_steps, optimizer, learning rate and schedule), each pair's chosen answer as the target
    (`ChosenNLL`, the term RPO adds to DPO). The rejected answers and the reference are never run. Returns
    the loop's result (its prepared model); the baseline's train_log.jsonl goes to output_dir/sft_baseline."""
    base_cfg = baseline_config(cfg, accelerator)
    model = build_dpo_policy(base_cfg)[0]
    with _trackers_paused(accelerator):
        return train(
            base_cfg, accelerator, model, train_set, collate_fn, ChosenNLL(), count_items=count_pairs
        )


def compare_with_sft_baseline(
    rl: RLTrainer, eval_prompts: list[Sample], build_policy: Callable[[], torch.nn.Module]
) -> dict:
    """Train the compute-matched SFT baseline of the trained RL run `rl` from `build_policy()` (a fresh copy
    of the same starting policy), evaluate it like the RL run and compare. Every process calls it.

    Returns metrics: baseline_eval_{accuracy,reward,kl}, the paired gain and verdict
    (`paired_comparison`), and what was matched: baseline_updates (optimizer updates: the RL run's),
    baseline_samples (answer rows, summed over processes: the RL run's train_samples) and
    baseline_seconds."""
    cfg, acc = rl.cfg, rl.accelerator
    rl_correct = correctness(rl.greedy_answers(eval_prompts), eval_prompts)
    base_cfg = baseline_config(cfg, acc)
    baseline = SFTBaselineTrainer(
        base_cfg, acc, build_policy(), rl.processor, rl.reward, rl, reference=rl.reference
    )
    with _trackers_paused(acc):
        result = baseline.train()
    scores = baseline.evaluate(eval_prompts)
    base_correct = correctness(baseline.greedy_answers(eval_prompts), eval_prompts)
    logger.info("SFT baseline: %s", scores)
    samples = acc.reduce(torch.tensor(float(baseline.rows_trained), device=acc.device), "sum").item()
    return {
        **{f"baseline_eval_{k}": v for k, v in scores.items() if k in ("accuracy", "reward", "kl")},
        **paired_comparison(rl_correct, base_correct),
        "baseline_updates": baseline.updates,
        "baseline_samples": samples,
        "baseline_seconds": round(result.train_seconds, 2),
    }
