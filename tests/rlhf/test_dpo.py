"""DPO: the loss and sequence log-probs by hand, and references that really are the starting policy."""

import math

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.rlhf import DPOConfig
from vlmkit.data.preference import PreferenceCollator, PreferenceDataset
from vlmkit.data.records import PreferenceSample, Turn
from vlmkit.models.build import build_vlm
from vlmkit.rlhf.dpo import (
    DPOLoss,
    ReferencePolicy,
    answer_lengths,
    batch_logps,
    build_dpo_policy,
    dpo_loss,
    evaluate_dpo,
    length_normalized_nll,
    reward_stats,
    sequence_logps,
)


def nls(x: float) -> float:
    """-log sigmoid(x)."""
    return math.log1p(math.exp(-x))


# ---- pure maths ------------------------------------------------------------------------------------
def test_dpo_loss_matches_hand_values():
    pc, pr = torch.tensor([-1.0, -2.0]), torch.tensor([-3.0, -1.0])
    rc, rr = torch.tensor([-2.0, -2.0]), torch.tensor([-2.0, -2.0])
    loss, chosen_r, rejected_r = dpo_loss(pc, pr, rc, rr, beta=0.5)
    # h = (pc - pr) - (rc - rr) = [2, -1]; loss = -log sigmoid(beta * h)
    assert loss.tolist() == pytest.approx([nls(1.0), nls(-0.5)], abs=1e-6)
    assert loss.tolist() == pytest.approx([0.313262, 0.974077], abs=1e-6)
    assert chosen_r.tolist() == pytest.approx([0.5, 0.0])
    assert rejected_r.tolist() == pytest.approx([-0.5, 0.5])
    smoothed, _, _ = dpo_loss(pc, pr, rc, rr, beta=0.5, label_smoothing=0.1)
    assert smoothed.tolist() == pytest.approx(
        [0.9 * nls(1.0) + 0.1 * nls(-1.0), 0.9 * nls(-0.5) + 0.1 * nls(0.5)], abs=1e-6
    )
    stats = reward_stats(chosen_r, rejected_r)
    assert stats == pytest.approx({"reward_accuracy": 0.5, "reward_margin": 0.25})


def test_dpo_loss_is_log2_at_the_reference_and_its_gradient_favours_chosen():
    pc = torch.tensor([-4.0], requires_grad=True)
    pr = torch.tensor([-4.0], requires_grad=True)
    loss, _, _ = dpo_loss(pc, pr, torch.tensor([-4.0]), torch.tensor([-4.0]), beta=0.1)
    assert loss.item() == pytest.approx(math.log(2))
    loss.sum().backward()
    assert float(pc.grad) == pytest.approx(-0.05) and float(pr.grad) == pytest.approx(0.05)
    with pytest.raises(ValueError, match="label_smoothing"):
        dpo_loss(pc, pr, pc, pr, beta=0.1, label_smoothing=0.5)


def test_sequence_logps_sums_only_the_answer_tokens():
    # Vocabulary of 3; position t predicts token t + 1.
    logits = torch.tensor([[[0.0, 0.0, 0.0], [2.0, 0.0, 0.0], [0.0, 1.0, 0.0], [5.0, 5.0, 5.0]]])
    labels = torch.tensor([[-100, -100, 0, 1]])
    lse1 = math.log(math.exp(2.0) + 2.0)
    lse2 = math.log(math.exp(1.0) + 2.0)
    expected = (2.0 - lse1) + (1.0 - lse2)  # log p(0 | pos 1) + log p(1 | pos 2)
    assert sequence_logps(logits, labels).tolist() == pytest.approx([expected], abs=1e-6)
    assert sequence_logps(logits, torch.full((1, 4), -100)).tolist() == [0.0]


def test_rpo_term_is_the_per_token_nll_of_the_chosen_answer():
    labels = torch.tensor([[-100, 5, 6, -100], [-100, -100, 7, -100]])
    lengths = answer_lengths(labels)  # after the one-token shift: [5, 6] and [7]
    assert lengths.tolist() == [2, 1]
    nll = length_normalized_nll(torch.tensor([-4.0, -3.0]), lengths)
    assert nll.tolist() == pytest.approx([2.0, 3.0])


