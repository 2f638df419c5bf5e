"""RL rollouts of native transformers VLMs (tiny Qwen2-VL and LLaVA stand-ins) through the RL trainer: the
sampling log-probs equal the trainer's recomputed ones (media tokens excluded, Qwen2-VL's M-RoPE positions and
LLaVA's left-padded positions as `generate` numbers them), sub-rollouts carry their rows' media, and the LoRA
reference is the policy with its adapters off."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.grpo import GRPOConfig
from vlmkit.data.records import Sample, Turn
from vlmkit.rlhf.grpo_trainer import GRPOTrainer
from vlmkit.rlhf.rewards import FunctionReward, RewardSet
from vlmkit.rlhf.rl_kinds import NATIVE_RL, rl_kind
from vlmkit.rlhf.rollout import hf_generate
from vlmkit.rlhf.value_model import ActorCritic, frozen_reference
from vlmkit.training.accelerator import make_accelerator

G = 2


def _prompts(n: int = 4, text_only: bool = True) -> list[Sample]:
    """Images of different sizes and (`text_only`) text-only prompts mixed."""
    rng = np.random.default_rng(0)
    out = []
    for i in range(n):
        image = Image.fromarray(rng.integers(0, 255, (28 + 8 * i, 28, 3), dtype=np.uint8), "RGB")
        with_image = i % 2 == 0 or not text_only
        text = "<image>\nWhat digit is this?" if with_image else "Say a digit."
        out.append(Sample([Turn("user", text), Turn("assistant", str(i))], [image] if with_image else []))
    return out


def length(completions, references, prompts):
    return [float(len(c)) for c in completions]


def make_trainer(family: str, tmp_path, prompts: list[Sample] | None = None, **overrides) -> GRPOTrainer:
    fields = dict(
        model_name_or_path=f"vlmkit-tiny/native-{family}", reward_funcs=[f"{__name__}:length"],
        output_dir=str(tmp_path), per_device_train_batch_size=4, num_generations=G, max_new_tokens=5,
        learning_rate=1e-3, mixed_precision="no", report_to=["none"], seed=3, beta=0.04, temperature=0.7,
    )  # fmt: skip
    fields.update(overrides)
    cfg = GRPOConfig(**fields)
    accelerator = make_accelerator(output_dir=cfg.output_dir, mixed_precision="no")
    kind = rl_kind(cfg)
    torch.manual_seed(0)
    policy, processor = kind.build(cfg, tune_connector=not cfg.use_lora)
    kind.set_trainable(policy, cfg, "instruct", tune_connector=not kind.is_peft(policy))
    reference = frozen_reference(policy, None, accelerator) if cfg.beta > 0 else None
    rewards = RewardSet([("length", 1.0, FunctionReward(length, "length"))])
    prompts = prompts or _prompts()
    return GRPOTrainer(
        cfg, accelerator, ActorCritic(policy), processor, rewards, prompts, reference=reference
    )


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_native_rollout_logprobs_equal_the_trainers_recomputed_ones(family, tmp_path):
    trainer = make_trainer(family, tmp_path, use_lora=True, beta=0.04)
    assert trainer.kind is NATIVE_RL and trainer.reference is None and trainer.has_reference
    batch = trainer.kind.prompt_batch(
        trainer.prompts_for_step(0), trainer.processor, "cpu", trainer.bare.policy
    )
    torch.manual_seed(0)
    rollout = hf_generate(trainer.bare.policy, batch, trainer.tokenizer, max_new_tokens=5, temperature=0.7,
                          return_logprobs=True)  # fmt: skip
    assert sorted(rollout.media_counts) == [0, 0, 1, 1] and "pixel_values" in rollout.model_inputs()
    with torch.no_grad():
        recomputed = trainer.forward(rollout)[0]
    mask = rollout.response_mask
    assert mask.sum() >= 8 and recomputed.shape == rollout.logprobs.shape
    assert (rollout.logprobs[mask] - recomputed[mask]).abs().max() <= 1e-5
    # a sub-rollout (a micro-batch) takes its own rows' media along
    rows = [rollout.media_counts.index(0), rollout.media_counts.index(1)]  # text-only first, then an image
    with torch.no_grad():
        assert torch.allclose(trainer.forward(rollout.select(rows))[0], recomputed[rows], atol=1e-5)
    # the LoRA reference is the policy with its adapters off: equal at the start, apart after an update
    ref = trainer.ref_logprobs(rollout)
    assert torch.allclose(ref[mask], recomputed[mask], atol=1e-5)
    exp = trainer.make_experience(trainer.prompts_for_step(0))
    trainer.update(exp, 0)
    with torch.no_grad():
        moved = trainer.forward(rollout)[0]
    assert (moved[mask] - recomputed[mask]).abs().max() > 1e-4
    assert torch.allclose(trainer.ref_logprobs(rollout)[mask], ref[mask], atol=1e-5)


@pytest.mark.slow
@pytest.mark.parametrize(
    "family", ["llava_next", "llava_onevision", "qwen2_5_vl", "qwen3_vl", "idefics3", "paligemma", "gemma3"]
)
def test_every_native_family_samples_what_the_trainer_scores(family, tmp_path):
    """Any-res patches, image splitting, token types: each family's media inputs reach both passes alike."""
    prompts = _prompts(text_only=family != "paligemma")  # PaliGemma needs an image in every prompt
    trainer = make_trainer(family, tmp_path, prompts, use_lora=True)
    batch = trainer.kind.prompt_batch(
        trainer.prompts_for_step(0), trainer.processor, "cpu", trainer.bare.policy
    )
    torch.manual_seed(0)
    rollout = hf_generate(trainer.bare.policy, batch, trainer.tokenizer, max_new_tokens=4, temperature=0.7,
                          return_logprobs=True)  # fmt: skip
    with torch.no_grad():
        recomputed = trainer.forward(rollout)[0]
        first = trainer.forward(rollout.select([0]))[0]
    mask = rollout.response_mask
    assert mask.sum() >= 4 and (rollout.logprobs[mask] - recomputed[mask]).abs().max() <= 1e-5
    assert torch.allclose(first, recomputed[[0]], atol=1e-5)


