"""PPO's value model, two ways, and the module that trains it together with the policy.

- ``policy_head``: a linear head on the policy's last hidden state. One forward pass gives the logits and the
  values; the backbone is shared, so the value loss also shapes the policy's features (cheap in memory).
- ``reward_model``: a separate critic (VLM + score head) initialised from the stage-3 reward model, whose
  head already predicts how good a response is. Twice the memory of the backbone, no interference.

`ActorCritic` holds the policy and either value model, so one optimizer and one DeepSpeed engine train both.
The frozen reference policy lives here too: a copy of the starting policy, or none at all with LoRA.
Shapes: B sequences, L tokens, V vocabulary, H hidden size.
"""

from __future__ import annotations

import copy
import json
import logging
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file
from torch import Tensor, nn

from vlmkit.models.build import apply_lora
from vlmkit.models.vlm import VLM
from vlmkit.rlhf.reward_model import HEAD_FILE, RewardModel
from vlmkit.rlhf.rl_kinds import rl_kind_of_model
from vlmkit.rlhf.shared_prefix import SharedPrompts
from vlmkit.training.freeze import count_parameters

logger = logging.getLogger(__name__)

VALUE_DIR = "value_model"
VALUE_HEAD_FILE = "value_head.safetensors"
VALUE_CONFIG_FILE = "value_model.json"


class ActorCritic(nn.Module):
    """The policy (a VLM) plus at most one value model: `value_head` (policy_head) or `critic`
    (reward_model); critic-free methods (GRPO, RLOO) hold the policy alone (kind "none")."""

    def __init__(self, policy: VLM, value_head: nn.Linear | None = None, critic: RewardModel | None = None):
        super().__init__()
        if value_head is not None and critic is not None:
            raise ValueError("ActorCritic takes one value model: a value_head or a critic, not both")
        self.policy = policy
        self.value_head = value_head
        self.critic = critic

    @property
    def policy_kind(self):
        """The policy's `VLMKind` (composite or native): how it is run."""
        return rl_kind_of_model(self.policy)

    @property
    def kind(self) -> str:
        if self.value_head is not None:
            return "policy_head"
        return "reward_model" if self.critic is not None else "none"

    def forward(
        self,
        input_ids: Tensor,
        attention_mask: Tensor,
        position_ids: Tensor | None = None,
        media: Tensor | None = None,
        media_features: Tensor | None = None,
        with_values: bool = True,
        logits_to_keep: int = 0,
        shared_prompts: SharedPrompts | None = None,
        **media_inputs: Tensor,
    ) -> tuple[Tensor, Tensor | None]:
        """Policy logits (B, L, V) and values (B, L) float32 (None when `with_values` is False).

        `logits_to_keep` > 0: logits of the last that many positions only (B, logits_to_keep, V); values
        still cover every position.

        `media_features` (n, N, D_enc) are the policy encoder's cached outputs; the critic, whose encoder
        may differ, always reads `media`. `shared_prompts`: rows that repeat a prompt, whose prompt the policy
        computes once (`vlmkit.rlhf.shared_prefix`). `media_inputs`: a native VLM's processor inputs.
        """
        if with_values and self.kind == "none":
            raise ValueError("this policy has no value model: call it with with_values=False")
        want_hidden = with_values and self.value_head is not None
        inputs = dict(input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, media=media,
                      media_features=media_features, shared_prompts=shared_prompts, **media_inputs)  # fmt: skip
        out = self.policy_kind.policy_forward(
            self.policy, inputs, logits_to_keep=logits_to_keep, output_hidden_states=want_hidden
        )
        if not with_values:
            return out.logits, None
        if self.value_head is not None:
            hidden = out.hidden_states[-1]
            return out.logits, self.value_head(hidden.to(self.value_head.weight.dtype)).squeeze(-1).float()
        return out.logits, rl_kind_of_model(self.critic).critic_values(self.critic, inputs)


def critic_values(
    critic: RewardModel,
    input_ids: Tensor,
    attention_mask: Tensor,
    position_ids: Tensor | None = None,
    media: Tensor | None = None,
) -> Tensor:
    """The critic's head at every position: (B, L) float32 (position ids kept for left-padded prompts)."""
    embeds = critic.vlm.embed(input_ids, media)
    out = critic.vlm.language_model.get_decoder()(
        inputs_embeds=embeds, attention_mask=attention_mask, position_ids=position_ids, use_cache=False
    )
    hidden = out.last_hidden_state
    return critic.score_head(hidden.to(critic.score_head.weight.dtype)).squeeze(-1).float()


def new_value_head(policy: nn.Module) -> nn.Linear:
    """Linear(H, 1) initialised to zero: every value starts at 0, so early advantages are the rewards."""
    hidden = rl_kind_of_model(policy).hidden_size(policy)
    head = nn.Linear(hidden, 1)
    nn.init.zeros_(head.weight)
    nn.init.zeros_(head.bias)
    return head


def load_critic(path: str | Path, lora=None) -> RewardModel:
    """A trainable critic from a reward model directory, or from a VLM checkpoint with a fresh score head."""
    path = Path(path)
    if (path / HEAD_FILE).is_file():
        critic = RewardModel.from_pretrained(path, is_trainable=True)
    else:
        critic = RewardModel(VLM.from_pretrained(path, is_trainable=True))
        logger.info("%s has no %s: the critic starts with a fresh score head", path, HEAD_FILE)
    if lora is not None and lora.use_lora and not critic.vlm.is_peft:
        apply_lora(critic.vlm, lora)
    return critic


