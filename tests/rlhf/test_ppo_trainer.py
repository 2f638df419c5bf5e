"""The PPO loop on a tiny VLM: update direction, reference = starting policy (LoRA: no extra weights),
accumulation invariance, and exact resume of policy, value model, optimizer, KL controller and RNG."""

import copy
import json
import math
import shutil

import numpy as np
import pytest
import torch
from PIL import Image
from safetensors.torch import load_file

from vlmkit.config.args import ModelArgs
from vlmkit.config.ppo import PPOConfig
from vlmkit.data.records import Sample, Turn
from vlmkit.models.build import apply_lora, build_vlm
from vlmkit.rlhf import ppo_trainer
from vlmkit.rlhf.ppo_trainer import PPOTrainer
from vlmkit.rlhf.rewards import FunctionReward
from vlmkit.rlhf.value_model import build_actor_critic, frozen_reference
from vlmkit.training import checkpoint as ckpt
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.stepping import NonFiniteLossError

PARTS = [
    "--model_name_or_path",
    "none",
    "--vision_tower",
    "vlmkit-tiny/clip-vision",
    "--language_model",
    "vlmkit-tiny/llama",
]


def _prompts(n: int = 16) -> list[Sample]:
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
        out.append(
            Sample(
                [Turn("user", "<image>\nWhat digit is this?"), Turn("assistant", str(i % 2))],
                [image],
                index=i,
            )
        )
    return out


def odd_reference(completions, references, prompts):
    """1 for prompts whose reference is "1", else 0: a reward the policy can only read from the prompt order."""
    return [float(r == "1") for r in references]


@pytest.fixture(scope="module")
def base_policy():
    torch.manual_seed(0)
    policy, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    return policy, processor


def make_trainer(base_policy, tmp_path, lora: bool = False, **overrides) -> PPOTrainer:
    fields = dict(
        reward_funcs=[f"{__name__}:odd_reference"], output_dir=str(tmp_path), per_device_train_batch_size=4,
        gradient_accumulation_steps=1, num_mini_batches=2, num_ppo_epochs=2, max_new_tokens=3,
        learning_rate=1e-3, mixed_precision="no", report_to=["none"], seed=3, init_kl_coef=0.1, kl_target=0.5,
        kl_horizon=100, kl_controller="adaptive",
    )  # fmt: skip
    fields.update(overrides)
    cfg = PPOConfig(**fields)
    accelerator = make_accelerator(
        output_dir=cfg.output_dir,
        gradient_accumulation_steps=cfg.gradient_accumulation_steps,
        mixed_precision="no",
    )
    policy, processor = copy.deepcopy(base_policy[0]), base_policy[1]
    if lora:
        policy = apply_lora(policy, cfg)
    reference = frozen_reference(policy, None, accelerator)
    model = build_actor_critic(policy, "policy_head")
    return PPOTrainer(
        cfg, accelerator, model, processor, FunctionReward(odd_reference), _prompts(), reference=reference
    )


def _sequence_logprobs(trainer, rollout):
    with torch.no_grad():
        logprobs, _, _ = trainer.forward(rollout)
    return (logprobs * rollout.response_mask).sum(1)


def test_update_moves_log_probs_in_the_direction_of_the_advantages(base_policy, tmp_path):
    trainer = make_trainer(base_policy, tmp_path)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    assert sorted(set(exp.scores.tolist())) == [0.0, 1.0]
    before = _sequence_logprobs(trainer, exp.rollout)
    assert torch.allclose(before, (exp.logprobs * exp.mask).sum(1), atol=1e-5)
    stats = trainer.update(exp, 0)
    change = _sequence_logprobs(trainer, exp.rollout) - before
    rewarded = exp.scores > 0
    assert change[rewarded].mean() > 0 > change[~rewarded].mean(), (change, exp.scores)
    assert stats["clip_fraction"] >= 0 and stats["approx_kl"] > 0 and np.isfinite(stats["value_loss"])


@pytest.mark.parametrize("lora", [False, True])
def test_frozen_encoders_run_once_per_rollout_batch(base_policy, tmp_path, lora):
    """Generation encodes the media once; the policy, value and reference passes and every PPO epoch reuse
    the features (the reference copy's tower, or the LoRA policy's with adapters off, never runs)."""
    trainer = make_trainer(base_policy, tmp_path, lora=lora)
    towers = [trainer.bare.policy.encoder] + ([trainer.reference.encoder] if trainer.reference else [])
    calls = []

    def count(module, args, kwargs, output):
        calls.append((args[0] if args else next(iter(kwargs.values()))).shape[0])

    hooks = [t.register_forward_hook(count, with_kwargs=True) for t in towers]
    try:
        torch.manual_seed(0)
        exp = trainer.make_experience(trainer.prompts_for_step(0))
        trainer.update(exp, 0)
    finally:
        for h in hooks:
            h.remove()
    assert calls == [trainer.cfg.rollout_batch_size]  # one call, on the step's images


