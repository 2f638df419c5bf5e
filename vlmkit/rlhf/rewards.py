"""Where RL scores come from: a stage-3 reward model and/or verifiable Python functions, weighted and summed.

A reward function is a registered name (`vlmkit.rlhf.verifiable.REWARD_FUNCTIONS`: exact_answer, digit_match,
choice_letter, numeric_match, think_answer_format) or `module:function`, called with keyword arguments
`fn(completions=[str], references=[str | None], prompts=[str])` and returning one float per completion.
`RewardSet` sums the weighted sources and keeps each one's scores for the logs. A source that raises or
returns a non-finite score for a sample is an error naming the source and the sample, or with
`on_bad_reward="skip"` a zero for that sample, counted.
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vlmkit.data.records import Sample, Turn
from vlmkit.data.sft_dataset import pad_sequences
from vlmkit.data.tokenize import tokenize_sample
from vlmkit.rlhf.rollout import Rollout
from vlmkit.rlhf.verifiable import REWARD_FUNCTIONS, RewardFunction, digit_match, resolve_reward_function

__all__ = ["REWARD_FUNCTIONS", "RewardFunction", "digit_match", "load_reward_function"]
ON_BAD_REWARD = ("error", "skip")


def load_reward_function(spec: str) -> RewardFunction:
    """A reward function by registered name or `module:function`, e.g. `vlmkit.rlhf.rewards:digit_match`."""
    return resolve_reward_function(spec)


def prompt_text(sample: Sample) -> str:
    """The prompt of a sample (every turn before its reference answer) as plain text."""
    turns = sample.turns[:-1] if sample.turns and sample.turns[-1].role == "assistant" else sample.turns
    return "\n".join(t.text for t in turns)


class FunctionReward:
    """Scores rollouts with a Python function of their decoded text.

    When the function raises on a batch it is called again sample by sample, so the failing samples can be
    named; their scores are NaN and `last_errors` maps their rows to the error.
    """

    def __init__(self, fn: RewardFunction, name: str = "function"):
        self.fn, self.name = fn, name
        self.last_errors: dict[int, str] = {}

    def _scores(self, completions: list[str], references: list, prompts: list[str]) -> list[float]:
        scores = self.fn(completions=completions, references=references, prompts=prompts)
        if len(scores) != len(completions):
            raise ValueError(
                f"reward function {self.name} returned {len(scores)} scores for {len(completions)} completions"
            )
        return [float(s) for s in scores]

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> Tensor:
        """(B,) float32 scores on the rollout's device."""
        prompts = [prompt_text(s) for s in rollout.samples]
        self.last_errors = {}
        try:
            scores = self.fn(completions=rollout.texts, references=rollout.references, prompts=prompts)
        except Exception:  # noqa: BLE001 - called again per sample to name the ones it fails on
            scores = [self._one(rollout, prompts, row) for row in range(len(rollout))]
        if len(scores) != len(rollout):
            raise ValueError(
                f"reward function {self.name} returned {len(scores)} scores for {len(rollout)} completions"
            )
        return torch.tensor([float(s) for s in scores], dtype=torch.float32, device=rollout.query_ids.device)

    def _one(self, rollout: Rollout, prompts: list[str], row: int) -> float:
        try:
            (score,) = self.fn(
                completions=[rollout.texts[row]], references=[rollout.references[row]], prompts=[prompts[row]]
            )
            return float(score)
        except Exception as err:  # noqa: BLE001 - reported with the sample by RewardSet
            self.last_errors[row] = f"{type(err).__name__}: {err}"
            return math.nan


class ModelReward:
    """Scores rollouts with a reward model, which sees the prompt, its media and the decoded response.

    The response is re-tokenized with the reward model's own processor and chat template (right-padded,
    as the reward model was trained), so policy and reward model need not share a tokenizer. The reward
    model's kind (composite or native, `vlmkit.rlhf.rl_kinds`) prepares its inputs.
    """

    def __init__(self, model: nn.Module, processor):
        from vlmkit.rlhf.rl_kinds import rl_kind_of_model

        self.model, self.processor = model, processor
        self.kind = rl_kind_of_model(getattr(model, "module", model))  # a ZeRO-3 engine holds it as `module`

    def encode(self, rollout: Rollout) -> dict[str, Tensor | None]:
        """Right-padded (B, L) input_ids / attention_mask and the media inputs of the reward model."""
        return self.kind.reward_inputs(
            self.processor, scored_conversations(rollout), rollout, rollout.query_ids.device
        )

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> Tensor:
        """(B,) float32 scores."""
        return self.model(**self.encode(rollout)).float()


