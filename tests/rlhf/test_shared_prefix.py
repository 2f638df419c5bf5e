"""Rows that repeat a prompt (GRPO's groups) compute it once: the same tokens, log-probs and gradients as
the full per-row passes, with images and without, left-padded prompts and shuffled rows."""

import contextlib
import copy

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.args import ModelArgs
from vlmkit.data.records import Sample, Turn
from vlmkit.models.build import build_vlm
from vlmkit.rlhf.rl_kinds import COMPOSITE_RL
from vlmkit.rlhf.rollout import generate_rollout, make_prompt_batch, response_logprobs
from vlmkit.rlhf.shared_prefix import can_share, shared_prompts

G = 3


def _sample(i: int, question: str, with_image: bool) -> Sample:
    image = Image.fromarray(np.random.default_rng(i).integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
    turns = [Turn("user", question), Turn("assistant", str(i))]
    return Sample(turns, images=[image] if with_image else [], index=i)


def _prompts(with_images: bool) -> list[Sample]:
    """Three prompts of different lengths (a left-padded batch), each repeated G times in a row."""
    if with_images:
        questions = ["<image>\nWhat digit is this?", "What number is written here?\n<image>", "<image>"]
    else:
        questions = ["Which digit comes after 3?", "Say a digit.", "Count to three, please, then stop."]
    distinct = [_sample(i, q, with_images) for i, q in enumerate(questions)]
    return [s for s in distinct for _ in range(G)]


@pytest.fixture(scope="module")
def policy():
    torch.manual_seed(0)
    model, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    model.encoder.requires_grad_(False)  # as RL trains: a frozen tower whose features are cached
    return model, processor


def test_rows_of_the_same_sample_share_their_prompt_and_media():
    a, b, c = (_sample(i, "<image>", True) for i in range(3))
    samples = [b, a, b, c, a, a]  # media counts 1, 1, 1, 1, 1, 1 (items 0..5 in row order)
    shared = shared_prompts(samples, [1] * 6, prompt_length=5, device="cpu")
    assert shared.rows.tolist() == [0, 1, 3] and shared.index.tolist() == [0, 1, 0, 2, 1, 1]
    assert shared.media_rows.tolist() == [0, 1, 3] and shared.media_index.tolist() == [0, 1, 0, 2, 1, 1]
    # rows without media shift the media items; distinct prompts (or copies) share nothing
    shared = shared_prompts([a, c, a, c], [2, 0, 2, 0], prompt_length=5, device="cpu")
    assert shared.media_rows.tolist() == [0, 1] and shared.media_index.tolist() == [0, 1, 0, 1]
    assert shared_prompts([a, b, c], [1, 1, 1], 5, "cpu") is None
    assert shared_prompts([a, copy.deepcopy(a)], [1, 1], 5, "cpu") is None


@pytest.mark.parametrize("with_images", [True, False])
def test_shared_prefill_samples_the_same_tokens_and_log_probs(policy, with_images):
    """Repeated prompts (shared prefill, media encoded once) vs the same prompts as distinct copies."""
    model, processor = policy
    repeated = _prompts(with_images)
    copies = [copy.deepcopy(s) for s in repeated]
    runs = {}
    for name, samples in (("shared", repeated), ("per_row", copies)):
        batch = make_prompt_batch(samples, processor, "cpu")
        assert (batch.shared_prompts() is not None) == (name == "shared")
        torch.manual_seed(0)
        sampled = generate_rollout(model, batch, processor.tokenizer, max_new_tokens=6, return_logprobs=True)
        greedy = generate_rollout(model, batch, processor.tokenizer, max_new_tokens=6, do_sample=False)
        runs[name] = sampled, greedy
    (sampled, greedy), (sampled_ref, greedy_ref) = runs["shared"], runs["per_row"]
    assert torch.equal(sampled.response_ids, sampled_ref.response_ids)
    assert torch.equal(greedy.response_ids, greedy_ref.response_ids)
    assert (sampled.logprobs - sampled_ref.logprobs).abs().max() <= 1e-6
    if with_images:
        assert torch.allclose(sampled.media_features, sampled_ref.media_features, atol=1e-6)
    # the completions of one group differ (they are samples, not copies of one)
    assert len({tuple(r) for r in sampled.response_ids[:G].tolist()}) > 1


@pytest.mark.parametrize("with_images", [True, False])
def test_shared_prompt_pass_gives_the_full_pass_log_probs_and_gradients(policy, with_images):
    """A micro-batch of shuffled rows: log-probs and parameter gradients of the shared-prompt pass equal the
    full pass's (to float rounding), in train mode with the connector training (text-only: its dummy image)."""
    model, processor = copy.deepcopy(policy[0]).train(), policy[1]
    torch.manual_seed(0)
    batch = make_prompt_batch(_prompts(with_images), processor, "cpu")
    rollout = generate_rollout(model, batch, processor.tokenizer, max_new_tokens=5)
    sub = rollout.select([4, 0, 8, 1, 5, 3, 7])  # groups split and shuffled, as an update's micro-batch
    inputs = sub.model_inputs()
    assert inputs["shared_prompts"] is not None and can_share(model, inputs, sub.logits_to_keep, False)
    weights = torch.randn(sub.response_ids.shape, generator=torch.Generator().manual_seed(1))
    results = []
    for shared in (inputs["shared_prompts"], None):
        model.zero_grad(set_to_none=True)
        logits = COMPOSITE_RL.policy_forward(
            model, {**inputs, "shared_prompts": shared}, logits_to_keep=sub.logits_to_keep
        ).logits
        logprobs = response_logprobs(logits, sub)[0]
        (logprobs * weights * sub.response_mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        results.append((logprobs.detach(), grads))
    (lp_shared, g_shared), (lp_full, g_full) = results
    assert torch.allclose(lp_shared, lp_full, atol=1e-6)
    assert g_shared.keys() == g_full.keys() and any(n.startswith("connector") for n in g_full)
    scale = max(g.abs().max().item() for g in g_full.values())
    diff = max((g_shared[n] - g_full[n]).abs().max().item() for n in g_full)
    assert scale > 1e-4 and diff <= 1e-5 * scale, (diff, scale)


def test_the_full_pass_runs_where_sharing_would_change_the_output(policy):
    """Hidden states (PPO's value head), every position's logits, parameters partitioned across processes, or
    activation checkpointing in training (no KV cache there): no sharing."""
    model, processor = copy.deepcopy(policy[0]).train(), policy[1]
    torch.manual_seed(0)
    rollout = generate_rollout(
        model, make_prompt_batch(_prompts(True), processor, "cpu"), processor.tokenizer, max_new_tokens=3
    )
    inputs, keep = rollout.model_inputs(), rollout.logits_to_keep
    assert can_share(model, inputs, keep, output_hidden_states=False)
    assert not can_share(model, inputs, keep, output_hidden_states=True)
    assert not can_share(model, inputs, 0, output_hidden_states=False)
    assert not can_share(model, {**inputs, "shared_prompts": None}, keep, output_hidden_states=False)
    param = next(model.parameters())
    param.ds_id = 0  # DeepSpeed ZeRO-3's mark: each process must run the same passes
    assert not can_share(model, inputs, keep, output_hidden_states=False)
    del param.ds_id
    model.language_model.gradient_checkpointing_enable()
    assert not can_share(model, inputs, keep, output_hidden_states=False)
    logits = COMPOSITE_RL.policy_forward(model, inputs, logits_to_keep=keep).logits
    assert logits.shape[:2] == (len(rollout), keep)


def test_a_lora_policy_and_its_adapters_off_reference_share_prompts_alike(policy):
    """peft's model passes the KV cache through: with adapters on (the policy) and off (the reference)."""
    from vlmkit.config.args import LoraArgs
    from vlmkit.models.build import apply_lora

    model = apply_lora(copy.deepcopy(policy[0]), LoraArgs(use_lora=True, lora_r=4, lora_dropout=0.0))
    with torch.no_grad():  # adapters that change the output (peft starts them at zero)
        for name, param in model.language_model.named_parameters():
            if "lora_B" in name:
                param.normal_(0, 0.5, generator=torch.Generator().manual_seed(2))
    processor = policy[1]
    torch.manual_seed(0)
    batch = make_prompt_batch(_prompts(True), processor, "cpu")
    rollout = generate_rollout(model, batch, processor.tokenizer, max_new_tokens=4)
    inputs, keep = rollout.model_inputs(), rollout.logits_to_keep
    assert can_share(model, inputs, keep, output_hidden_states=False)
    outputs = []
    for adapters in (contextlib.nullcontext, lambda: COMPOSITE_RL.adapters_disabled(model)):
        for shared in (inputs["shared_prompts"], None):
            with torch.no_grad(), adapters():
                pass_inputs = {**inputs, "shared_prompts": shared}
                logits = COMPOSITE_RL.policy_forward(model, pass_inputs, logits_to_keep=keep).logits
            outputs.append(response_logprobs(logits, rollout)[0])
    on_shared, on_full, off_shared, off_full = outputs
    assert torch.allclose(on_shared, on_full, atol=1e-6) and torch.allclose(off_shared, off_full, atol=1e-6)
    assert (on_full - off_full).abs().max() > 1e-3  # the adapters matter, so both paths were tested