@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_native_answer_tokens_are_what_native_sft_supervises(family):
    """The SFT baseline's target for a native VLM: the answer's tokens and the family's end-of-turn token, the
    last run of labels the native stage-2 encoder gives the same conversation."""
    from vlmkit.models.native.encoding import NativeEncoder
    from vlmkit.models.native.loading import load_native_vlm
    from vlmkit.models.native.templates import END_OF_TURN
    from vlmkit.models.native.tiny import build_tiny_native
    from vlmkit.rlhf.sft_baseline import native_answer_tokens

    _, processor = load_native_vlm(build_tiny_native(family))
    encoder = NativeEncoder(processor, family)
    tok = processor.tokenizer
    sample = Sample([Turn("user", "<image>\nWhich digit is it?"), Turn("assistant", "7")],
                    images=_prompts(1, text_only=False)[0].images)  # fmt: skip
    stop = tok.convert_tokens_to_ids(END_OF_TURN.get(family, tok.eos_token))
    answer = native_answer_tokens(sample, encoder, [stop])
    assert answer[-1] == stop and tok.decode(answer[:-1]).strip() == "7"  # the answer as written in context
    with pytest.raises(ValueError, match="reference answers"):
        native_answer_tokens(Sample([Turn("user", "Say a digit.")]), encoder, [stop])