@pytest.mark.parametrize("lora", [False, True])
def test_reference_is_the_starting_policy(base_policy, tmp_path, lora):
    """KL is exactly 0 before any update; after updates the reference still gives the starting log-probs."""
    trainer = make_trainer(base_policy, tmp_path, lora=lora)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    assert torch.equal(exp.ref_logprobs, exp.logprobs) and float(exp.kl.abs().max()) == 0.0
    for _ in range(2):
        trainer.update(exp, 0)
    ref_after = trainer.ref_logprobs(exp.rollout)
    policy_after, _, _ = trainer.forward(exp.rollout)
    mask = exp.mask
    assert torch.allclose(ref_after[mask], exp.ref_logprobs[mask], atol=1e-5)
    assert (policy_after[mask] - exp.logprobs[mask]).abs().max() > 1e-3  # the policy did move


def _storage_bytes(*modules) -> int:
    """Bytes of distinct parameter/buffer storage across modules (shared tensors counted once)."""
    seen = {}
    for module in modules:
        if module is None:
            continue
        for t in list(module.parameters()) + list(module.buffers()):
            seen[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    return sum(seen.values())


def test_lora_reference_costs_no_extra_memory(base_policy, tmp_path):
    full = make_trainer(base_policy, tmp_path / "full")
    lora = make_trainer(base_policy, tmp_path / "lora", lora=True, lora_r=4)
    policy_bytes = _storage_bytes(base_policy[0])
    # Full fine-tuning keeps a frozen copy of the whole starting policy ...
    assert _storage_bytes(full.bare, full.reference) >= _storage_bytes(full.bare) + policy_bytes
    # ... LoRA keeps none: the reference is the same weights with the adapters disabled.
    assert lora.reference is None
    extra = _storage_bytes(lora.bare) - policy_bytes  # adapters + value head only
    adapters = sum(p.numel() * p.element_size() for n, p in lora.bare.named_parameters() if "lora_" in n)
    head = sum(p.numel() * p.element_size() for p in lora.bare.value_head.parameters())
    assert extra == adapters + head and extra < 0.2 * policy_bytes


def _first_step_gradients(trainer, exp) -> dict:
    """Gradients (after clipping) that the first optimizer step of `update` applies."""
    grads, step = {}, trainer.optimizer.step

    def recording_step(*args, **kwargs):
        if trainer.accelerator.sync_gradients and not grads:
            grads.update(
                {n: p.grad.clone() for n, p in trainer.bare.named_parameters() if p.grad is not None}
            )
        return step(*args, **kwargs)

    trainer.optimizer.step = recording_step
    trainer.update(exp, 0)
    return grads


def test_batch_times_accumulation_gives_the_same_update(base_policy, tmp_path):
    """4 x 1 and 1 x 4 (micro-batch x accumulation) per optimizer step: the same gradient (token-mean loss
    over the whole mini-batch), not the mean of per-micro-batch means."""
    # One at a time: Accelerate keeps the accumulation setting in process-wide state.
    a = make_trainer(base_policy, tmp_path / "a", per_device_train_batch_size=4, num_ppo_epochs=1)
    torch.manual_seed(0)
    exp = a.make_experience(a.prompts_for_step(0))
    exp.rollout.response_mask[::2, 1:] = False  # responses of different lengths: the token weighting matters
    grads_a = _first_step_gradients(a, exp)
    b = make_trainer(
        base_policy,
        tmp_path / "b",
        per_device_train_batch_size=1,
        gradient_accumulation_steps=4,
        num_ppo_epochs=1,
    )
    grads_b = _first_step_gradients(b, exp)
    assert grads_a.keys() == grads_b.keys() and len(grads_a) > 10
    scale = max(g.abs().max().item() for g in grads_a.values())
    diff = max((grads_a[n] - grads_b[n]).abs().max().item() for n in grads_a)
    assert scale > 1e-4 and diff <= 1e-6 * max(1.0, scale), (diff, scale)


@pytest.mark.slow
def test_resumed_run_equals_uninterrupted_run(recipe, tmp_path):
    """Steps 3-4 after resuming from checkpoint-2 match the uninterrupted run: policy, value head, KL
    coefficient and the sampled rollouts (RNG) all continue exactly."""
    common = PARTS + [
        "--reward_function", f"{__name__}:odd_reference", "--data_path", "vlmkit-data/digits/prompts_train.json",
        "--eval_data_path", "none", "--per_device_train_batch_size", "4", "--num_mini_batches", "2",
        "--num_ppo_epochs", "2", "--max_new_tokens", "3", "--learning_rate", "1e-3", "--max_steps", "4",
        "--kl_controller", "adaptive", "--init_kl_coef", "0.1", "--kl_target", "0.05", "--kl_horizon", "50",
        "--report_to", "none", "--seed", "5",
    ]  # fmt: skip
    full, resumed = tmp_path / "full", tmp_path / "resumed"
    recipe("ppo").main(common + ["--output_dir", str(full), "--save_steps", "2"])
    resumed.mkdir()
    shutil.copytree(full / "checkpoint-2", resumed / "checkpoint-2")
    recipe("ppo").main(common + ["--output_dir", str(resumed), "--resume_from_checkpoint", "latest"])
    log_full = [json.loads(x) for x in (full / "train_log.jsonl").read_text().splitlines()]
    log_resumed = [json.loads(x) for x in (resumed / "train_log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log_resumed] == [3, 4]  # it really resumed: steps 1-2 were not run again
    for key in ("score_mean", "kl", "kl_coef", "response_length", "value_loss", "entropy"):
        for a, b in zip(log_full[2:], log_resumed):
            assert abs(a[key] - b[key]) <= 1e-6, (key, a[key], b[key])
    assert log_full[2]["kl_coef"] != 0.1  # the adaptive controller's state was carried over, not reset
    for name in (
        "language_model/model.safetensors",
        "connector.safetensors",
        "value_model/value_head.safetensors",
    ):
        a, b = load_file(str(full / name)), load_file(str(resumed / name))
        assert max((a[k] - b[k]).abs().max().item() for k in a) <= 1e-6, name


def _poison_policy_loss(monkeypatch, trainer, bad_calls=frozenset(), from_call=None) -> list[dict]:
    """Make the PPO policy loss NaN on the chosen calls (one call per micro-batch); returns the policy's
    weights as they were at each call."""
    real, snapshots = ppo_trainer.policy_loss, []

    def policy_loss(*args, **kwargs):
        snapshots.append({k: v.detach().clone() for k, v in trainer.bare.state_dict().items()})
        loss, stats = real(*args, **kwargs)
        n = len(snapshots)
        if n in bad_calls or (from_call is not None and n >= from_call):
            loss = loss * math.nan
        return loss, stats

    monkeypatch.setattr(ppo_trainer, "policy_loss", policy_loss)
    return snapshots


def _same(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def test_a_nan_update_is_skipped_counted_and_logged_like_in_sft(base_policy, tmp_path, monkeypatch):
    # 2 steps x 2 PPO epochs x 2 mini-batches = 8 updates of one micro-batch each; the 3rd one is NaN.
    trainer = make_trainer(base_policy, tmp_path, max_steps=2, save_steps=0, logging_steps=1)
    snaps = _poison_policy_loss(monkeypatch, trainer, bad_calls={3})
    result = trainer.train()
    assert len(snaps) == 8 and result.bad_steps == 1 and result.global_step == 2
    assert [r.get("skipped") for r in result.history] == ["bad", None]
    assert result.history[0]["skipped_updates"] == 1 and "skipped_updates" not in result.history[1]
    assert _same(snaps[2], snaps[3])  # the NaN update changed nothing
    assert not _same(snaps[3], snaps[4])  # the next one trained again
    assert all(torch.isfinite(v).all() for v in trainer.bare.state_dict().values())
    logged = [json.loads(x) for x in (tmp_path / "train_log.jsonl").read_text().splitlines()]
    assert [r.get("skipped") for r in logged] == ["bad", None]


def test_consecutive_nan_updates_stop_ppo_and_keep_the_checkpoint(base_policy, tmp_path, monkeypatch):
    trainer = make_trainer(base_policy, tmp_path, max_steps=6, save_steps=1, max_bad_steps=3)
    _poison_policy_loss(monkeypatch, trainer, from_call=9)  # steps 1-2 are clean (4 updates each)
    with pytest.raises(NonFiniteLossError) as info:
        trainer.train()
    message = str(info.value)
    assert "3 consecutive steps" in message and "step 3" in message
    assert str(tmp_path / "checkpoint-2") in message
    assert [p.name for p in ckpt.list_checkpoints(tmp_path)] == ["checkpoint-1", "checkpoint-2"]
