"""PPO value models: a head on the policy, or a critic started from a reward model; what trains; saving."""

import copy

import pytest
import torch

from vlmkit.config.args import LoraArgs, ModelArgs
from vlmkit.models.build import apply_lora, build_vlm
from vlmkit.rlhf.reward_model import RewardModel
from vlmkit.rlhf.value_model import (
    ActorCritic,
    build_actor_critic,
    load_critic,
    load_value_head,
    save_value_model,
)

PARTS = ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")


@pytest.fixture(scope="module")
def policy_and_processor():
    torch.manual_seed(0)
    return build_vlm(PARTS, is_trainable=False)


def _inputs(model, processor, n=2):
    torch.manual_seed(1)
    media_id, k = model.config.media_token_id, model.config.num_media_tokens
    ids = torch.randint(10, 200, (n, k + 8))
    ids[ids == media_id] = 11
    ids[:, 2 : 2 + k] = media_id
    mask = torch.ones_like(ids)
    mask[1, -3:] = 0  # right padding on row 1
    size = model.encoder.config.image_size
    return ids, mask, torch.rand(n, 3, size, size)


def test_policy_head_gives_policy_logits_and_zero_initial_values(policy_and_processor):
    policy, processor = policy_and_processor
    policy = copy.deepcopy(policy)
    model = build_actor_critic(policy, "policy_head")
    ids, mask, media = _inputs(policy, processor)
    with torch.no_grad():
        logits, values = model(ids, mask, media=media)
        expected = policy(ids, mask, media).logits
    assert torch.equal(logits, expected)
    assert values.shape == ids.shape and bool((values == 0).all())
    names = {n for n, p in model.named_parameters() if p.requires_grad}
    assert {"value_head.weight", "value_head.bias"} <= names
    assert not any(n.startswith("policy.encoder.") for n in names)  # the encoder stays frozen


def test_critic_values_at_the_last_token_equal_the_reward_model_score(policy_and_processor, tmp_path):
    policy, processor = policy_and_processor
    torch.manual_seed(2)
    reward_model = RewardModel(copy.deepcopy(policy))
    reward_model.save_pretrained(tmp_path / "rm")
    model = build_actor_critic(copy.deepcopy(policy), "reward_model", critic_path=str(tmp_path / "rm"))
    ids, mask, media = _inputs(policy, processor)
    with torch.no_grad():
        _, values = model(ids, mask, media=media)
        scores = reward_model(ids, mask, media)
    last = mask.sum(1) - 1
    assert torch.allclose(values[torch.arange(2), last], scores, atol=1e-5)
    assert all(p.requires_grad for p in model.critic.score_head.parameters())
    # the critic is a reward-model checkpoint again after training
    save_value_model(model, tmp_path / "out")
    reloaded = RewardModel.from_pretrained(tmp_path / "out" / "value_model")
    assert torch.equal(reloaded.score_head.weight, model.critic.score_head.weight)


def test_critic_from_a_plain_policy_checkpoint_gets_a_fresh_head(policy_and_processor, tmp_path):
    policy, _ = policy_and_processor
    policy.save_pretrained(tmp_path / "policy")
    critic = load_critic(tmp_path / "policy")
    assert isinstance(critic, RewardModel) and critic.score_head.out_features == 1


def test_lora_policy_trains_only_adapters_and_value_head(policy_and_processor, tmp_path):
    policy, processor = policy_and_processor
    lora_policy = apply_lora(copy.deepcopy(policy), LoraArgs(use_lora=True, lora_r=4))
    model = build_actor_critic(lora_policy, "policy_head")
    trainable = [n for n, p in model.named_parameters() if p.requires_grad]
    assert trainable and all("lora_" in n or n.startswith("value_head.") for n in trainable)
    model.value_head.weight.data.normal_()
    save_value_model(model, tmp_path)
    assert torch.equal(load_value_head(tmp_path).weight, model.value_head.weight)


def test_actor_critic_takes_at_most_one_value_model(policy_and_processor):
    policy, _ = policy_and_processor
    head = torch.nn.Linear(4, 1)
    with pytest.raises(ValueError, match="not both"):
        ActorCritic(policy, value_head=head, critic=object())
    policy_only = ActorCritic(policy)  # critic-free (GRPO): the policy alone
    assert policy_only.kind == "none"
    with pytest.raises(ValueError, match="no value model"):
        policy_only(torch.ones(1, 2, dtype=torch.long), torch.ones(1, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="valid: policy_head, reward_model"):
        build_actor_critic(copy.deepcopy(policy), "critic")
