"""Reward sources for PPO: digit_match, loading `module:function`, and scoring rollouts with a function."""

import pytest
import torch

from vlmkit.data.records import Sample, Turn
from vlmkit.rlhf.rewards import FunctionReward, digit_match, load_reward_function, prompt_text
from vlmkit.rlhf.rollout import Rollout


def test_digit_match_scores_normalised_exact_matches():
    completions = ["7", "Seven.", "the answer is 7", "3", "", "8"]
    references = ["7", "7", "7", "7", "7", None]
    assert digit_match(completions, references) == [1.0, 1.0, 0.0, 0.0, 0.0, 0.0]


def test_load_reward_function_by_name_and_errors_that_say_what_to_fix():
    assert load_reward_function("vlmkit.rlhf.rewards:digit_match") is digit_match
    with pytest.raises(ValueError, match="module:function"):
        load_reward_function("vlmkit.rlhf.rewards.digit_match")
    with pytest.raises(ValueError, match="cannot import"):
        load_reward_function("vlmkit.no_such_module:f")
    with pytest.raises(ValueError, match="no function 'nope'"):
        load_reward_function("vlmkit.rlhf.rewards:nope")


def _rollout(texts, references):
    samples = [
        Sample([Turn("user", f"question {i}"), Turn("assistant", r or "x")]) for i, r in enumerate(references)
    ]
    n = len(texts)
    z = torch.zeros(n, 1, dtype=torch.long)
    return Rollout(z, z, z, z.bool(), z[:, 0].bool(), None, [0] * n, [], samples, references, texts)


def test_function_reward_passes_completions_references_and_prompts():
    seen = {}

    def spy(completions, references, prompts):
        seen.update(completions=completions, references=references, prompts=prompts)
        return [len(c) for c in completions]

    scores = FunctionReward(spy)(_rollout(["a", "bcd"], ["1", "2"]))
    assert scores.dtype == torch.float32 and scores.tolist() == [1.0, 3.0]
    assert seen == {
        "completions": ["a", "bcd"],
        "references": ["1", "2"],
        "prompts": ["question 0", "question 1"],
    }
    with pytest.raises(ValueError, match="returned 1 scores for 2"):
        FunctionReward(lambda **kw: [0.0], "broken")(_rollout(["a", "b"], ["1", "2"]))


def test_prompt_text_drops_the_reference_answer():
    sample = Sample([Turn("user", "<image>\nWhat digit?"), Turn("assistant", "4")])
    assert prompt_text(sample) == "<image>\nWhat digit?"


def test_model_reward_scores_prompt_media_and_response_like_the_reward_model_alone():
    """Batched, right-padded, re-tokenized scoring equals scoring each conversation on its own."""
    import numpy as np
    from PIL import Image

    from vlmkit.config.args import ModelArgs
    from vlmkit.data.tokenize import tokenize_sample
    from vlmkit.models.build import build_vlm
    from vlmkit.rlhf.reward_model import RewardModel
    from vlmkit.rlhf.rewards import ModelReward
    from vlmkit.rlhf.rollout import generate_rollout, make_prompt_batch

    torch.manual_seed(0)
    vlm, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    reward_model = RewardModel(vlm.requires_grad_(False)).eval()
    rng = np.random.default_rng(0)
    questions = ["<image>\nWhat digit is this?", "Which number is shown in this picture?\n<image>"]
    samples = [
        Sample(
            [Turn("user", q), Turn("assistant", "3")],
            [Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8))],
        )
        for q in questions
    ]
    rollout = generate_rollout(
        vlm, make_prompt_batch(samples, processor, "cpu"), processor.tokenizer, max_new_tokens=5
    )
    scores = ModelReward(reward_model, processor)(rollout)
    spec = processor.spec
    for i, (sample, text) in enumerate(zip(samples, rollout.texts)):
        conversation = Sample([sample.turns[0], Turn("assistant", text)], sample.images)
        ids = tokenize_sample(
            conversation,
            processor.tokenizer,
            modality="image",
            num_media_tokens=spec.num_media_tokens,
            max_length=512,
        ).input_ids
        ids = torch.tensor([ids])
        with torch.no_grad():
            alone = reward_model(ids, torch.ones_like(ids), processor.process_media(sample.images))
        assert torch.allclose(scores[i], alone[0], atol=1e-5)


