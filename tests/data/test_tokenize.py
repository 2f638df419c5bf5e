"""Chat-template tokenization: assistant-only labels, media expansion, truncation and template checks."""

from __future__ import annotations

import pytest

from vlmkit.data.records import BadSampleError, Sample, Turn
from vlmkit.data.tokenize import IGNORE_INDEX, SampleDropped, tokenize_prompt, tokenize_sample
from vlmkit.models.tiny import build_tokenizer

N_MEDIA = 5


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _sample(*turns, images=(), index=0, source="data.json"):
    return Sample([Turn(r, t) for r, t in turns], images=list(images), source=source, index=index)


def _tokenize(sample, tok, max_length=512, truncation="error"):
    return tokenize_sample(
        sample, tok, modality="image", num_media_tokens=N_MEDIA, max_length=max_length, truncation=truncation
    )


def _supervised_runs(tok, ts) -> list[str]:
    """Decoded text of each maximal run of supervised tokens."""
    runs, current = [], []
    for i, label in enumerate(ts.labels):
        if label != IGNORE_INDEX:
            assert label == ts.input_ids[i]
            current.append(label)
        elif current:
            runs.append(current)
            current = []
    if current:
        runs.append(current)
    return [tok.decode(r, skip_special_tokens=False) for r in runs]


def test_labels_only_on_the_assistant_reply(tok):
    ts = _tokenize(
        _sample(("user", "<image>\nWhat digit is this?"), ("assistant", "7"), images=["a.png"]), tok
    )
    assert len(ts.input_ids) == len(ts.labels)
    assert _supervised_runs(tok, ts) == ["7" + tok.eos_token]
    assert ts.num_supervised == 2
    assert ts.media == ["a.png"]


def test_multi_turn_labels_every_reply_and_no_prompt(tok):
    replies = ["It is the digit seven.", "no", "seven"]
    sample = _sample(
        ("user", "<image>\nWhat digit is this?"), ("assistant", replies[0]),
        ("user", "Is it an even number?"), ("assistant", replies[1]),
        ("user", "Write the digit as a word."), ("assistant", replies[2]),
        images=["a.png"],
    )  # fmt: skip
    ts = _tokenize(sample, tok)
    assert _supervised_runs(tok, ts) == [r + tok.eos_token for r in replies]
    supervised_text = tok.decode([t for t in ts.labels if t != IGNORE_INDEX])
    for question in ("What digit", "even number", "as a word", "user", "assistant"):
        assert question not in supervised_text


def test_system_turn_is_not_supervised(tok):
    sample = _sample(
        ("system", "You are a helpful assistant."), ("user", "Name the digit."), ("assistant", "three")
    )
    ts = _tokenize(sample, tok)
    assert _supervised_runs(tok, ts) == ["three" + tok.eos_token]
    assert "helpful" in tok.decode(ts.input_ids)


def test_image_placeholder_expands_to_num_media_tokens(tok):
    media_id = tok.convert_tokens_to_ids("<image>")
    ts = _tokenize(_sample(("user", "Look: <image> what is it?"), ("assistant", "4"), images=["x.png"]), tok)
    positions = [i for i, t in enumerate(ts.input_ids) if t == media_id]
    assert len(positions) == N_MEDIA
    assert positions == list(range(positions[0], positions[0] + N_MEDIA))  # one contiguous block
    assert all(ts.labels[i] == IGNORE_INDEX for i in positions)
    plain = tok.apply_chat_template(
        [{"role": "user", "content": "Look: <image> what is it?"}, {"role": "assistant", "content": "4"}],
        tokenize=False,
    )
    assert len(ts.input_ids) == len(tok(plain, add_special_tokens=False)["input_ids"]) + N_MEDIA - 1


def test_multiple_images_keep_placeholder_order(tok):
    media_id = tok.convert_tokens_to_ids("<image>")
    sample = _sample(
        ("user", "<image>\nand\n<image>\nWhich is larger?"), ("assistant", "the second"),
        ("user", "<image>\nAnd this one?"), ("assistant", "smaller"),
        images=["first.png", "second.png", "third.png"],
    )  # fmt: skip
    ts = _tokenize(sample, tok)
    assert sum(t == media_id for t in ts.input_ids) == 3 * N_MEDIA
    assert ts.media == ["first.png", "second.png", "third.png"]
    assert _supervised_runs(tok, ts) == ["the second" + tok.eos_token, "smaller" + tok.eos_token]


@pytest.mark.parametrize(
    "text, images, message",
    [
        ("<image>\n<image>\nWhat?", ["a.png"], "2 '<image>' placeholders but 1 images"),
        ("<image>\nWhat?", ["a.png", "b.png"], "1 '<image>' placeholders but 2 images"),
        ("What?", ["a.png"], "0 '<image>' placeholders but 1 images"),
    ],
)
def test_placeholder_count_mismatch_names_the_record(tok, text, images, message):
    sample = _sample(("user", text), ("assistant", "1"), images=images, index=17, source="train.json")
    with pytest.raises(BadSampleError) as err:
        _tokenize(sample, tok)
    assert err.value.source == "train.json" and err.value.index == 17
    assert "train.json, record 17" in str(err.value) and message in str(err.value)


