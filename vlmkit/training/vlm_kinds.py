"""One model interface for the recipes: a vlmkit composite VLM or a native transformers VLM.

A recipe asks `vlm_kind(cfg)` for the kind its `--model_name_or_path` names and then never branches on it:

    kind = vlm_kind(cfg)                         # CompositeKind or NativeKind
    model, processor = kind.build(cfg)           # LoRA/QLoRA applied when cfg.use_lora / load_in_4bit
    kind.set_trainable(model, cfg, "instruct")   # vision tower frozen, connector in full, LLM full or LoRA
    train_set, collate, sampler = kind.train_data(cfg, processor, skips, model=model, accelerator=acc)
    result = train(cfg, acc, model, train_set, collate, kind.loss, lr_overrides=kind.lr_overrides(model, cfg))
    run.save(result.model, processor)            # full model or adapter (+ connector), and processor files
    eval_set = kind.eval_data(cfg, cfg.eval_data_path, processor, skips)
    pairs, collate = kind.preference_data(cfg, cfg.data_path, processor, skips)   # reward model, DPO
    model = kind.load(out_dir)                   # a saved output, for evaluation or the next stage
    model, processor = kind_of_path(out_dir).load_checkpoint(out_dir)    # for inference (vlmkit generate)
    # RL (vlmkit.rlhf): prompt_batch, generate_rollout, policy_forward, never_sampled, is_peft,
    # adapters_disabled, same_in_train_and_eval, hidden_size, build_reference

- Composite (`vlmkit.models.vlm.VLM`): encoder + connector + causal LM, built from parts or loaded from a
  directory with vlmkit_config.json; its `VLMProcessor` tokenizes with vlmkit's own media placeholders.
- Native (`AutoModelForImageTextToText`: Qwen2-VL, LLaVA-hf, SmolVLM, Gemma 3, PaliGemma...): any other
  checkpoint directory, Hub name or `vlmkit-tiny/native-<family>`; its processor is a `NativeEncoder`
  (the model's own processor and chat template, assistant-only labels). Packing and feature caching are
  not offered for it yet and are refused with a clear error.

The RL trainers ask `kind_of_model(policy)` for the same interface's RL part: prompts to a `Rollout`,
generation, the log-prob forward pass (with the processor's media inputs for a native model), the tokens
never sampled, and the LoRA reference (adapters disabled).

Both processors have `tokenizer` and `save_pretrained`, and `vlmkit.eval.answers.generate_answers` runs both
kinds, so held-out accuracy and RL rollouts need no branch either.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path
from typing import Protocol

from torch import nn
from torch.utils.data import Dataset, Sampler

from vlmkit.data.length_grouping import LengthGroupedSampler
from vlmkit.data.loading import read_samples, sft_dataset, subsample
from vlmkit.data.preference import PreferenceCollator, preference_dataset
from vlmkit.data.records import SkipCounter
from vlmkit.models.build import build_vlm, load_vlm, resolve_attn_implementation
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import (
    image_text_model_types,
    is_native_adapter,
    load_native_checkpoint,
    load_native_vlm,
)
from vlmkit.models.vlm import CONFIG_FILE as VLMKIT_CONFIG_FILE
from vlmkit.models.vlm import VLM
from vlmkit.training.freeze import count_parameters, set_trainable
from vlmkit.training.losses import sft_loss
from vlmkit.training.native_parts import apply_native_lora, native_parts, set_native_trainable
from vlmkit.training.native_preference import NativePreferenceCollator, NativePreferenceDataset
from vlmkit.training.native_sft import NativeSFTDataset, native_sft_loss
from vlmkit.training.train_data import build_train_data

logger = logging.getLogger(__name__)


class VLMKind(Protocol):
    """What a recipe does with a model, whatever kind it is (see the module docstring)."""

    name: str
    # loss(model, batch) -> (summed loss over supervised tokens, extra logs)
    loss: Callable

    def build(self, cfg, *, tune_connector: bool | None = None) -> tuple[nn.Module, object]: ...

    def set_trainable(
        self, model: nn.Module, cfg, stage: str = "instruct", *, tune_connector: bool | None = None
    ) -> tuple[int, int]: ...

    def lr_overrides(self, model: nn.Module, cfg) -> dict[str, float] | None: ...

    def train_data(
        self, cfg, processor, skips: SkipCounter, *, model=None, accelerator=None
    ) -> tuple[Dataset, Callable, Sampler | None]: ...

    def eval_data(self, cfg, path: str, processor, skips: SkipCounter) -> Dataset: ...

    def preference_data(
        self, cfg, path: str, processor, skips: SkipCounter, *, limit: int = 0
    ) -> tuple[Dataset, Callable]: ...

    def load(self, path: str) -> nn.Module: ...

    def load_checkpoint(self, path: str) -> tuple[nn.Module, object]: ...


def _lora_or_none(cfg):
    """The config itself when it carries the LoRA group (a recipe without it trains full weights)."""
    return cfg if hasattr(cfg, "use_lora") else None


def _tune_connector(cfg, tune_connector: bool | None) -> bool:
    """What the caller asked, else the config's --tune_connector, else True."""
    return getattr(cfg, "tune_connector", True) if tune_connector is None else tune_connector


