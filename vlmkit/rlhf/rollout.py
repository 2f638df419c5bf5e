"""PPO rollouts: prompts (with their images or audio) in, sampled responses out, then log-probs of them.

Generation is batched, left-padded and uses the KV cache (`VLM.generate`). A response ends at its first
EOS (kept, so the policy learns to stop); everything after it becomes right padding. Shapes: B rollouts,
P prompt tokens (left-padded), T response tokens (right-padded), V vocabulary.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Protocol

import torch
from torch import Tensor, nn

from vlmkit.data.prompts import left_padded_batch, prepare_prompts
from vlmkit.data.records import Sample
from vlmkit.models.encoders import encode
from vlmkit.rlhf.ppo_math import logprobs_from_logits
from vlmkit.rlhf.shared_prefix import SharedPrompts, can_share, prefilled_cache, shared_prompts

if TYPE_CHECKING:
    from vlmkit.rlhf.native_rollout import NativePrompts

# A logit no token can be sampled at (softmax gives exactly 0) that still keeps p * log p finite (= 0).
SUPPRESSED_LOGIT = -1e9


@dataclass
class Rollout:
    """Prompts and sampled responses of one batch.

    query_ids, query_mask: (B, P) left-padded prompts. response_ids, response_mask: (B, T) right-padded
    responses (mask true up to and including the first EOS). media: (n, ...) processed media of all rows
    in order, `media_counts[b]` items for row b; media_items: the same media decoded (PIL images or float
    arrays), so a reward model with its own media processor can prepare them. media_features: (n, N, D_enc)
    outputs of the policy's frozen encoder, computed once per rollout and reused by every later forward
    pass of the policy and the reference (None when the encoder trains). has_eos: (B,) bool. native: a native
    transformers VLM's per-row processor outputs (`vlmkit.rlhf.native_rollout`), which replace `media`.
    """

    query_ids: Tensor
    query_mask: Tensor
    response_ids: Tensor
    response_mask: Tensor
    has_eos: Tensor
    media: Tensor | None
    media_counts: list[int]
    media_items: list
    samples: list[Sample]
    references: list[str | None]
    texts: list[str] = field(default_factory=list)
    media_features: Tensor | None = None
    logprobs: Tensor | None = None  # (B, T) sampling log-probs, when the engine was asked for them
    native: NativePrompts | None = None

    def __len__(self) -> int:
        return self.query_ids.shape[0]

    def select(self, rows: list[int]) -> Rollout:
        """The sub-rollout of `rows` (for PPO mini-batches); media rows follow their prompts."""
        starts = [0]
        for n in self.media_counts:
            starts.append(starts[-1] + n)
        picks = [i for r in rows for i in range(starts[r], starts[r + 1])]
        media = features = None
        if self.media is not None:
            media = self.media[torch.tensor(picks, dtype=torch.long, device=self.media.device)]
        if self.media_features is not None:
            features = self.media_features[torch.tensor(picks, dtype=torch.long, device=self.media.device)]
        return Rollout(
            self.query_ids[rows], self.query_mask[rows], self.response_ids[rows], self.response_mask[rows],
            self.has_eos[rows], media, [self.media_counts[r] for r in rows],
            [self.media_items[i] for i in picks] if self.media_items else [],
            [self.samples[r] for r in rows], [self.references[r] for r in rows],
            [self.texts[r] for r in rows] if self.texts else [], features,
            self.logprobs[rows] if self.logprobs is not None else None,
            self.native.select(rows) if self.native is not None else None,
        )  # fmt: skip

    @property
    def logits_to_keep(self) -> int:
        """Positions whose logits a log-prob pass needs: the last T + 1 (transformers' `logits_to_keep`), so
        the LM head skips the prompt."""
        return self.response_ids.shape[1] + 1

    def shared_prompts(self) -> SharedPrompts | None:
        """The rows that repeat a prompt (GRPO's groups), whose prompt a composite VLM computes once
        (`vlmkit.rlhf.shared_prefix`); None when every prompt is distinct, and for a native VLM."""
        if self.native is not None:
            return None
        return shared_prompts(self.samples, self.media_counts, self.query_ids.shape[1], self.query_ids.device)

    def model_inputs(self) -> dict[str, Tensor | None]:
        """Prompt + response as one sequence (B, P+T): input_ids, attention_mask, position_ids, media and
        media_features (the cached encoder outputs, or None); for the composite VLM shared_prompts (see
        `shared_prompts()`), for a native VLM its processor's media inputs (pixel_values, image_grid_thw...).

        Position ids count real tokens only (cumsum of the mask), exactly as `generate` numbered them.
        """
        input_ids = torch.cat([self.query_ids, self.response_ids], dim=1)
        attention_mask = torch.cat([self.query_mask.long(), self.response_mask.long()], dim=1)
        position_ids = (attention_mask.cumsum(-1) - 1).clamp(min=0)
        if self.native is not None:
            extra = self.native.media_inputs(
                self.query_ids.shape[1], self.response_ids.shape[1], input_ids.device
            )
        else:
            extra = {"shared_prompts": self.shared_prompts()}
        return {
            "input_ids": input_ids,
            "attention_mask": attention_mask,
            "position_ids": position_ids,
            "media": self.media,
            "media_features": self.media_features,
            **extra,
        }


def make_prompt_batch(samples: list[Sample], processor, device) -> Rollout:
    """Tokenize prompts (chat template + generation prompt), decode their media; responses still empty."""
    # GRPO repeats each prompt (the same Sample) num_generations times: tokenize and process it once.
    unique = {id(s): s for s in samples}
    once = dict(zip(unique, prepare_prompts(list(unique.values()), processor)))
    prepared = [once[id(s)] for s in samples]
    ids, mask = left_padded_batch([p[0] for p in prepared], processor.tokenizer.pad_token_id, device)
    items = [m for p in prepared for m in p[2]]
    media = None
    if items:
        processed = processor.process_media([m for p in once.values() for m in p[2]])
        first, starts = 0, {}
        for key, p in once.items():
            starts[key], first = first, first + len(p[2])
        rows = [starts[id(s)] + j for s, p in zip(samples, prepared) for j in range(len(p[2]))]
        media = processed[torch.tensor(rows, dtype=torch.long)] if len(rows) != len(processed) else processed
    empty = torch.zeros(len(samples), 0, dtype=torch.long, device=device)
    return Rollout(
        ids, mask, empty, empty.bool(), torch.zeros(len(samples), dtype=torch.bool, device=device),
        media.to(device) if media is not None else None, [len(p[2]) for p in prepared], items,
        list(samples), [p[1] for p in prepared],
    )  # fmt: skip


def truncate_after_eos(
    tokens: Tensor, eos_token_id: int | list[int], pad_token_id: int
) -> tuple[Tensor, Tensor, Tensor]:
    """Cut generated tokens (B, T) after their first EOS (the first of several, given a list).

    Returns (tokens with pad after the first EOS (B, T), mask (B, T) true up to and including the first EOS,
    or everywhere if there is none, has_eos (B,)).
    """
    is_eos = torch.isin(tokens, torch.tensor(eos_token_id, device=tokens.device).reshape(-1))
    has_eos = is_eos.any(dim=1)
    positions = torch.arange(tokens.shape[1], device=tokens.device).expand_as(tokens)
    first = torch.where(is_eos, positions, tokens.shape[1]).min(dim=1).values
    mask = positions <= first.unsqueeze(1)
    return tokens.masked_fill(~mask, pad_token_id), mask, has_eos


@torch.no_grad()
def generate_rollout(
    model: nn.Module,
    batch: Rollout,
    tokenizer,
    *,
    max_new_tokens: int,
    temperature: float = 1.0,
    top_p: float = 1.0,
    do_sample: bool = True,
    return_logprobs: bool = False,
    eval_mode: bool = True,
) -> Rollout:
    """Sample one response per prompt of `batch` with `model` (a bare VLM) and the KV cache.

    `eval_mode`: generate in eval mode (restoring train mode after). A caller whose model behaves the same in
    both modes (dropout off, frozen encoder) passes False: in transformers 5 every train()/eval() call
    re-kernelizes each PreTrainedModel inside, a cost paid twice per rollout otherwise.

    Sampling is from softmax(logits / temperature) (top-k off; nucleus when top_p < 1); the media
    placeholder token is never generated (it would be read as an image or clip in later forward passes).
    A frozen encoder runs once here, once per distinct media item; its features travel with the rollout.
    Rows that repeat a prompt share its prefill (`vlmkit.rlhf.shared_prefix`). `return_logprobs` keeps the
    sampling log-probs of the response tokens (the trainer recomputes them; they are for checks and for
    engines that return them for free), at the cost of holding (B, T, V) logits.
    """
    switch = model.training and eval_mode
    if switch:
        model.eval()
    features, shared = batch.media_features, batch.shared_prompts()
    if (
        features is None
        and batch.media is not None
        and not any(p.requires_grad for p in model.encoder.parameters())
    ):  # each distinct media item once
        media = batch.media if shared is None else batch.media[shared.media_rows]
        features = encode(model.encoder, media, model.config.feature_layer, model.config.drop_cls_token)
        features = features if shared is None else features[shared.media_index]
    inputs = {**batch.model_inputs(), "media_features": features, "shared_prompts": shared}
    cache = prefilled_cache(model, inputs) if can_share(model, inputs, 1, False) else {}
    generated = model.generate(
        batch.query_ids, batch.query_mask, None if features is not None else batch.media, features,
        max_new_tokens=max_new_tokens, do_sample=do_sample, temperature=temperature if do_sample else None,
        top_p=top_p if do_sample else None, top_k=0 if do_sample else None,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        return_dict_in_generate=return_logprobs, output_logits=return_logprobs, **cache,
    )  # fmt: skip
    if switch:
        model.train()
    raw_logits = None
    if return_logprobs:
        generated, raw_logits = generated.sequences, torch.stack(generated.logits, dim=1)
    tokens, mask, has_eos = truncate_after_eos(generated, tokenizer.eos_token_id, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    rollout = Rollout(
        batch.query_ids, batch.query_mask, tokens, mask, has_eos, batch.media, batch.media_counts,
        batch.media_items, batch.samples, batch.references, texts, features,
    )  # fmt: skip
    if raw_logits is not None:
        scale = temperature if do_sample else 1.0
        rollout.logprobs = sampling_logprobs(raw_logits / scale, rollout, model.config.media_token_id)
    return rollout


class RolloutEngine(Protocol):
    """What generates an RL rollout: `engine(policy, batch, tokenizer, **sampling) -> Rollout`.

    `HFGenerate` (transformers' `generate` with the KV cache) is the default and the reference: the trainer
    recomputes every log-prob with a forward pass, and `return_logprobs` lets a test compare the two. A
    faster engine (e.g. vLLM, colocated on the GPU) plugs in by implementing this call; it must sample from
    the same distribution (temperature, top-p, media placeholder excluded) and return the same Rollout.
    """

    def __call__(self, policy: nn.Module, batch: Rollout, tokenizer, **sampling) -> Rollout: ...


def hf_generate(policy: nn.Module, batch: Rollout, tokenizer, **sampling) -> Rollout:
    """The default RolloutEngine: the policy kind's `generate_rollout` (this module's for the composite model,
    `native_rollout.native_generate_rollout` for a native transformers VLM)."""
    from vlmkit.rlhf.rl_kinds import rl_kind_of_model

    return rl_kind_of_model(policy).generate_rollout(policy, batch, tokenizer, **sampling)


def rollout_engine(use_vllm: bool = False) -> RolloutEngine:
    """The engine a config asks for: `hf_generate`. No vLLM engine ships: vLLM's wheel is CUDA-only and pins
    its own torch and transformers (0.34: torch 2.14, transformers < 5.23), so it could not be installed or tested
    where vlmkit is built (CPU, torch 2.13, transformers 5.24); `use_vllm` is refused rather than silently ignored."""
    if use_vllm:
        raise ValueError(
            "use_vllm: vlmkit ships no vLLM rollout engine yet (vLLM could not be installed or tested on the "
            "CPU-only machines vlmkit is built and tested on); leave use_vllm false to generate with "
            "transformers' generate, or set the trainer's `engine` to your own vlmkit.rlhf.rollout.RolloutEngine"
        )
    return hf_generate


def sampling_logprobs(
    logits: Tensor, rollout: Rollout, suppressed_token_id: int | list[int] | None
) -> Tensor:
    """(B, T) log-probs of the response tokens under (B, T, V) `logits` already divided by the temperature,
    with the never-sampled media placeholder excluded, as the sampler saw them."""
    logits = logits.float()
    if suppressed_token_id is not None:
        logits = logits.clone()
        logits[..., suppressed_token_id] = SUPPRESSED_LOGIT
    labels = rollout.response_ids.masked_fill(~rollout.response_mask.bool(), -100)
    return logprobs_from_logits(logits, labels)


def response_slice(prompt_length: int, response_length: int) -> slice:
    """Positions whose outputs predict the response tokens: P-1 .. P+T-2 of the joint sequence."""
    return slice(prompt_length - 1, prompt_length + response_length - 1)


def response_logprobs(
    logits: Tensor,
    rollout: Rollout,
    temperature: float = 1.0,
    suppressed_token_id: int | list[int] | None = None,
) -> tuple[Tensor, Tensor]:
    """Log-probs (B, T) of the sampled response tokens and the response logits (B, T, V), both / temperature.

    `logits` (B, P+T, V) come from a forward pass over `rollout.model_inputs()`, or (B, T+1, V) from one with
    `logits_to_keep=rollout.logits_to_keep`. With `suppressed_token_id` (the media placeholder, which
    generation never samples) that token is excluded, so the log-probs are those of the distribution the
    responses were sampled from.
    """
    prompt, response = rollout.query_ids.shape[1], rollout.response_ids.shape[1]
    if logits.shape[1] == response + 1:
        window = slice(0, response)
    elif logits.shape[1] == prompt + response:
        window = response_slice(prompt, response)
    else:
        raise ValueError(
            f"logits cover {logits.shape[1]} positions; expected {prompt + response} (prompt + response) or "
            f"{response + 1} (logits_to_keep)"
        )
    response_logits = logits[:, window].float() / temperature
    if suppressed_token_id is not None:
        response_logits[..., suppressed_token_id] = SUPPRESSED_LOGIT
    labels = rollout.response_ids.masked_fill(~rollout.response_mask.bool(), -100)
    return logprobs_from_logits(response_logits, labels), response_logits


@contextlib.contextmanager
def unwrapped_for_generation(
    model: nn.Module, accelerator, bare: nn.Module | None = None
) -> Iterator[nn.Module]:
    """The bare module of a prepared model (or `bare`, when the caller already unwrapped it), for `generate`.

    Under DeepSpeed ZeRO-3 the parameters are gathered on every rank while the block runs, so that
    token-by-token generation does not all-gather every layer at every step (a collective: all ranks call it).
    """
    unwrapped = bare if bare is not None else accelerator.unwrap_model(model)
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    if plugin is not None and plugin.zero_stage == 3:
        import deepspeed

        with deepspeed.zero.GatheredParameters(list(model.parameters())):
            yield unwrapped
    else:
        yield unwrapped