def scored_conversations(rollout: Rollout) -> list[Sample]:
    """Each rollout row's prompt turns followed by its decoded response as the assistant turn."""
    out = []
    for sample, text in zip(rollout.samples, rollout.texts):
        prompt_turns = sample.turns[:-1] if sample.turns[-1].role == "assistant" else sample.turns
        out.append(Sample(list(prompt_turns) + [Turn("assistant", text)], sample.images, sample.audios,
                          sample.source, sample.index))  # fmt: skip
    return out


def composite_reward_inputs(processor, conversations: list[Sample], rollout: Rollout, device) -> dict:
    """A composite reward model's inputs: conversations tokenized with its `VLMProcessor`, the rollout's
    decoded media processed by it."""
    spec = processor.spec
    ids = []
    for conversation in conversations:
        tokenized = tokenize_sample(
            conversation, processor.tokenizer, modality=spec.modality,
            num_media_tokens=spec.num_media_tokens, max_length=10**9,
        )  # fmt: skip
        ids.append(torch.tensor(tokenized.input_ids))
    input_ids = pad_sequences(ids, processor.tokenizer.pad_token_id).to(device)
    attention_mask = pad_sequences([torch.ones_like(i) for i in ids], 0).to(device)
    media = processor.process_media(rollout.media_items)
    if media is not None:
        media = media.to(device)
    return {"input_ids": input_ids, "attention_mask": attention_mask, "media": media}


class RewardSet:
    """The weighted sum of reward sources, each one's scores checked per sample and kept for the logs.

    sources: (name, weight, source) with source(rollout) -> (B,) scores. After a call, `last_scores` holds
    each source's (B,) scores and `bad_rewards` counts, per source, the samples zeroed under skip.
    """

    def __init__(
        self, sources: list[tuple[str, float, Callable[[Rollout], Tensor]]], on_bad_reward: str = "error"
    ):
        if on_bad_reward not in ON_BAD_REWARD:
            raise ValueError(f"on_bad_reward={on_bad_reward!r}; valid: {', '.join(ON_BAD_REWARD)}")
        if not sources:
            raise ValueError("no reward: give --reward_model_name_or_path and/or --reward_funcs")
        self.sources, self.on_bad_reward = sources, on_bad_reward
        self.bad_rewards = {name: 0 for name, _, _ in sources}
        self.last_scores: dict[str, Tensor] = {}

    def __call__(self, rollout: Rollout) -> Tensor:
        """(B,) float32 weighted sum of the sources' scores."""
        total = None
        for name, weight, source in self.sources:
            scores = self._checked(name, source, rollout)
            self.last_scores[name] = scores
            total = weight * scores if total is None else total + weight * scores
        return total

    def _checked(self, name: str, source, rollout: Rollout) -> Tensor:
        scores = source(rollout).float()
        bad = (~torch.isfinite(scores)).nonzero().flatten().tolist()
        if not bad:
            return scores
        if self.on_bad_reward == "error":
            row = bad[0]
            sample = rollout.samples[row]
            why = getattr(source, "last_errors", {}).get(row, f"score {scores[row].item()}")
            raise ValueError(
                f"reward {name!r} failed on {sample.source} record {sample.index} ({why}); "
                f"fix the reward or pass --on_bad_reward skip to score such samples 0 (counted)"
            )
        self.bad_rewards[name] += len(bad)
        return torch.nan_to_num(scores, nan=0.0, posinf=0.0, neginf=0.0)

    def stats(self) -> dict[str, float]:
        """Each source's mean score of the last call and its count of zeroed samples so far."""
        out = {f"reward_{name}": float(s.mean()) for name, s in self.last_scores.items()}
        out.update({f"bad_reward_{name}": float(n) for name, n in self.bad_rewards.items()})
        return out


def build_reward(cfg, prepare: Callable[[nn.Module], nn.Module] = lambda m: m) -> RewardSet:
    """The reward of an RL config: its reward model (made ready by `prepare`) and its reward functions.

    `cfg.reward_weights` gives one weight per source in that order (reward model first), default all 1.
    """
    sources: list[tuple[str, Callable]] = []
    if cfg.reward_model_name_or_path:
        from vlmkit.rlhf.reward_model import load_reward_model

        model, processor = load_reward_model(cfg.reward_model_name_or_path)
        sources.append(("reward_model", ModelReward(prepare(model), processor)))
    for spec in cfg.reward_funcs:
        name = spec.rpartition(":")[2]
        sources.append((name, FunctionReward(load_reward_function(spec), name)))
    weights = list(cfg.reward_weights) or [1.0] * len(sources)
    if len(weights) != len(sources):
        names = [name for name, _ in sources]
        raise ValueError(f"reward_weights has {len(weights)} values for {len(sources)} rewards {names}")
    return RewardSet([(n, w, s) for (n, s), w in zip(sources, weights)], cfg.on_bad_reward)
