"""PPO rollouts: EOS truncation, left-padded KV-cached sampling, log-probs that match generation, selection."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.args import ModelArgs
from vlmkit.data.records import Sample, Turn
from vlmkit.models.build import build_vlm
from vlmkit.rlhf.rollout import (
    Rollout,
    generate_rollout,
    make_prompt_batch,
    response_logprobs,
    truncate_after_eos,
)

EOS, PAD = 2, 0


def test_truncate_after_eos_keeps_the_first_eos_and_pads_the_rest():
    tokens = torch.tensor([[5, EOS, 7, EOS], [5, 6, 7, 8], [EOS, 3, 4, 5]])
    out, mask, has_eos = truncate_after_eos(tokens, EOS, PAD)
    assert out.tolist() == [[5, EOS, PAD, PAD], [5, 6, 7, 8], [EOS, PAD, PAD, PAD]]
    assert mask.tolist() == [[True, True, False, False], [True] * 4, [True, False, False, False]]
    assert has_eos.tolist() == [True, False, True]


def _digit_sample(i: int, question: str) -> Sample:
    rng = np.random.default_rng(i)
    image = Image.fromarray(rng.integers(0, 255, (8, 8, 3), dtype=np.uint8), "RGB")
    turns = [Turn("user", question), Turn("assistant", str(i % 10))]
    return Sample(turns, images=[image], index=i)


@pytest.fixture(scope="module")
def tiny_vlm():
    model, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama"),
        is_trainable=False,
    )
    return model.eval().requires_grad_(False), processor


@pytest.fixture(scope="module")
def prompts():
    # Different prompt lengths, so the batch really is left-padded.
    questions = [
        "<image>\nWhat digit is this?",
        "What number is written in this small picture?\n<image>",
        "<image>",
    ]
    return [_digit_sample(i, q) for i, q in enumerate(questions)]


def test_prompt_batch_is_left_padded_with_media_and_references(tiny_vlm, prompts):
    model, processor = tiny_vlm
    batch = make_prompt_batch(prompts, processor, "cpu")
    lengths = batch.query_mask.sum(1)
    assert len(set(lengths.tolist())) == 3  # three different prompt lengths
    assert bool((batch.query_mask[:, -1] == 1).all())  # every prompt ends at the right edge
    assert batch.media.shape[0] == 3 and batch.media_counts == [1, 1, 1]
    assert batch.references == ["0", "1", "2"]
    n_media_tokens = (batch.query_ids == model.config.media_token_id).sum(1)
    assert n_media_tokens.tolist() == [model.config.num_media_tokens] * 3


def test_sampled_log_probs_match_the_kv_cached_generation(tiny_vlm, prompts):
    """Log-probs from one forward pass over prompt + response equal the scores `generate` used step by step."""
    model, processor = tiny_vlm
    tok = processor.tokenizer
    batch = make_prompt_batch(prompts, processor, "cpu")
    out = model.generate(
        batch.query_ids, batch.query_mask, batch.media, max_new_tokens=5, do_sample=False,
        pad_token_id=tok.pad_token_id, eos_token_id=tok.eos_token_id, return_dict_in_generate=True,
        output_logits=True,
    )  # fmt: skip
    gen_logprobs = torch.stack(out.logits, dim=1).float().log_softmax(-1)
    tokens, mask, has_eos = truncate_after_eos(out.sequences, tok.eos_token_id, tok.pad_token_id)
    rollout = Rollout(
        batch.query_ids, batch.query_mask, tokens, mask, has_eos, batch.media, batch.media_counts,
        batch.media_items, batch.samples, batch.references,
    )  # fmt: skip
    logits = model(**rollout.model_inputs()).logits
    logprobs, response_logits = response_logprobs(logits, rollout)
    expected = gen_logprobs.gather(-1, tokens.unsqueeze(-1)).squeeze(-1)
    assert torch.allclose(logprobs[mask], expected[mask], atol=1e-4)
    # greedy: every token is the arg-max of the recomputed logits over the tokens generation may pick (the
    # media placeholder never: a response holding one could not be fed back)
    assert not bool((tokens == model.config.media_token_id).any())
    allowed = response_logits.masked_fill(
        torch.arange(response_logits.shape[-1]) == model.config.media_token_id, float("-inf")
    )
    assert bool((allowed.argmax(-1)[mask] == tokens[mask]).all())


def test_generate_rollout_is_seeded_and_respects_the_budget(tiny_vlm, prompts):
    model, processor = tiny_vlm
    tok = processor.tokenizer
    batch = make_prompt_batch(prompts, processor, "cpu")
    runs = []
    for _ in range(2):
        torch.manual_seed(0)
        runs.append(generate_rollout(model, batch, tok, max_new_tokens=6, temperature=1.5))
    a, b = runs
    assert torch.equal(a.response_ids, b.response_ids) and a.texts == b.texts
    assert a.response_ids.shape[1] <= 6
    assert not bool((a.response_ids == model.config.media_token_id).any())  # placeholder never sampled
    assert a.media_features is not None  # the frozen encoder ran once; later passes reuse its features
    for row, ids in enumerate(a.response_ids):
        real = ids[a.response_mask[row]].tolist()
        assert (tok.eos_token_id in real) == bool(a.has_eos[row])
        if a.has_eos[row]:
            assert real[-1] == tok.eos_token_id
        assert all(t == tok.pad_token_id for t in ids[~a.response_mask[row]].tolist())
    # cached features give the same logits as running the encoder again
    with torch.no_grad():
        inputs = a.model_inputs()
        with_features = model(
            inputs["input_ids"], inputs["attention_mask"], None, inputs["media_features"],
            position_ids=inputs["position_ids"],
        ).logits  # fmt: skip
        with_media = model(
            inputs["input_ids"],
            inputs["attention_mask"],
            inputs["media"],
            position_ids=inputs["position_ids"],
        ).logits
    assert torch.allclose(with_features, with_media, atol=1e-5)


def test_select_keeps_rows_and_their_media_together(tiny_vlm, prompts):
    model, processor = tiny_vlm
    torch.manual_seed(0)
    rollout = generate_rollout(
        model, make_prompt_batch(prompts, processor, "cpu"), processor.tokenizer, max_new_tokens=3
    )
    sub = rollout.select([2, 0])
    assert torch.equal(sub.query_ids, rollout.query_ids[[2, 0]])
    assert torch.equal(sub.media, rollout.media[[2, 0]])
    assert torch.equal(sub.media_features, rollout.media_features[[2, 0]])
    assert sub.references == ["2", "0"] and sub.texts == [rollout.texts[2], rollout.texts[0]]
    assert sub.media_items == [rollout.media_items[2], rollout.media_items[0]]


@pytest.mark.parametrize("temperature", [0.7, 1.3])
def test_sampling_log_probs_equal_the_trainers_recomputed_ones(tiny_vlm, prompts, temperature):
    """The HF engine's sampling log-probs (KV cache, media placeholder suppressed) and the trainer's forward
    pass over prompt + response (`response_logprobs` with the placeholder excluded) agree to 1e-5."""
    model, processor = tiny_vlm
    torch.manual_seed(0)
    rollout = generate_rollout(
        model, make_prompt_batch(prompts, processor, "cpu"), processor.tokenizer, max_new_tokens=6,
        temperature=temperature, return_logprobs=True,
    )  # fmt: skip
    inputs = rollout.model_inputs()
    with torch.no_grad():
        logits = model(
            inputs["input_ids"], inputs["attention_mask"], None, inputs["media_features"],
            position_ids=inputs["position_ids"],
        ).logits  # fmt: skip
    recomputed, _ = response_logprobs(logits, rollout, temperature, model.config.media_token_id)
    mask = rollout.response_mask
    assert mask.sum() > 3 and rollout.logprobs.shape == recomputed.shape
    assert (rollout.logprobs[mask] - recomputed[mask]).abs().max() <= 1e-5
    # without excluding the placeholder the trainer would score a slightly different distribution
    unsuppressed, _ = response_logprobs(logits, rollout, temperature)
    assert (unsuppressed[mask] - recomputed[mask]).abs().max() > 1e-5
    assert torch.equal(rollout.select([1]).logprobs, rollout.logprobs[[1]])


def test_repeated_prompts_are_prepared_once_and_match_separate_preparation(tiny_vlm, prompts):
    """GRPO passes each prompt num_generations times (the same Sample): the batch equals one made of copies."""
    import copy

    _, processor = tiny_vlm
    repeated = [p for p in prompts for _ in range(3)]
    copies = [copy.deepcopy(p) for p in repeated]  # distinct objects: prepared one by one
    a = make_prompt_batch(repeated, processor, "cpu")
    b = make_prompt_batch(copies, processor, "cpu")
    assert torch.equal(a.query_ids, b.query_ids) and torch.equal(a.query_mask, b.query_mask)
    assert torch.equal(a.media, b.media) and a.media.shape[0] == 9
    assert a.media_counts == b.media_counts and a.references == b.references
    assert torch.equal(a.media[0], a.media[2]) and not torch.equal(a.media[0], a.media[3])


def test_kept_logits_give_the_same_log_probs_as_the_full_pass(tiny_vlm, prompts):
    """`logits_to_keep` (the LM head on the last T + 1 positions only) changes no log-prob."""
    model, processor = tiny_vlm
    torch.manual_seed(0)
    rollout = generate_rollout(
        model, make_prompt_batch(prompts, processor, "cpu"), processor.tokenizer, max_new_tokens=4
    )
    inputs = rollout.model_inputs()
    args = (inputs["input_ids"], inputs["attention_mask"], None, inputs["media_features"])
    with torch.no_grad():
        full = model(*args, position_ids=inputs["position_ids"]).logits
        kept = model(*args, position_ids=inputs["position_ids"], logits_to_keep=rollout.logits_to_keep).logits
    assert kept.shape[1] == rollout.response_ids.shape[1] + 1 < full.shape[1]
    (lp_full, resp_full), (lp_kept, resp_kept) = (
        response_logprobs(full, rollout),
        response_logprobs(kept, rollout),
    )
    assert torch.allclose(lp_full, lp_kept, atol=1e-6) and torch.allclose(resp_full, resp_kept, atol=1e-6)
    with pytest.raises(ValueError, match="logits cover"):
        response_logprobs(full[:, 1:], rollout)


def test_generation_without_the_mode_switch_samples_the_same(prompts):
    """With dropout off and a frozen encoder, sampling in train mode (no eval() switch) equals eval mode."""
    from vlmkit.rlhf.rl_trainer import disable_dropout, same_in_train_and_eval

    model, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    model.encoder.requires_grad_(False)
    model.connector.add_module("noise", torch.nn.Dropout(0.1))  # a dropout module that is active
    assert not same_in_train_and_eval(model)
    disable_dropout(model)
    assert same_in_train_and_eval(model)
    model.language_model.config.attention_dropout = 0.1  # attention dropout lives in the config, not a module
    assert not same_in_train_and_eval(model)
    model.language_model.config.attention_dropout = 0.0
    model.language_model.gradient_checkpointing_enable()  # train mode would generate without the KV cache
    assert not same_in_train_and_eval(model)
    model.language_model.gradient_checkpointing_disable()
    assert same_in_train_and_eval(model)
    batch = make_prompt_batch(prompts, processor, "cpu")
    runs = []
    for eval_mode in (True, False):
        model.train()
        torch.manual_seed(0)
        runs.append(
            generate_rollout(model, batch, processor.tokenizer, max_new_tokens=6, eval_mode=eval_mode)
        )
        assert model.training and not model.encoder.training  # the mode is as it was either way
    assert torch.equal(runs[0].response_ids, runs[1].response_ids)
    model.encoder.requires_grad_(True)
    assert not same_in_train_and_eval(model)  # a training encoder may behave differently in train mode
