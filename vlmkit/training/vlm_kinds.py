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
    # RL (vlmkit.rlhf.rl_kinds): the same kinds with prompt_batch, generate_rollout, policy_forward, ...

- Composite (`vlmkit.models.vlm.VLM`): encoder + connector + causal LM, built from parts or loaded from a
  directory with vlmkit_config.json; its `VLMProcessor` tokenizes with vlmkit's own media placeholders.
- Native (`AutoModelForImageTextToText`: Qwen2-VL, LLaVA-hf, SmolVLM, Gemma 3, PaliGemma...): any other
  checkpoint directory, Hub name or `vlmkit-tiny/native-<family>`; its processor is a `NativeEncoder`
  (the model's own processor and chat template, assistant-only labels). Packing is exact per family
  (`vlmkit.models.native.packing`) and refused where it would not be; feature caching is refused.

The RL trainers ask `vlmkit.rlhf.rl_kinds.rl_kind_of_model(policy)` for the same kind with its RL part: prompts to a `Rollout`,
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
from vlmkit.data.packing import PackedDataset
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
from vlmkit.models.native.packing import NativePackedCollator, check_packable, mrope_index
from vlmkit.models.vlm import CONFIG_FILE as VLMKIT_CONFIG_FILE
from vlmkit.models.vlm import VLM
from vlmkit.training.freeze import count_parameters, set_trainable
from vlmkit.training.losses import sft_loss
from vlmkit.training.native_parts import apply_native_lora, native_parts, set_native_trainable
from vlmkit.training.native_preference import NativePreferenceCollator, NativePreferenceDataset
from vlmkit.training.native_sft import NativeSFTDataset, native_sft_loss
from vlmkit.training.train_data import build_train_data, check_packing

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
        """Encoded samples + collator + sampler; `--packing` packs whole samples into padding-free rows."""
        if getattr(cfg, "feature_cache_dir", None):
            raise ValueError(
                "--feature_cache_dir: feature caching is not available for native transformers VLMs yet "
                f"({processor.model_type}); train without it"
            )
        packing = getattr(cfg, "packing", False)
        if packing:
            check_packable(processor.model_type)  # before encoding the data
        dataset = self.eval_data(cfg, cfg.data_path, processor, skips)
        if packing:
            return self._packed(cfg, dataset, processor, model)
        sampler = None
        if getattr(cfg, "group_by_length", False):
            world = accelerator.num_processes if accelerator is not None else 1
            sampler = LengthGroupedSampler(
                dataset.lengths(), cfg.per_device_train_batch_size, cfg.seed, world_size=world
            )
        return dataset, NativeCollator(processor.tokenizer.pad_token_id, processor.model_type), sampler

    def _packed(self, cfg, dataset: NativeSFTDataset, processor: NativeEncoder, model):
        """Rows of whole samples up to `packing_max_tokens` (`vlmkit.models.native.packing`: exact per family,
        M-RoPE positions per sample); flattened to one row per micro-batch under flash attention."""
        if model is None:
            raise ValueError("native packing needs the model (its attention and rotary positions)")
        check_packing(cfg)
        flatten = model.config.get_text_config()._attn_implementation.startswith("flash_attention")
        collate = NativePackedCollator(
            processor.tokenizer.pad_token_id,
            processor.model_type,
            rope_index=mrope_index(model),
            flatten=flatten,
        )
        return PackedDataset(dataset, cfg.packing_max_tokens, dataset.lengths()), collate, None

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
