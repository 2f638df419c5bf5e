"""RL rollouts of native transformers VLMs (`AutoModelForImageTextToText`): prompts through the model's own
processor, generation with the KV cache, and the inputs of the log-prob forward passes.

`NativeRL` (vlmkit.rlhf.rl_kinds) calls these, so the RL trainers never branch on the model kind. A
native rollout is the same `Rollout` as the composite model's, with `native` holding each row's processor
outputs (`pixel_values`, `image_grid_thw`, `image_sizes`, `token_type_ids`...) in place of `media`. The
never-sampled tokens are the processor's media tokens (image token, vision start/end...): a response holding
one could not be fed back through the model. Shapes as in `vlmkit.rlhf.rollout`.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from vlmkit.data.prompts import left_padded_batch
from vlmkit.data.records import Sample
from vlmkit.data.sft_dataset import load_media_item
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import SEQUENCE_KEYS, NativeEncoder
from vlmkit.rlhf.rollout import Rollout, sampling_logprobs, truncate_after_eos

# What response tokens carry in per-token keys: PaliGemma's suffix is causal (1); image markers are 0.
RESPONSE_TOKEN_TYPE = {"paligemma": 1}


@dataclass
class NativePrompts:
    """Each row's processor outputs for its prompt (batch dimension 1, on the CPU) and what sampling needs."""

    inputs: list[dict]
    model_type: str
    pad_token_id: int
    stop_token_ids: list[int]  # a response ends at the first of these (kept)
    never_sampled: list[int]  # media tokens: excluded from sampling and from every log-prob

    def select(self, rows: list[int]) -> NativePrompts:
        return NativePrompts([self.inputs[r] for r in rows], self.model_type, self.pad_token_id,
                             self.stop_token_ids, self.never_sampled)  # fmt: skip

    def media_inputs(self, prompt_length: int, response_length: int, device) -> dict[str, Tensor]:
        """The processor inputs besides input_ids/attention_mask for prompt + response (B, P+T): media keys
        merged as `NativeCollator` does, per-token keys (token types) left-padded to P and extended over T."""
        batch = NativeCollator(self.pad_token_id, self.model_type, left_pad=True)(self.inputs)
        out = {}
        for key, value in batch.items():
            if key in ("input_ids", "attention_mask"):
                continue
            if key in SEQUENCE_KEYS:
                fill = RESPONSE_TOKEN_TYPE.get(self.model_type, 0)
                left = value.new_zeros((value.shape[0], prompt_length - value.shape[1]))
                right = value.new_full((value.shape[0], response_length), fill)
                value = torch.cat([left, value, right], dim=1)
            out[key] = value.to(device)
        return out


def stop_token_ids(model: nn.Module, encoder: NativeEncoder) -> list[int]:
    """The end-of-turn token and the generation config's EOS ids."""
    eos = getattr(getattr(model, "generation_config", None), "eos_token_id", None)
    eos = [eos] if isinstance(eos, int) else list(eos or [])
    return sorted({encoder.end_of_turn_id, *eos} - {None})


def native_prompt_batch(
    samples: list[Sample], encoder: NativeEncoder, device, stop_ids: list[int]
) -> Rollout:
    """Prompts (chat template + generation prompt) through the processor, left-padded; responses empty."""
    unique = {id(s): s for s in samples}  # GRPO repeats each prompt num_generations times: encode it once
    once = {key: encoder.encode_prompt(s) for key, s in unique.items()}
    prepared = [once[id(s)] for s in samples]
    inputs = [p for p, _ in prepared]
    ids, mask = left_padded_batch([p["input_ids"][0].tolist() for p in inputs], encoder.tokenizer.pad_token_id,
                                  device)  # fmt: skip
    native = NativePrompts(inputs, encoder.model_type, encoder.tokenizer.pad_token_id, stop_ids,
                           sorted(encoder.media_token_ids))  # fmt: skip
    # The decoded images too, in row order: a reward model with its own processor (a composite one) reads them.
    images = {key: [load_media_item(m, modality="image", source=s.source, index=s.index) for m in s.images]
              for key, s in unique.items()}  # fmt: skip
    empty = torch.zeros(len(samples), 0, dtype=torch.long, device=device)
    return Rollout(
        ids, mask, empty, empty.bool(), torch.zeros(len(samples), dtype=torch.bool, device=device), None,
        [len(s.images) for s in samples], [m for s in samples for m in images[id(s)]], list(samples),
        [ref for _, ref in prepared], native=native,
    )  # fmt: skip


@torch.no_grad()
def native_generate_rollout(
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
    """`vlmkit.rlhf.rollout.generate_rollout` for a native VLM (or its PeftModel): one response per prompt,
    sampled from softmax(logits / temperature) (top-k off, nucleus when top_p < 1), media tokens never sampled."""
    native = batch.native
    switch = model.training and eval_mode
    if switch:
        model.eval()
    prompt = {
        k: v for k, v in batch.model_inputs().items() if k not in ("position_ids", "media", "media_features")
    }
    generated = model.generate(
        **prompt, max_new_tokens=max_new_tokens, do_sample=do_sample,
        temperature=temperature if do_sample else None, top_p=top_p if do_sample else None,
        top_k=0 if do_sample else None, suppress_tokens=native.never_sampled,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=native.stop_token_ids,
        return_dict_in_generate=True, output_logits=return_logprobs,
    )  # fmt: skip
    if switch:
        model.train()
    new_tokens = generated.sequences[:, batch.query_ids.shape[1] :]
    tokens, mask, has_eos = truncate_after_eos(new_tokens, native.stop_token_ids, tokenizer.pad_token_id)
    texts = [t.strip() for t in tokenizer.batch_decode(tokens, skip_special_tokens=True)]
    rollout = Rollout(
        batch.query_ids, batch.query_mask, tokens, mask, has_eos, None, batch.media_counts, batch.media_items,
        batch.samples, batch.references, texts, native=native,
    )  # fmt: skip
    if return_logprobs:
        scale = temperature if do_sample else 1.0
        rollout.logprobs = sampling_logprobs(torch.stack(generated.logits, dim=1) / scale, rollout,
                                             native.never_sampled)  # fmt: skip
    return rollout


def native_reward_inputs(
    encoder: NativeEncoder, conversations: list[Sample], rollout: Rollout, device
) -> dict:
    """A native reward model's inputs: each conversation (prompt + decoded response) through its processor,
    right-padded, media merged (`NativeCollator`)."""
    items = []
    for conversation in conversations:
        encoded = encoder.encode(conversation)
        encoded.pop("labels")
        items.append(encoded)
    batch = NativeCollator(encoder.tokenizer.pad_token_id, encoder.model_type)(items)
    return {key: value.to(device) for key, value in batch.items()}