def test_verifiable_rewards_by_hand():
    from vlmkit.rlhf.verifiable import choice_letter, exact_answer, numeric_match, think_answer_format

    assert exact_answer(["<think>hm</think><answer>Seven</answer>", "7", "8"], ["7", "7", "7"]) == [
        1.0,
        1.0,
        0.0,
    ]
    letters = ["B", "(b)", "Answer: C.", "The answer is (C)", "I think it is A", ""]
    assert choice_letter(letters, ["B", "B", "C", "C", "B", "A"]) == [1.0, 0.0, 1.0, 1.0, 0.0, 0.0]
    numbers = ["about 104", "1,000", "the value is 3.5%", "none", "-2"]
    assert numeric_match(numbers, ["100", "1000", "3.4", "1", "-2.05"]) == [1.0, 1.0, 1.0, 0.0, 1.0]
    shaped = [
        "<think>a</think> <answer>7</answer>",
        "<answer>7</answer>",
        "<think>a</think><answer>7</answer>!",
    ]
    assert think_answer_format(shaped) == [1.0, 0.0, 0.0]


def test_registered_names_resolve_and_unknown_names_list_the_valid_ones():
    from vlmkit.rlhf.verifiable import REWARD_FUNCTIONS

    assert load_reward_function("choice_letter") is REWARD_FUNCTIONS["choice_letter"]
    with pytest.raises(ValueError, match="exact_answer, digit_match"):
        load_reward_function("letters")


def _flaky(completions, references, prompts):
    if any(c == "boom" for c in completions):
        raise RuntimeError("cannot parse")
    return [float("nan") if c == "nan" else 1.0 for c in completions]


def _reward_set(on_bad_reward):
    from vlmkit.rlhf.rewards import RewardSet

    sources = [("flaky", 2.0, FunctionReward(_flaky, "flaky")), ("digit", 0.5, FunctionReward(digit_match))]
    return RewardSet(sources, on_bad_reward)


def test_reward_set_weights_sources_and_logs_each():
    rewards = _reward_set("error")
    total = rewards(_rollout(["7", "3"], ["7", "7"]))
    assert total.tolist() == [2.5, 2.0]
    stats = rewards.stats()
    assert stats["reward_flaky"] == 1.0 and stats["reward_digit"] == 0.5 and stats["bad_reward_flaky"] == 0


def test_bad_reward_names_function_and_sample_or_is_a_counted_zero():
    rollout = _rollout(["7", "boom", "nan"], ["7", "boom", "nan"])
    for i, s in enumerate(rollout.samples):
        s.source, s.index = "prompts.json", 10 + i
    with pytest.raises(
        ValueError, match=r"'flaky' failed on prompts.json record 11 \(RuntimeError: cannot parse"
    ):
        _reward_set("error")(rollout)
    rewards = _reward_set("skip")
    assert rewards(rollout).tolist() == [2.5, 0.5, 0.5]  # the flaky source scores 0 where it failed
    assert rewards.stats()["bad_reward_flaky"] == 2


def test_build_reward_checks_weights_against_sources():
    from types import SimpleNamespace

    from vlmkit.rlhf.rewards import build_reward

    cfg = SimpleNamespace(
        reward_model_name_or_path=None, reward_funcs=["digit_match", "think_answer_format"],
        reward_weights=[1.0, 0.2], on_bad_reward="error",
    )  # fmt: skip
    rewards = build_reward(cfg)
    assert [(name, weight) for name, weight, _ in rewards.sources] == [
        ("digit_match", 1.0), ("think_answer_format", 0.2)
    ]  # fmt: skip
    cfg.reward_weights = [1.0]
    with pytest.raises(ValueError, match="1 values for 2 rewards"):
        build_reward(cfg)
