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