def build_actor_critic(policy: VLM, kind: str, *, critic_path: str | None = None, lora=None) -> ActorCritic:
    """Freeze/unfreeze for PPO and attach the value model `kind` (policy_head or reward_model)."""
    # With LoRA the reference is the policy with adapters off, so the connector must stay as it was.
    policy_kind = rl_kind_of_model(policy)
    policy_kind.set_trainable(policy, None, "instruct", tune_connector=not policy_kind.is_peft(policy))
    if kind == "policy_head":
        model = ActorCritic(policy, value_head=new_value_head(policy))
    elif kind == "reward_model":
        if not critic_path:
            raise ValueError(
                "value_model=reward_model needs a reward model (or VLM) directory to start the critic from"
            )
        critic = policy_kind.load_critic(critic_path, lora)
        if rl_kind_of_model(critic) is not policy_kind:
            raise ValueError(
                f"the critic ({critic_path}) must be the policy's kind of model ({policy_kind.name}): it reads the "
                "policy's inputs; start it from a reward model trained on the policy's base model"
            )
        rl_kind_of_model(critic).set_trainable(critic, None, "reward")
        model = ActorCritic(policy, critic=critic)
    else:
        raise ValueError(f"unknown value model {kind!r}; valid: policy_head, reward_model")
    trainable, frozen = count_parameters(model)
    logger.info(
        "PPO actor-critic (%s): %s trainable / %s frozen parameters", kind, f"{trainable:,}", f"{frozen:,}"
    )
    return model


def save_value_model(model: ActorCritic, out_dir: str | Path, state_dict: dict | None = None) -> Path:
    """Write `out_dir/value_model/`: the head (policy_head) or a reward-model checkpoint (reward_model).

    `state_dict` is the consolidated ActorCritic state under ZeRO-3/FSDP (keys `value_head.*`/`critic.*`).
    """
    out = Path(out_dir) / VALUE_DIR
    out.mkdir(parents=True, exist_ok=True)
    state_dict = model.state_dict() if state_dict is None else state_dict
    prefix = "value_head." if model.kind == "policy_head" else "critic."
    part = {
        k[len(prefix) :]: v.detach().cpu().contiguous() for k, v in state_dict.items() if k.startswith(prefix)
    }
    if model.kind == "policy_head":
        save_file(part, str(out / VALUE_HEAD_FILE))
    else:
        model.critic.save_pretrained(out, state_dict=part)
    head = model.value_head if model.value_head is not None else model.critic.score_head
    info = {"kind": model.kind, "hidden_size": head.in_features}
    (out / VALUE_CONFIG_FILE).write_text(json.dumps(info, indent=2))
    return out


def load_value_head(out_dir: str | Path) -> nn.Linear:
    """The policy_head value head saved by `save_value_model` (for inspection or to continue training)."""
    state = load_file(str(Path(out_dir) / VALUE_DIR / VALUE_HEAD_FILE))
    head = nn.Linear(state["weight"].shape[1], 1)
    head.load_state_dict(state)
    return head


# ---- the frozen models beside it: reference policy, reward model -----------------------------------
def is_zero3(accelerator) -> bool:
    plugin = getattr(accelerator.state, "deepspeed_plugin", None)
    return plugin is not None and plugin.zero_stage == 3


def prepare_frozen(model: nn.Module, accelerator) -> nn.Module:
    """A frozen model (reference, reward model) in eval mode on the device; a ZeRO-3 inference engine
    (partitioned, no optimizer) when the run uses ZeRO-3. Call after the trainable model is prepared."""
    model.requires_grad_(False).eval()
    if not is_zero3(accelerator):
        return model.to(accelerator.device)
    import deepspeed

    config = copy.deepcopy(accelerator.state.deepspeed_plugin.deepspeed_config)
    for key in ("optimizer", "scheduler"):
        config.pop(key, None)
    engine, *_ = deepspeed.initialize(model=model, config=config)
    engine.eval()  # DeepSpeedEngine.eval() returns None, not the engine
    return engine


def frozen_reference(policy: nn.Module, build_again, accelerator) -> nn.Module | None:
    """None for a LoRA policy (adapters off is the reference); else a frozen copy of the starting policy.

    Under ZeRO-3 the parameters are partitioned, so `build_again()` loads the checkpoint once more instead.
    """
    if rl_kind_of_model(policy).is_peft(policy):
        return None
    return build_again() if is_zero3(accelerator) else copy.deepcopy(policy)


@torch.no_grad()
def reference_logits(
    model: nn.Module, policy: VLM, inputs: dict[str, Tensor | None], reference: nn.Module | None
) -> Tensor:
    """Logits (B, L, V) of the frozen reference policy (the last `inputs["logits_to_keep"]` positions only,
    when given and > 0).

    `model` is the (possibly prepared) ActorCritic and `policy` its bare policy. With a LoRA policy and no
    `reference` module, the reference is the policy with its adapters disabled (peft's `disable_adapter()`):
    no second copy of the weights exists, and the connector stays frozen so nothing else differs.
    """
    kind = rl_kind_of_model(policy)
    if reference is not None:
        model_inputs = {k: v for k, v in inputs.items() if k != "logits_to_keep"}
        return kind.policy_forward(
            reference, model_inputs, logits_to_keep=inputs.get("logits_to_keep", 0)
        ).logits
    if not kind.is_peft(policy):
        raise ValueError("a full fine-tuning policy needs a separate frozen reference model")
    with kind.adapters_disabled(policy):
        logits, _ = model(**inputs, with_values=False)
    return logits
