"""The RL part of the model interface: what PPO and GRPO do with a policy, whatever its kind.

`CompositeRL` and `NativeRL` are the training kinds of `vlmkit.training.vlm_kinds` (build, set_trainable, data,
load...) with the RL methods added, so that the training layer never imports the RL one:

    kind = rl_kind(cfg)                                            # in a recipe
    kind = rl_kind_of_model(policy)                                # as the RL trainers ask it
    batch = kind.prompt_batch(samples, processor, device, policy) # prompts -> Rollout (responses empty)
    rollout = kind.generate_rollout(policy, batch, tokenizer, max_new_tokens=..., temperature=...)
    logits = kind.policy_forward(policy, rollout.model_inputs(), logits_to_keep=...).logits
    kind.never_sampled(policy, processor)  # tokens generation never samples (excluded from log-probs)
    kind.stop_token_ids(policy, processor) # what ends a response
    with kind.adapters_disabled(policy): ...   # the LoRA reference: no second copy of the weights
    kind.reward_inputs(...), kind.critic_values(...), kind.load_critic(...)  # reward model and critic

The composite model runs through `vlmkit.rlhf.rollout`; a native transformers VLM through
`vlmkit.rlhf.native_rollout` (its processor's media inputs: pixel_values, image_grid_thw, ...).
"""

from __future__ import annotations

import logging
from pathlib import Path
from typing import Protocol

from torch import nn

from vlmkit.models.build import build_vlm
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_vlm
from vlmkit.training.native_parts import apply_native_lora
from vlmkit.training.vlm_kinds import NATIVE, CompositeKind, NativeKind, VLMKind, kind_of_model, kind_of_path

logger = logging.getLogger(__name__)


class RLKind(VLMKind, Protocol):
    """The RL methods of a model kind (see the module docstring)."""

    def build_reference(self, cfg) -> nn.Module: ...

    def is_peft(self, policy: nn.Module) -> bool: ...

    def adapters_disabled(self, policy: nn.Module): ...

    def never_sampled(self, policy: nn.Module, processor) -> int | list[int]: ...

    def stop_token_ids(self, policy: nn.Module, processor) -> int | list[int]: ...

    def same_in_train_and_eval(self, policy: nn.Module) -> bool: ...

    def hidden_size(self, policy: nn.Module) -> int: ...

    def prompt_batch(self, samples, processor, device, policy: nn.Module): ...

    def generate_rollout(self, policy: nn.Module, batch, tokenizer, **sampling): ...

    def policy_forward(self, policy: nn.Module, inputs: dict, *, logits_to_keep: int = 0,
                       output_hidden_states: bool = False): ...  # fmt: skip

    def reward_inputs(self, processor, conversations, rollout, device) -> dict: ...

    def critic_values(self, critic: nn.Module, inputs: dict): ...

    def load_critic(self, path: str, lora=None) -> nn.Module: ...


class CompositeRL(CompositeKind):
    """RL with vlmkit's composite VLM."""

    def build_reference(self, cfg) -> nn.Module:
        """The starting policy once more, frozen (a ZeRO-3 reference cannot be a copy)."""
        return build_vlm(cfg, None, is_trainable=False)[0]

    def is_peft(self, policy: nn.Module) -> bool:
        return policy.is_peft

    def adapters_disabled(self, policy: nn.Module):
        """Context in which a LoRA policy computes its starting weights' outputs."""
        return policy.language_model.disable_adapter()

    def never_sampled(self, policy: nn.Module, processor) -> int:
        """The media placeholder (`VLM.generate` never samples it)."""
        return policy.config.media_token_id

    def stop_token_ids(self, policy: nn.Module, processor) -> int:
        """What ends a response: the tokenizer's EOS."""
        return processor.tokenizer.eos_token_id

    def same_in_train_and_eval(self, policy: nn.Module) -> bool:
        from vlmkit.rlhf.rl_trainer import same_in_train_and_eval

        return same_in_train_and_eval(policy)

    def hidden_size(self, policy: nn.Module) -> int:
        return policy.language_model.get_input_embeddings().embedding_dim

    def prompt_batch(self, samples, processor, device, policy: nn.Module):
        from vlmkit.rlhf.rollout import make_prompt_batch

        return make_prompt_batch(samples, processor, device)

    def generate_rollout(self, policy: nn.Module, batch, tokenizer, **sampling):
        from vlmkit.rlhf.rollout import generate_rollout

        return generate_rollout(policy, batch, tokenizer, **sampling)

    def reward_inputs(self, processor, conversations, rollout, device) -> dict:
        """A reward model's inputs for `conversations` (prompts + decoded responses of `rollout`)."""
        from vlmkit.rlhf.rewards import composite_reward_inputs

        return composite_reward_inputs(processor, conversations, rollout, device)

    def critic_values(self, critic: nn.Module, inputs: dict):
        """A reward-model critic's head at every position of `Rollout.model_inputs()`: (B, L)."""
        from vlmkit.rlhf.value_model import critic_values

        return critic_values(critic, inputs["input_ids"], inputs["attention_mask"], inputs.get("position_ids"),
                             inputs.get("media"))  # fmt: skip

    def load_critic(self, path: str, lora=None) -> nn.Module:
        from vlmkit.rlhf.value_model import load_critic

        return load_critic(path, lora)

    def policy_forward(self, policy: nn.Module, inputs: dict, *, logits_to_keep: int = 0,
                       output_hidden_states: bool = False):  # fmt: skip
        """`policy`'s output on `Rollout.model_inputs()` (cached encoder features used when present); rows
        that repeat a prompt share its pass when only the tail's logits are wanted (`shared_prefix`)."""
        from vlmkit.rlhf.shared_prefix import can_share, shared_prefix_forward

        if can_share(policy, inputs, logits_to_keep, output_hidden_states):
            return shared_prefix_forward(policy, inputs, logits_to_keep)
        features = inputs.get("media_features")
        return policy(
            inputs["input_ids"], inputs["attention_mask"], None if features is not None else inputs.get("media"),
            features, position_ids=inputs.get("position_ids"), output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
        )  # fmt: skip