@pytest.mark.slow
def test_native_grpo_gets_its_compute_matched_sft_baseline(tmp_path):
    """The RL stages' SFT baseline on a native VLM: same prompts and updates as the GRPO run, trained on the
    reference answers (its NLL falls), evaluated like the run and compared prompt by prompt."""
    from vlmkit.rlhf.rl_kinds import rl_kind_of_model
    from vlmkit.rlhf.sft_baseline import check_sft_baseline, compare_with_sft_baseline

    trainer = make_trainer("qwen2_vl", tmp_path, _prompts(8), max_steps=3, beta=0.0, learning_rate=1e-2,
                           sft_baseline=True)  # fmt: skip
    check_sft_baseline(trainer.cfg, trainer.accelerator, held_out=True)  # native models are not refused
    trainer.train()
    kind = rl_kind_of_model(trainer.bare.policy)
    metrics = compare_with_sft_baseline(trainer, _prompts(8), lambda: kind.build(trainer.cfg)[0])
    assert metrics["baseline_samples"] == 3 * trainer.cfg.rollout_batch_size  # the answers GRPO sampled
    assert metrics["baseline_updates"] > 0
    assert 0.0 <= metrics["baseline_eval_accuracy"] <= 1.0 and "baseline_beaten" in metrics
    losses = [json.loads(line)["loss"] for line in (tmp_path / "sft_baseline" / "train_log.jsonl").open()]
    assert len(losses) == 3 and losses[-1] < losses[0]


@pytest.mark.slow
def test_a_composite_reward_model_scores_native_rollouts_with_their_images():
    """The reward model re-encodes prompt + response with its own processor, so it may be of the other kind: a
    native rollout carries its decoded images for it, and scores as a composite rollout of the same texts."""
    from vlmkit.config.args import ModelArgs
    from vlmkit.models.build import build_vlm
    from vlmkit.models.model_paths import resolve_model_path
    from vlmkit.rlhf.reward_model import RewardModel
    from vlmkit.rlhf.rewards import ModelReward
    from vlmkit.rlhf.rollout import make_prompt_batch

    torch.manual_seed(0)
    policy, encoder = NATIVE_RL.load_checkpoint(resolve_model_path("vlmkit-tiny/native-qwen2_vl"))
    samples = _prompts()
    batch = NATIVE_RL.prompt_batch(samples, encoder, "cpu", policy)
    rollout = hf_generate(policy, batch, encoder.tokenizer, max_new_tokens=3)
    assert len(rollout.media_items) == 2 and len(rollout.select([0]).media_items) == 1
    vlm, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    reward = ModelReward(RewardModel(vlm).eval(), processor)
    same_texts = make_prompt_batch(samples, processor, "cpu")
    same_texts.texts = rollout.texts
    assert torch.allclose(reward(rollout), reward(same_texts))


@pytest.mark.slow
def test_a_full_policys_reference_loaded_again_is_its_start(tmp_path):
    """Under ZeRO-3 the reference cannot be a copy: `build_reference` loads the same checkpoint, frozen."""
    cfg = GRPOConfig(model_name_or_path="vlmkit-tiny/native-llava", reward_funcs=["digit_match"],
                     output_dir=str(tmp_path), report_to=["none"])  # fmt: skip
    policy, _ = NATIVE_RL.build(cfg)
    reference = NATIVE_RL.build_reference(cfg)
    assert type(reference) is type(policy) and not NATIVE_RL.is_peft(reference)
    ours, theirs = policy.state_dict(), reference.state_dict()
    assert ours.keys() == theirs.keys() and all(torch.equal(ours[k], theirs[k]) for k in ours)


@pytest.mark.slow
@pytest.mark.parametrize("family", ["qwen2_vl", "llava"])
def test_native_update_follows_the_group_relative_advantages(family, tmp_path):
    trainer = make_trainer(family, tmp_path, use_lora=True, beta=0.0)
    torch.manual_seed(0)
    exp = trainer.make_experience(trainer.prompts_for_step(0))

    def sequence_logprobs():
        with torch.no_grad():
            return (trainer.forward(exp.rollout)[0] * exp.rollout.response_mask).sum(1)

    before = sequence_logprobs()
    trainer.update(exp, 0)
    change = sequence_logprobs() - before
    assert change[exp.advantages > 0].mean() > 0 > change[exp.advantages < 0].mean(), (change, exp.advantages)