class CompositeKind:
    """vlmkit's own encoder + connector + causal LM (`vlmkit.models.vlm.VLM`)."""

    name = "composite"
    loss = staticmethod(sft_loss)

    def build(self, cfg, *, tune_connector: bool | None = None) -> tuple[VLM, object]:
        """Build or load the VLM (LoRA/QLoRA per cfg); what trains is `set_trainable`'s business."""
        return build_vlm(cfg, _lora_or_none(cfg))

    def set_trainable(
        self, model: nn.Module, cfg, stage: str = "instruct", *, tune_connector: bool | None = None
    ) -> tuple[int, int]:
        """`vlmkit.training.freeze.set_trainable` (a RewardModel wrapper too: its head trains in "reward")."""
        return set_trainable(
            model, stage, tune_encoder=getattr(cfg, "tune_encoder", False),
            tune_connector=_tune_connector(cfg, tune_connector),
        )  # fmt: skip

    def lr_overrides(self, model: nn.Module, cfg) -> dict[str, float] | None:
        lr = getattr(cfg, "connector_learning_rate", None)
        return {"connector.": lr} if lr else None

    def train_data(self, cfg, processor, skips, *, model=None, accelerator=None):
        return build_train_data(cfg, processor, skips, model=model, accelerator=accelerator)

    def eval_data(self, cfg, path: str, processor, skips: SkipCounter) -> Dataset:
        return sft_dataset(cfg, path, processor, skips)

    def preference_data(self, cfg, path: str, processor, skips: SkipCounter, *, limit: int = 0):
        dataset = preference_dataset(cfg, path, processor, skips, limit=limit)
        return dataset, PreferenceCollator(processor.tokenizer.pad_token_id)

    def load(self, path: str) -> nn.Module:
        return load_vlm(path)[0]

    def load_checkpoint(self, path: str) -> tuple[VLM, object]:
        return load_vlm(path)

    # ---- RL ------------------------------------------------------------------------------------------
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
        """`policy`'s output on `Rollout.model_inputs()` (cached encoder features used when present)."""
        features = inputs.get("media_features")
        return policy(
            inputs["input_ids"], inputs["attention_mask"], None if features is not None else inputs.get("media"),
            features, position_ids=inputs.get("position_ids"), output_hidden_states=output_hidden_states,
            logits_to_keep=logits_to_keep,
        )  # fmt: skip