def test_audio_in_an_image_model_is_refused(tok):
    sample = Sample([Turn("user", "<audio> hi"), Turn("assistant", "1")], audios=["a.wav"], index=2)
    with pytest.raises(BadSampleError, match="record 2.*image model"):
        _tokenize(sample, tok)


def test_truncation_never_cuts_through_image_tokens(tok):
    long_question = "Which number is shown in the image? " * 8
    sample = _sample(("user", long_question + "<image>"), ("assistant", "5"), images=["a.png"], index=4)
    full = _tokenize(sample, tok)
    media_start = full.input_ids.index(tok.convert_tokens_to_ids("<image>"))
    cut = media_start + 2  # would cut the image block in half
    with pytest.raises(BadSampleError, match="record 4.*cut through media tokens") as err:
        _tokenize(sample, tok, max_length=cut)
    assert not isinstance(err.value, SampleDropped)
    with pytest.raises(SampleDropped, match="max_length"):
        _tokenize(sample, tok, max_length=cut, truncation="drop")


def test_truncating_a_long_answer_keeps_media_and_supervision(tok):
    media_id = tok.convert_tokens_to_ids("<image>")
    answer = "zero one two three four five six seven eight nine " * 6
    sample = _sample(("user", "<image>\nCount."), ("assistant", answer), images=["a.png"])
    full = _tokenize(sample, tok)
    first_answer = next(i for i, t in enumerate(full.labels) if t != IGNORE_INDEX)
    max_length = first_answer + 4
    assert len(full.input_ids) > max_length
    ts = _tokenize(sample, tok, max_length=max_length)
    assert len(ts.input_ids) == len(ts.labels) == max_length
    assert ts.input_ids == full.input_ids[:max_length] and ts.labels == full.labels[:max_length]
    assert sum(t == media_id for t in ts.input_ids) == N_MEDIA
    assert 0 < ts.num_supervised < full.num_supervised
    assert tok.decode([t for t in ts.labels if t != IGNORE_INDEX]).startswith("zero one two")


def test_truncation_that_leaves_no_answer_drops_the_sample(tok):
    sample = _sample(
        ("user", "<image>\n" + "Describe it please. " * 10), ("assistant", "8"), images=["a.png"]
    )
    full = _tokenize(sample, tok)
    with pytest.raises(SampleDropped, match="no supervised tokens left"):
        _tokenize(sample, tok, max_length=len(full.input_ids) - 3)


def test_zero_supervised_tokens_is_an_error(tok):
    with pytest.raises(BadSampleError, match="record 9.*zero supervised tokens"):
        _tokenize(_sample(("user", "<image>\nhello"), images=["a.png"], index=9), tok)


def test_qwen2_tiny_tokenizer_with_a_default_system_prompt():
    from transformers import AutoTokenizer

    from vlmkit.models.model_paths import resolve_model_path

    tok = AutoTokenizer.from_pretrained(resolve_model_path("vlmkit-tiny/qwen2"))
    # Qwen2-style: a system message is inserted when the conversation has none.
    tok.chat_template = (
        "{% if messages[0]['role'] != 'system' %}<|im_start|>system\nYou are a helpful assistant.<|im_end|>\n"
        "{% endif %}{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n"
        "{% endfor %}{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
    )
    sample = _sample(
        ("user", "<image>\nWhat digit is this?"), ("assistant", "2"), ("user", "Even?"), ("assistant", "yes"),
        images=["a.png"],
    )  # fmt: skip
    ts = _tokenize(sample, tok)
    assert tok.decode(ts.input_ids).startswith("<|im_start|>system\nYou are a helpful assistant.")
    assert _supervised_runs(tok, ts) == ["2<|im_end|>", "yes<|im_end|>"]
    assert sum(t == tok.convert_tokens_to_ids("<image>") for t in ts.input_ids) == N_MEDIA


def test_template_without_the_prefix_property_is_refused(tok):
    broken = build_tokenizer()
    # The "[final]" marker sits on whichever message is last, so a conversation's rendering changes as
    # it grows: assistant tokens cannot be located.
    broken.chat_template = (
        "{% for m in messages %}{% if loop.last %}[final] {% endif %}{{ m['role'] }}: {{ m['content'] }}\n"
        "{% endfor %}{% if add_generation_prompt %}assistant: {% endif %}"
    )
    sample = _sample(("user", "<image>\nDigit?"), ("assistant", "1"), images=["a.png"], index=3)
    with pytest.raises(BadSampleError, match="record 3.*tokenization mismatch"):
        _tokenize(sample, broken)


def test_tokenize_prompt_ends_with_generation_prompt(tok):
    media_id = tok.convert_tokens_to_ids("<image>")
    sample = _sample(("user", "<image>\nWhat digit is this?"), ("assistant", "6"), images=["a.png"])
    ids, reference = tokenize_prompt(sample, tok, modality="image", num_media_tokens=N_MEDIA)
    assert reference == "6"
    assert tok.decode(ids).endswith("<|im_start|>assistant\n")
    assert sum(t == media_id for t in ids) == N_MEDIA
    train_ids = _tokenize(sample, tok).input_ids
    assert train_ids[: len(ids)] == ids  # the prompt is exactly the training prefix
    ids, reference = tokenize_prompt(
        _sample(("user", "<image>\nQ?"), images=["a.png"]), tok, modality="image", num_media_tokens=N_MEDIA
    )
    assert reference is None