class NativeRL(NativeKind):
    """RL with a native transformers VLM (or a PeftModel on one)."""

    def build_reference(self, cfg) -> nn.Module:
        path = resolve_model_path(cfg.model_name_or_path)
        return load_native_vlm(path, trust_remote_code=cfg.trust_remote_code)[0]

    def is_peft(self, policy: nn.Module) -> bool:
        return hasattr(policy, "peft_config")

    def adapters_disabled(self, policy: nn.Module):
        """peft's `disable_adapter()`: LoRA and modules_to_save copies off."""
        return policy.disable_adapter()

    def never_sampled(self, policy: nn.Module, processor: NativeEncoder) -> list[int]:
        """The processor's media tokens (image token, vision start/end...)."""
        return sorted(processor.media_token_ids)

    def stop_token_ids(self, policy: nn.Module, processor: NativeEncoder) -> list[int]:
        """The end-of-turn token and the generation config's EOS ids."""
        from vlmkit.rlhf.native_rollout import stop_token_ids

        return stop_token_ids(policy, processor)

    def same_in_train_and_eval(self, policy: nn.Module) -> bool:
        """No active dropout module, no activation checkpointing, no attention dropout."""
        for m in policy.modules():
            if (isinstance(m, nn.Dropout) and m.p > 0) or getattr(m, "gradient_checkpointing", False) is True:
                return False
        config = policy.config
        return not getattr(getattr(config, "text_config", config), "attention_dropout", 0.0)

    def hidden_size(self, policy: nn.Module) -> int:
        return policy.get_input_embeddings().embedding_dim

    def prompt_batch(self, samples, processor: NativeEncoder, device, policy: nn.Module):
        from vlmkit.rlhf.native_rollout import native_prompt_batch

        return native_prompt_batch(samples, processor, device, self.stop_token_ids(policy, processor))

    def generate_rollout(self, policy: nn.Module, batch, tokenizer, **sampling):
        from vlmkit.rlhf.native_rollout import native_generate_rollout

        return native_generate_rollout(policy, batch, tokenizer, **sampling)

    def _forward_kwargs(self, model: nn.Module, inputs: dict) -> dict:
        """`Rollout.model_inputs()` as `model` takes them: the processor's media inputs, and position ids
        counting real tokens only (as `generate` numbers a left-padded prompt), except for M-RoPE families
        (Qwen2-VL), which compute their 3-D positions from the attention mask and image grid themselves."""
        kwargs = {k: v for k, v in inputs.items() if k not in ("media", "media_features") and v is not None}
        base = model.get_base_model() if self.is_peft(model) else model
        if hasattr(getattr(base, "model", base), "get_rope_index"):
            kwargs.pop("position_ids", None)
        return kwargs

    def policy_forward(self, policy: nn.Module, inputs: dict, *, logits_to_keep: int = 0,
                       output_hidden_states: bool = False):  # fmt: skip
        """`policy`'s output on `Rollout.model_inputs()` (see `_forward_kwargs`)."""
        return policy(**self._forward_kwargs(policy, inputs), logits_to_keep=logits_to_keep,
                      output_hidden_states=output_hidden_states, use_cache=False)  # fmt: skip

    def reward_inputs(self, processor: NativeEncoder, conversations, rollout, device) -> dict:
        from vlmkit.rlhf.native_rollout import native_reward_inputs

        return native_reward_inputs(processor, conversations, rollout, device)

    def critic_values(self, critic: nn.Module, inputs: dict):
        """A `NativeRewardModel` critic's head at every position of `Rollout.model_inputs()`: (B, L)."""
        return critic.values(**self._forward_kwargs(critic.vlm, inputs))

    def load_critic(self, path: str, lora=None) -> nn.Module:
        """A trainable critic from a native reward model directory, or from a native VLM with a fresh head
        (LoRA on it when asked and it has none)."""
        from vlmkit.rlhf.native_reward import HEAD_FILE, NativeRewardModel

        if (Path(resolve_model_path(path)) / HEAD_FILE).is_file():
            critic = NativeRewardModel.from_pretrained(resolve_model_path(path), is_trainable=True)
        else:
            critic = NativeRewardModel(load_native_vlm(resolve_model_path(path))[0])
            logger.info("%s has no %s: the critic starts with a fresh score head", path, HEAD_FILE)
        if lora is not None and lora.use_lora and not critic.is_peft:
            critic.vlm = apply_native_lora(
                critic.vlm, r=lora.lora_r, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                target_modules=lora.lora_target_modules, modules_to_save=lora.lora_modules_to_save,
            )  # fmt: skip
        return critic


COMPOSITE_RL, NATIVE_RL = CompositeRL(), NativeRL()


def _with_rl(kind: VLMKind) -> RLKind:
    return NATIVE_RL if kind is NATIVE else COMPOSITE_RL


def rl_kind(cfg) -> RLKind:
    """The kind of policy `cfg.model_name_or_path` names (`vlm_kinds.kind_of_path`), with its RL methods."""
    return _with_rl(kind_of_path(getattr(cfg, "model_name_or_path", None)))


def rl_kind_of_model(model: nn.Module) -> RLKind:
    """The kind of a built or loaded model (`vlm_kinds.kind_of_model`), with its RL methods."""
    return _with_rl(kind_of_model(model))
