"""Reward model: Bradley-Terry maths by hand, last-token scoring, save/load, what trains with LoRA."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.rlhf import RewardModelConfig
from vlmkit.data.preference import PreferenceCollator, PreferenceDataset
from vlmkit.data.records import PreferenceSample, Turn
from vlmkit.rlhf.reward_model import (
    RewardLoss,
    RewardModel,
    bradley_terry_loss,
    build_reward_model,
    evaluate_pairs,
    last_token_index,
    load_reward_model,
    pairwise_stats,
)
from vlmkit.training.freeze import set_trainable


def nls(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


# ---- pure maths ------------------------------------------------------------------------------------
def test_bradley_terry_loss_matches_hand_values():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss = bradley_terry_loss(chosen, rejected)
    assert loss.tolist() == pytest.approx([nls(1.0), nls(-1.0)], abs=1e-6)
    assert loss.tolist() == pytest.approx([0.313262, 1.313262], abs=1e-6)
    with_margin = bradley_terry_loss(chosen, rejected, margin=0.5)
    assert with_margin.tolist() == pytest.approx([nls(0.5), nls(-1.5)], abs=1e-6)
    per_pair_margin = bradley_terry_loss(chosen, rejected, margin=torch.tensor([1.0, -1.0]))
    assert per_pair_margin.tolist() == pytest.approx([nls(0.0), nls(0.0)], abs=1e-6)


def test_reward_centering_adds_coef_times_squared_sum():
    chosen, rejected = torch.tensor([2.0, 0.0]), torch.tensor([1.0, 1.0])
    loss = bradley_terry_loss(chosen, rejected, center_coef=0.01)
    assert loss.tolist() == pytest.approx([nls(1.0) + 0.01 * 9.0, nls(-1.0) + 0.01 * 1.0], abs=1e-6)
    # The batch mean of the extra term is coef * mean((r_c + r_r)^2) = 0.01 * 5.
    extra = loss.mean() - bradley_terry_loss(chosen, rejected).mean()
    assert float(extra) == pytest.approx(0.05, abs=1e-6)


def test_bradley_terry_gradient_pushes_chosen_up_and_rejected_down():
    chosen = torch.tensor([0.0], requires_grad=True)
    rejected = torch.tensor([0.0], requires_grad=True)
    bradley_terry_loss(chosen, rejected).sum().backward()
    assert float(chosen.grad) == pytest.approx(-0.5) and float(rejected.grad) == pytest.approx(0.5)


def test_pairwise_stats_and_last_token_index():
    stats = pairwise_stats(torch.tensor([1.0, 0.0, 3.0, 2.0]), torch.tensor([0.0, 1.0, 1.0, 2.0]))
    assert stats == pytest.approx({"accuracy": 0.5, "mean_margin": 0.5})
    mask = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1], [1, 0, 0, 0]])
    assert last_token_index(mask).tolist() == [2, 3, 0]
    with pytest.raises(ValueError, match="right-padded"):
        last_token_index(torch.tensor([[0, 1, 1], [1, 1, 1]]))


# ---- the model --------------------------------------------------------------------------------------
def tiny_cfg(**overrides) -> RewardModelConfig:
    return RewardModelConfig(
        vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama", **overrides
    )


def pairs(n: int = 4) -> list[PreferenceSample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
        chosen, rejected = ("The digit is 7.", "The digit is 1.") if i % 2 else ("7", "4")
        prompt = [Turn("user", "<image>\nWhat digit is this?")]
        out.append(PreferenceSample(prompt, chosen, rejected, [img], [], "prefs", i))
    return out


@pytest.fixture(scope="module")
def batch_and_data():
    torch.manual_seed(0)
    model, processor = build_reward_model(tiny_cfg())
    dataset = PreferenceDataset(pairs(), processor, max_length=128)
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    return model, processor, dataset, collate, collate([dataset[i] for i in range(len(dataset))])


def test_score_is_read_at_the_last_real_token_whatever_the_padding(batch_and_data):
    model, _, _, _, batch = batch_and_data
    model.eval()
    with torch.no_grad():
        scores = model(batch["input_ids"], batch["attention_mask"], batch["media"])
        assert scores.shape == (batch["input_ids"].shape[0],) and scores.dtype == torch.float32
        # The shortest row scored alone (no padding) gives the same score as in the padded batch.
        row = int(batch["attention_mask"].sum(1).argmin())
        n = int(batch["attention_mask"][row].sum())
        media_row = row % batch["num_pairs"]
        alone = model(
            batch["input_ids"][row : row + 1, :n],
            batch["attention_mask"][row : row + 1, :n],
            batch["media"][media_row : media_row + 1],
        )
        assert float(alone) == pytest.approx(float(scores[row]), abs=1e-5)
        # And it equals the head applied to that position of the per-token scores.
        per_token = model.token_scores(batch["input_ids"], batch["attention_mask"], batch["media"])
        assert float(per_token[row, n - 1]) == pytest.approx(float(scores[row]), abs=1e-5)


def test_save_and_load_give_identical_scores(batch_and_data, tmp_path):
    model, processor, dataset, collate, batch = batch_and_data
    with torch.no_grad():
        model.score_head.bias.fill_(0.25)  # something a fresh head would not have
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "score_head.safetensors").is_file() and (tmp_path / "reward_model.json").is_file()
    loaded, loaded_processor = load_reward_model(tmp_path)
    assert not loaded.training and not any(p.requires_grad for p in loaded.parameters())
    model.eval()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"], batch["media"])
        got = loaded(batch["input_ids"], batch["attention_mask"], batch["media"])
    assert torch.allclose(expected, got, atol=1e-6)
    assert loaded_processor.spec == processor.spec
    assert evaluate_pairs(loaded, dataset, collate)["mean_margin"] == pytest.approx(
        evaluate_pairs(model, dataset, collate)["mean_margin"], abs=1e-5
    )


def test_loading_a_vlm_without_head_says_what_is_missing(tmp_path):
    (tmp_path / "vlmkit_config.json").write_text("{}")
    with pytest.raises(FileNotFoundError, match="score_head.safetensors"):
        RewardModel.from_pretrained(tmp_path)


def test_lora_reward_model_trains_only_adapters_and_head_and_round_trips(tmp_path):
    torch.manual_seed(0)
    model, processor = build_reward_model(tiny_cfg(), tiny_cfg(use_lora=True, lora_r=4))
    set_trainable(model, "reward", tune_connector=False)
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n or n.startswith("score_head.") for n in trainable)
    assert {"score_head.weight", "score_head.bias"} <= trainable

    dataset = PreferenceDataset(pairs(), processor, max_length=128)
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    batch = collate([dataset[i] for i in range(len(dataset))])
    before = {n: p.detach().clone() for n, p in model.named_parameters()}
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    for _ in range(2):  # LoRA B starts at zero, so A only moves from the second step on
        loss, extras = RewardLoss(center_coef=0.01)(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    assert set(extras) == {"pairwise_accuracy", "mean_margin"}
    changed = {n for n, p in model.named_parameters() if not torch.equal(p, before[n])}
    assert changed == trainable

    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    assert (tmp_path / "language_model" / "adapter_config.json").is_file()
    loaded, _ = load_reward_model(tmp_path)
    model.eval()
    with torch.no_grad():
        expected = model(batch["input_ids"], batch["attention_mask"], batch["media"])
        got = loaded(batch["input_ids"], batch["attention_mask"], batch["media"])
    assert torch.allclose(expected, got, atol=1e-5)
