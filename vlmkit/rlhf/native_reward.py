"""Reward model on a native transformers VLM: its backbone (no LM head) + a scalar head at the last real token.

Checkpoint layout: the VLM's own (`save_pretrained`: a full transformers checkpoint, or a LoRA adapter with the
modules trained in full) plus `score_head.safetensors` and `reward_model.json` (as the composite reward model
has them) and the processor files, so a plain transformers/peft user can rebuild the scores too.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import nn

from vlmkit.models.native.loading import load_native_checkpoint
from vlmkit.models.reward_files import HEAD_FILE, REWARD_CONFIG_FILE


def _last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row of a right-padded mask (B, T) -> (B,)."""
    return attention_mask.long().sum(dim=1).clamp(min=1) - 1


class NativeRewardModel(nn.Module):
    """`vlm` (an `AutoModelForImageTextToText` model or a PeftModel on one) + `score_head` (Linear(H, 1))."""

    def __init__(self, vlm: nn.Module, score_head: nn.Linear | None = None):
        super().__init__()
        self.vlm = vlm
        hidden = self._backbone_model().get_input_embeddings().embedding_dim
        if score_head is None:
            score_head = nn.Linear(hidden, 1)
            nn.init.normal_(score_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(score_head.bias)
        self.score_head = score_head

    @property
    def config(self):
        return self.vlm.config

    @property
    def is_peft(self) -> bool:
        return hasattr(self.vlm, "peft_config")

    def _backbone_model(self) -> nn.Module:
        """The VLM without its LM head (`model.model`; LoRA layers are injected in place, so they run)."""
        base = self.vlm.get_base_model() if self.is_peft else self.vlm
        return base.model

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **media_inputs) -> torch.Tensor:
        """Scores (B,) float32 at the last non-pad token of each right-padded row. `media_inputs`: what the
        processor returned besides the ids (pixel_values, image_grid_thw, token_type_ids...)."""
        if attention_mask.shape[1] > 1 and bool((attention_mask[:, 0] == 0).any()):
            raise ValueError("reward model inputs must be right-padded (a row starts with padding)")
        out = self._backbone_model()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **media_inputs
        )
        hidden = out.last_hidden_state
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, _last_token_index(attention_mask).to(hidden.device)]
        return self.score_head(last.to(self.score_head.weight.dtype)).squeeze(-1).float()

    def values(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, **inputs) -> torch.Tensor:
        """The head at every position (B, L) float32, as PPO's critic reads it (rows may be left-padded:
        `inputs` then carries the position ids, except for M-RoPE families, which derive them)."""
        out = self._backbone_model()(
            input_ids=input_ids, attention_mask=attention_mask, use_cache=False, **inputs
        )
        hidden = out.last_hidden_state
        return self.score_head(hidden.to(self.score_head.weight.dtype)).squeeze(-1).float()

    def save_pretrained(self, out_dir: str | Path, state_dict: dict | None = None) -> None:
        """The VLM (full or adapter) + score_head.safetensors + reward_model.json."""
        out = Path(out_dir)
        state_dict = self.state_dict() if state_dict is None else state_dict
        vlm_state = {k[len("vlm.") :]: v for k, v in state_dict.items() if k.startswith("vlm.")}
        head = {k[len("score_head.") :]: v.detach().cpu().contiguous() for k, v in state_dict.items()
                if k.startswith("score_head.")}  # fmt: skip
        if set(head) != {"weight", "bias"}:
            raise ValueError(f"state_dict has no complete score_head (found {sorted(head)})")
        self.vlm.save_pretrained(out, state_dict=vlm_state)
        save_file(head, str(out / HEAD_FILE))
        info = {"kind": "last_token_scalar", "backbone": "native", "hidden_size": self.score_head.in_features}
        (out / REWARD_CONFIG_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, is_trainable: bool = False) -> NativeRewardModel:
        """Load a saved native reward model (full or adapter directory)."""
        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a reward model: {HEAD_FILE} is missing (train one with recipes/reward_model.py)"
            )
        vlm, _ = load_native_checkpoint(path, is_trainable=is_trainable)
        state = load_file(str(path / HEAD_FILE))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        model = cls(vlm, head.to(state["weight"].dtype))
        if not is_trainable:
            model.eval().requires_grad_(False)
        return model