class NativeKind:
    """A transformers image-text model (`AutoModelForImageTextToText`) with its own processor."""

    name = "native"
    loss = staticmethod(native_sft_loss)

    def build(self, cfg, *, tune_connector: bool | None = None) -> tuple[nn.Module, NativeEncoder]:
        """Load the checkpoint (LoRA/QLoRA per cfg); `tune_connector` (default: cfg's, else True) decides
        whether the connector trains in full beside LoRA adapters (saved with them)."""
        tune_connector = _tune_connector(cfg, tune_connector)
        for field in ("vision_tower", "audio_tower", "language_model", "pretrain_connector"):
            if getattr(cfg, field, None):
                raise ValueError(
                    f"--{field} builds a vlmkit composite model; --model_name_or_path "
                    f"{cfg.model_name_or_path} is a complete transformers VLM already: drop --{field}"
                )
        lora = _lora_or_none(cfg)
        use_lora, load_in_4bit = bool(lora and lora.use_lora), bool(lora and lora.load_in_4bit)
        if load_in_4bit and not use_lora:
            raise ValueError("load_in_4bit (QLoRA) trains LoRA adapters: add --use_lora")
        model, processor = load_native_vlm(
            resolve_model_path(cfg.model_name_or_path), trust_remote_code=cfg.trust_remote_code,
            attn_implementation=resolve_attn_implementation(cfg.attn_implementation), load_in_4bit=load_in_4bit,
        )  # fmt: skip
        if use_lora:
            if load_in_4bit:
                from peft import prepare_model_for_kbit_training

                model = prepare_model_for_kbit_training(model, use_gradient_checkpointing=False)
            model = apply_native_lora(
                model, r=lora.lora_r, alpha=lora.lora_alpha, dropout=lora.lora_dropout,
                target_modules=lora.lora_target_modules, modules_to_save=lora.lora_modules_to_save,
                tune_vision_tower=getattr(cfg, "tune_encoder", False), tune_connector=tune_connector,
            )  # fmt: skip
        encoder = NativeEncoder(
            processor, model.config.model_type, max_length=getattr(cfg, "max_length", None),
            truncation=getattr(cfg, "truncation", "error"), min_pixels=getattr(cfg, "min_pixels", None),
            max_pixels=getattr(cfg, "max_pixels", None),
        )  # fmt: skip
        return model, encoder

    def set_trainable(
        self, model: nn.Module, cfg, stage: str = "instruct", *, tune_connector: bool | None = None
    ) -> tuple[int, int]:
        """`set_native_trainable` on the VLM (a reward wrapper's `vlm`; its `score_head` trains in "reward")."""
        if stage not in ("instruct", "reward"):
            raise ValueError(f"native VLMs train in stage instruct or reward, not '{stage}'")
        counts = set_native_trainable(
            getattr(model, "vlm", model), tune_vision_tower=getattr(cfg, "tune_encoder", False),
            tune_connector=_tune_connector(cfg, tune_connector),
        )  # fmt: skip
        if stage == "reward" and hasattr(model, "score_head"):
            model.score_head.requires_grad_(True)
            counts = count_parameters(model)
        return counts

    def lr_overrides(self, model: nn.Module, cfg) -> dict[str, float] | None:
        lr = getattr(cfg, "connector_learning_rate", None)
        if not lr:
            return None
        is_peft = hasattr(model, "peft_config")
        connector = native_parts(model.get_base_model() if is_peft else model).connector
        return {("base_model.model." if is_peft else "") + connector + ".": lr}

    def train_data(self, cfg, processor: NativeEncoder, skips, *, model=None, accelerator=None):
        for field, what in (("packing", "packing"), ("feature_cache_dir", "feature caching")):
            if getattr(cfg, field, None):
                raise ValueError(
                    f"--{field}: {what} is not available for native transformers VLMs yet "
                    f"({processor.model_type}); train without it"
                )
        dataset = self.eval_data(cfg, cfg.data_path, processor, skips)
        sampler = None
        if getattr(cfg, "group_by_length", False):
            world = accelerator.num_processes if accelerator is not None else 1
            sampler = LengthGroupedSampler(
                dataset.lengths(), cfg.per_device_train_batch_size, cfg.seed, world_size=world
            )
        return dataset, NativeCollator(processor.tokenizer.pad_token_id, processor.model_type), sampler

    def eval_data(self, cfg, path: str, processor: NativeEncoder, skips: SkipCounter) -> Dataset:
        samples = read_samples(cfg, path, skips)
        return NativeSFTDataset(samples, processor, on_bad_sample=cfg.on_bad_sample, skips=skips)

    def preference_data(
        self, cfg, path: str, processor: NativeEncoder, skips: SkipCounter, *, limit: int = 0
    ):
        fmt = "preference" if cfg.data_format == "auto" else cfg.data_format
        pairs = subsample(read_samples(cfg, path, skips, format=fmt), limit, cfg.seed)
        dataset = NativePreferenceDataset(pairs, processor, on_bad_sample=cfg.on_bad_sample, skips=skips)
        return dataset, NativePreferenceCollator(processor.tokenizer.pad_token_id, processor.model_type)

    def load(self, path: str) -> nn.Module:
        return load_native_checkpoint(path)[0]

    def load_checkpoint(self, path: str) -> tuple[nn.Module, NativeEncoder]:
        model, processor = load_native_checkpoint(path)
        return model, NativeEncoder(processor, model.config.model_type)

    # ---- RL ------------------------------------------------------------------------------------------
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


COMPOSITE, NATIVE = CompositeKind(), NativeKind()


def kind_of_path(name_or_path: str | None) -> VLMKind:
    """Composite for no path (built from parts) or a directory with vlmkit_config.json; native otherwise
    (a transformers checkpoint or adapter directory, a Hub name, `vlmkit-tiny/native-<family>`)."""
    if not name_or_path:
        return COMPOSITE
    path = resolve_model_path(name_or_path)
    if (Path(path) / VLMKIT_CONFIG_FILE).is_file():
        return COMPOSITE
    if Path(path).is_dir() and not (Path(path) / "config.json").is_file() and not is_native_adapter(path):
        return COMPOSITE  # neither kind: build_vlm's error says what a vlmkit checkpoint needs
    return NATIVE


def vlm_kind(cfg) -> VLMKind:
    """The kind of model `cfg.model_name_or_path` names (see `kind_of_path`)."""
    return kind_of_path(getattr(cfg, "model_name_or_path", None))


def kind_of_model(model: nn.Module) -> VLMKind:
    """The kind of a built or loaded model (unwrapped; a reward/value wrapper is judged by its `vlm`).

    Native only for a transformers model (or PeftModel) whose config is an image-text model type."""
    inner = getattr(model, "vlm", model)
    if isinstance(inner, VLM):
        return COMPOSITE
    model_type = getattr(getattr(inner, "config", None), "model_type", None)
    return NATIVE if model_type in image_text_model_types() else COMPOSITE
