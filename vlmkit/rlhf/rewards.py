"""Where PPO scores come from: a stage-3 reward model, or a Python function for verifiable tasks.

A reward function is named `module:function` and called with keyword arguments
`fn(completions=[str], references=[str | None], prompts=[str])`, returning one float per completion.
`digit_match` below is the one for the embedded digits: 1.0 when the answer equals the reference.
When a run names both a reward model and a function, the score is their sum.
"""

from __future__ import annotations

import importlib
from collections.abc import Callable

import torch
from torch import Tensor, nn

from vlmkit.data.records import Sample, Turn
from vlmkit.data.sft_dataset import pad_sequences
from vlmkit.data.tokenize import tokenize_sample
from vlmkit.eval.answers import exact_match
from vlmkit.rlhf.rollout import Rollout

RewardFunction = Callable[..., list[float]]


def digit_match(completions: list[str], references: list[str | None], **kwargs) -> list[float]:
    """1.0 where a completion equals its reference answer after normalisation ("Seven." == "7"), else 0.0."""
    return [float(ref is not None and exact_match(c, ref)) for c, ref in zip(completions, references)]


def load_reward_function(spec: str) -> RewardFunction:
    """Import `module:function`, e.g. `vlmkit.rlhf.rewards:digit_match`."""
    module_name, sep, attr = spec.partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"--reward_function {spec!r}: expected 'module:function'")
    try:
        module = importlib.import_module(module_name)
    except ImportError as err:
        raise ValueError(f"--reward_function {spec!r}: cannot import {module_name!r} ({err})") from err
    fn = getattr(module, attr, None)
    if not callable(fn):
        raise ValueError(f"--reward_function {spec!r}: {module_name} has no function {attr!r}")
    return fn


def prompt_text(sample: Sample) -> str:
    """The prompt of a sample (every turn before its reference answer) as plain text."""
    turns = sample.turns[:-1] if sample.turns and sample.turns[-1].role == "assistant" else sample.turns
    return "\n".join(t.text for t in turns)


class FunctionReward:
    """Scores rollouts with a Python function of their decoded text."""

    def __init__(self, fn: RewardFunction, name: str = "function"):
        self.fn, self.name = fn, name

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> Tensor:
        """(B,) float32 scores on the rollout's device."""
        scores = self.fn(
            completions=rollout.texts,
            references=rollout.references,
            prompts=[prompt_text(s) for s in rollout.samples],
        )
        if len(scores) != len(rollout):
            raise ValueError(
                f"reward function {self.name} returned {len(scores)} scores for {len(rollout)} completions"
            )
        return torch.tensor([float(s) for s in scores], dtype=torch.float32, device=rollout.query_ids.device)


class ModelReward:
    """Scores rollouts with a reward model, which sees the prompt, its media and the decoded response.

    The response is re-tokenized with the reward model's own processor and chat template (right-padded,
    as the reward model was trained), so policy and reward model need not share a tokenizer.
    """

    def __init__(self, model: nn.Module, processor):
        self.model, self.processor = model, processor

    def encode(self, rollout: Rollout) -> dict[str, Tensor | None]:
        """Right-padded (B, L) input_ids / attention_mask and media for the reward model."""
        spec = self.processor.spec
        ids = []
        for sample, text in zip(rollout.samples, rollout.texts):
            prompt_turns = sample.turns[:-1] if sample.turns[-1].role == "assistant" else sample.turns
            conversation = Sample(
                list(prompt_turns) + [Turn("assistant", text)], sample.images, sample.audios,
                sample.source, sample.index,
            )  # fmt: skip
            tokenized = tokenize_sample(
                conversation, self.processor.tokenizer, modality=spec.modality,
                num_media_tokens=spec.num_media_tokens, max_length=10**9,
            )  # fmt: skip
            ids.append(torch.tensor(tokenized.input_ids))
        device = rollout.query_ids.device
        input_ids = pad_sequences(ids, self.processor.tokenizer.pad_token_id).to(device)
        attention_mask = pad_sequences([torch.ones_like(i) for i in ids], 0).to(device)
        media = self.processor.process_media(rollout.media_items)
        if media is not None:
            media = media.to(device)
        return {"input_ids": input_ids, "attention_mask": attention_mask, "media": media}

    @torch.no_grad()
    def __call__(self, rollout: Rollout) -> Tensor:
        """(B,) float32 scores."""
        inputs = self.encode(rollout)
        return self.model(inputs["input_ids"], inputs["attention_mask"], inputs["media"]).float()


class SumReward:
    """The sum of several reward sources' scores."""

    def __init__(self, sources: list):
        self.sources = sources

    def __call__(self, rollout: Rollout) -> Tensor:
        return torch.stack([source(rollout) for source in self.sources]).sum(0)


def build_reward(cfg, prepare: Callable[[nn.Module], nn.Module] = lambda m: m):
    """The reward of a PPO config: its reward model (made ready by `prepare`), its function, or their sum."""
    sources = []
    if cfg.reward_model_name_or_path:
        from vlmkit.rlhf.reward_model import load_reward_model

        model, processor = load_reward_model(cfg.reward_model_name_or_path)
        sources.append(ModelReward(prepare(model), processor))
    if cfg.reward_function:
        sources.append(FunctionReward(load_reward_function(cfg.reward_function), cfg.reward_function))
    if not sources:
        raise ValueError("no reward: give --reward_model_name_or_path and/or --reward_function")
    return sources[0] if len(sources) == 1 else SumReward(sources)
