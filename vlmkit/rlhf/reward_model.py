"""Multimodal reward model: a vlmkit VLM backbone + a scalar head on the last real token (stage 3).

Checkpoint layout: the VLM layout (`VLM.save_pretrained`: full model or LoRA adapter + references) plus

    score_head.safetensors     the scalar head (weight (1, H), bias (1,))
    reward_model.json          what the head reads (kind, hidden size)
    tokenizer + processor      so `load_reward_model(path)` is all a PPO run needs
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn.functional as F
from safetensors.torch import load_file, save_file
from torch import nn
from torch.utils.data import DataLoader

from vlmkit.models.build import build_vlm, resolve_attn_implementation
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_processor
from vlmkit.models.processor import VLMProcessor
from vlmkit.models.reward_files import HEAD_FILE, REWARD_CONFIG_FILE
from vlmkit.models.vlm import VLM
from vlmkit.rlhf.native_reward import NativeRewardModel
from vlmkit.training.vlm_kinds import NATIVE, kind_of_model, kind_of_path, vlm_kind

REWARD_USAGE = """```python
from vlmkit.rlhf.reward_model import load_reward_model

reward_model, processor = load_reward_model("{path}")
scores = reward_model(input_ids, attention_mask, media)  # (B,), right-padded prompt + answer
```"""


def last_token_index(attention_mask: torch.Tensor) -> torch.Tensor:
    """Index of the last non-pad token per row of a right-padded mask (B, T) -> (B,)."""
    if attention_mask.shape[1] > 1 and bool((attention_mask[:, 0] == 0).any()):
        raise ValueError(
            "reward model inputs must be right-padded (a row starts with padding); pad on the right"
        )
    return attention_mask.long().sum(dim=1).clamp(min=1) - 1


class RewardModel(nn.Module):
    """`vlm` (a stage-2 VLM) + `score_head` (Linear(hidden, 1)) reading the final hidden state.

    `encoder`, `connector` and `language_model` point at the backbone's parts, so `set_trainable(model,
    "reward")` and the training loop treat a RewardModel like a VLM (and also train `score_head`).
    """

    def __init__(self, vlm: VLM, score_head: nn.Linear | None = None):
        super().__init__()
        self.vlm = vlm
        hidden = vlm.language_model.get_input_embeddings().embedding_dim
        if score_head is None:
            score_head = nn.Linear(hidden, 1)
            nn.init.normal_(score_head.weight, std=1.0 / (hidden + 1) ** 0.5)
            nn.init.zeros_(score_head.bias)
        self.score_head = score_head

    # The backbone's parts, for set_trainable and the training loop.
    @property
    def encoder(self) -> nn.Module:
        return self.vlm.encoder

    @property
    def connector(self) -> nn.Module:
        return self.vlm.connector

    @property
    def language_model(self) -> nn.Module:
        return self.vlm.language_model

    @property
    def config(self):
        return self.vlm.config

    @property
    def is_peft(self) -> bool:
        return self.vlm.is_peft

    def hidden_states(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Final hidden states (B, T, H) of the LLM's decoder (after its final norm; no LM head)."""
        embeds = self.vlm.embed(input_ids, media, media_features)
        out = self.vlm.language_model.get_decoder()(
            inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
        )
        return out.last_hidden_state

    def token_scores(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
        position_ids: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """The head applied at every position: (B, T) float32 (e.g. a value model; any padding side
        when `position_ids` are given)."""
        hidden = self.hidden_states(input_ids, attention_mask, media, media_features, position_ids)
        return self.score_head(hidden.to(self.score_head.weight.dtype)).squeeze(-1).float()

    def forward(
        self,
        input_ids: torch.Tensor,
        attention_mask: torch.Tensor,
        media: torch.Tensor | None = None,
        media_features: torch.Tensor | None = None,
    ) -> torch.Tensor:
        """Scores (B,) float32 read at the last non-pad token of each right-padded row."""
        hidden = self.hidden_states(input_ids, attention_mask, media, media_features)
        rows = torch.arange(hidden.shape[0], device=hidden.device)
        last = hidden[rows, last_token_index(attention_mask).to(hidden.device)]
        return self.score_head(last.to(self.score_head.weight.dtype)).squeeze(-1).float()

    # ---- save / load --------------------------------------------------------------------------------
    def save_pretrained(self, out_dir: str | Path, state_dict: dict | None = None) -> None:
        """The VLM layout + score_head.safetensors + reward_model.json. `state_dict` is the consolidated
        one under ZeRO-3/FSDP (keys `vlm.*` and `score_head.*`)."""
        out = Path(out_dir)
        if state_dict is None:
            state_dict = self.state_dict()
        vlm_state = {k[len("vlm.") :]: v for k, v in state_dict.items() if k.startswith("vlm.")}
        head_state = {
            k[len("score_head.") :]: v.detach().cpu().contiguous()
            for k, v in state_dict.items()
            if k.startswith("score_head.")
        }
        if set(head_state) != {"weight", "bias"}:
            raise ValueError(f"state_dict has no complete score_head (found {sorted(head_state)})")
        self.vlm.save_pretrained(out, state_dict=vlm_state)
        save_file(head_state, str(out / HEAD_FILE))
        info = {"kind": "last_token_scalar", "hidden_size": self.score_head.in_features}
        (out / REWARD_CONFIG_FILE).write_text(json.dumps(info, indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path, is_trainable: bool = False, **vlm_kwargs) -> RewardModel:
        """Load a saved reward model; `vlm_kwargs` go to `VLM.from_pretrained` (attn_implementation, ...)."""
        path = Path(path)
        if not (path / HEAD_FILE).is_file():
            raise FileNotFoundError(
                f"{path} is not a reward model: {HEAD_FILE} is missing (train one with recipes/reward_model.py)"
            )
        vlm = VLM.from_pretrained(path, is_trainable=is_trainable, **vlm_kwargs)
        state = load_file(str(path / HEAD_FILE))
        head = nn.Linear(state["weight"].shape[1], 1)
        head.load_state_dict(state)
        model = cls(vlm, head.to(state["weight"].dtype))
        if not is_trainable:
            model.eval().requires_grad_(False)
        return model


def reward_model_from_pretrained(path: str | Path, is_trainable: bool = False) -> nn.Module:
    """A saved reward model of either kind: `RewardModel` (composite) or `NativeRewardModel`."""
    if kind_of_path(str(path)) is NATIVE:
        return NativeRewardModel.from_pretrained(path, is_trainable=is_trainable)
    return RewardModel.from_pretrained(path, is_trainable=is_trainable)


def load_reward_model(path: str | Path, **vlm_kwargs) -> tuple[nn.Module, object]:
    """A frozen reward model in eval mode and its processor, ready to score (e.g. for PPO)."""
    if kind_of_path(str(path)) is NATIVE:
        model = NativeRewardModel.from_pretrained(path)
        return model, NativeEncoder(load_processor(path), model.config.model_type)
    vlm_kwargs.setdefault("attn_implementation", resolve_attn_implementation("auto"))
    model = RewardModel.from_pretrained(path, is_trainable=False, **vlm_kwargs)
    return model, VLMProcessor.from_pretrained(path)


def build_reward_model(model_args, lora_args=None) -> tuple[nn.Module, object]:
    """A new reward model on a stage-2 checkpoint (`model_name_or_path`; a native transformers VLM too) or
    on parts, with a fresh head."""
    if vlm_kind(model_args) is NATIVE:
        use_lora = bool(lora_args and lora_args.use_lora)  # as the composite: connector frozen under LoRA
        vlm, processor = NATIVE.build(model_args, tune_connector=not use_lora)
        return NativeRewardModel(vlm), processor
    vlm, processor = build_vlm(model_args, lora_args, is_trainable=True)
    return RewardModel(vlm), processor


def set_reward_trainable(model: nn.Module, cfg) -> tuple[int, int]:
    """The backbone's parts for a reward run (connector frozen under LoRA; encoder with --tune_encoder) and
    the head; logs the counts."""
    return kind_of_model(model).set_trainable(model, cfg, "reward", tune_connector=not cfg.use_lora)


# ---- losses and metrics (pure functions) ------------------------------------------------------------
def bradley_terry_loss(
    chosen: torch.Tensor,
    rejected: torch.Tensor,
    margin: float | torch.Tensor = 0.0,
    center_coef: float = 0.0,
) -> torch.Tensor:
    """Per-pair loss (B,): -log sigmoid(r_c - r_r - margin) + center_coef * (r_c + r_r)^2.

    chosen, rejected: scores (B,); margin: a float or per-pair margins (B,). The centering term keeps
    the rewards near zero on average (their mean over the batch is `center_coef * mean((r_c + r_r)^2)`).
    """
    loss = -F.logsigmoid(chosen - rejected - margin)
    if center_coef:
        loss = loss + center_coef * (chosen + rejected) ** 2
    return loss


def pairwise_stats(chosen: torch.Tensor, rejected: torch.Tensor) -> dict[str, float]:
    """accuracy (share of pairs with r_c > r_r) and mean_margin (mean r_c - r_r) of scores (B,)."""
    diff = (chosen - rejected).float()
    wins = int((diff > 0).sum())  # counted exactly: a float32 mean reads 171/180 as 0.9499999
    return {"accuracy": wins / max(1, diff.numel()), "mean_margin": float(diff.mean())}


def score_pairs(model: RewardModel, batch: dict) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores (B,), (B,) of the chosen and rejected rows of a PreferenceCollator batch."""
    inputs = {k: v for k, v in batch.items() if k not in ("labels", "num_pairs")}
    scores = model(**inputs)  # composite: input_ids, attention_mask, media; native: the processor's keys too
    b = batch["num_pairs"]
    return scores[:b], scores[b:]


class RewardLoss:
    """compute_loss for the training loop: (sum of per-pair Bradley-Terry losses, logged extras)."""

    def __init__(self, margin: float = 0.0, center_coef: float = 0.0):
        self.margin, self.center_coef = margin, center_coef

    def __call__(self, model: RewardModel, batch: dict) -> tuple[torch.Tensor, dict]:
        chosen, rejected = score_pairs(model, batch)
        loss = bradley_terry_loss(chosen, rejected, self.margin, self.center_coef).sum()
        stats = pairwise_stats(chosen.detach(), rejected.detach())
        return loss, {"pairwise_accuracy": stats["accuracy"], "mean_margin": stats["mean_margin"]}


@torch.no_grad()
def evaluate_pairs(model: RewardModel, dataset, collate_fn, batch_size: int = 32) -> dict[str, float]:
    """Held-out pairwise_accuracy, mean_margin, loss (mean Bradley-Terry) and mean chosen/rejected scores."""
    was_training = model.training
    model.eval()
    device = next(model.parameters()).device
    chosen_all, rejected_all = [], []
    for batch in DataLoader(dataset, batch_size=batch_size, collate_fn=collate_fn):
        if batch.get("empty"):
            continue
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        chosen, rejected = score_pairs(model, batch)
        chosen_all.append(chosen.cpu())
        rejected_all.append(rejected.cpu())
    model.train(was_training)
    if not chosen_all:
        raise ValueError("no held-out preference pair could be scored (every item was skipped)")
    chosen, rejected = torch.cat(chosen_all), torch.cat(rejected_all)
    stats = pairwise_stats(chosen, rejected)
    return {
        "pairwise_accuracy": stats["accuracy"],
        "mean_margin": stats["mean_margin"],
        "loss": float(bradley_terry_loss(chosen, rejected).mean()),
        "chosen_score": float(chosen.mean()),
        "rejected_score": float(rejected.mean()),
    }