# ---- references -------------------------------------------------------------------------------------
def tiny_cfg(**overrides) -> DPOConfig:
    return DPOConfig(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama", **overrides)


def batch_for(processor, n: int = 4) -> dict:
    rng = np.random.default_rng(1)
    prefs = []
    for i in range(n):
        img = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
        prompt = [Turn("user", "<image>\nWhat digit is this?")]
        prefs.append(PreferenceSample(prompt, str(i), str(i + 1), [img], [], "prefs", i))
    dataset = PreferenceDataset(prefs, processor, max_length=128)
    collate = PreferenceCollator(processor.tokenizer.pad_token_id)
    return dataset, collate, collate([dataset[i] for i in range(n)])


def sgd_steps(model, loss_fn, batch, steps=2, lr=0.5):
    model.train()
    optimizer = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=lr)
    for _ in range(steps):
        loss, extras = loss_fn(model, batch)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return extras


@pytest.mark.slow
def test_lora_reference_is_the_model_with_adapters_off():
    torch.manual_seed(0)
    model, processor, reference = build_dpo_policy(tiny_cfg(use_lora=True, lora_r=4, lora_dropout=0.0))
    assert reference.adapters_off and reference.copy is None
    trainable = {n for n, p in model.named_parameters() if p.requires_grad}
    assert trainable and all("lora_" in n for n in trainable)  # connector frozen too
    dataset, collate, batch = batch_for(processor)
    start = reference.logps(model, batch)
    loss_fn = DPOLoss(reference, beta=0.1)
    loss, _ = loss_fn(model, batch)
    assert float(loss) == pytest.approx(4 * math.log(2), abs=1e-4)  # fresh adapters: policy == reference

    rpo_loss, rpo_extras = DPOLoss(reference, beta=0.1, rpo_alpha=0.5)(model, batch)
    b = batch["num_pairs"]
    nll = length_normalized_nll(start[:b], answer_lengths(batch["labels"][:b]))
    assert rpo_loss.item() == pytest.approx(4 * math.log(2) + 0.5 * nll.sum().item(), rel=1e-4)
    assert rpo_extras["chosen_nll"] == pytest.approx(nll.mean().item(), rel=1e-4)

    sgd_steps(model, loss_fn, batch)
    assert torch.allclose(reference.logps(model, batch), start, atol=1e-5)  # the reference did not move
    with reference.as_model(model) as starting_policy:  # what "before" metrics are measured on
        assert torch.allclose(batch_logps(starting_policy.eval(), batch), start, atol=1e-5)
    assert not torch.allclose(batch_logps(model, batch), start, atol=1e-4)  # adapters back on afterwards
    scores = evaluate_dpo(model, reference, dataset, collate, beta=0.1)
    assert scores["loss"] < math.log(2) and scores["reward_accuracy"] > 0.5


def test_full_reference_is_a_frozen_copy_of_the_start():
    torch.manual_seed(0)
    model, processor, reference = build_dpo_policy(tiny_cfg())
    assert reference.copy is not None and not any(p.requires_grad for p in reference.copy.parameters())
    assert any(p.requires_grad for p in model.connector.parameters())
    _, _, batch = batch_for(processor)
    start = reference.logps(model, batch)
    extras = sgd_steps(model, DPOLoss(reference, beta=0.1), batch, lr=0.05)
    assert set(extras) == {"reward_accuracy", "reward_margin"}
    with torch.no_grad():
        moved = batch_logps(model.eval(), batch)
    assert not torch.allclose(moved, start, atol=1e-4)  # the policy learned something...
    assert torch.allclose(reference.logps(model, batch), start, atol=1e-6)  # ...the reference did not
    with reference.as_model(model) as starting_policy:
        assert starting_policy is reference.copy


def test_lora_dpo_refuses_a_lora_checkpoint_as_start(tmp_path):
    model, processor = build_vlm(tiny_cfg(), tiny_cfg(use_lora=True, lora_r=4))
    model.save_pretrained(tmp_path)
    processor.save_pretrained(tmp_path)
    cfg = DPOConfig(model_name_or_path=str(tmp_path), use_lora=True)
    with pytest.raises(ValueError, match="LoRA checkpoint.*Merge"):
        build_dpo_policy(cfg)
    with pytest.raises(ValueError, match="adapters"):
        ReferencePolicy(build_vlm(tiny_cfg())[0], adapters_off=True)


def test_full_dpo_under_zero3_is_refused_with_the_lora_way_out(monkeypatch):
    import vlmkit.rlhf.dpo as dpo

    monkeypatch.setattr(dpo, "is_deepspeed_zero3_enabled", lambda: True)
    with pytest.raises(ValueError, match="ZeRO-3 needs --use_lora true"):
        build_dpo_policy(tiny_cfg())
