"""A conversation whose first turn is the assistant's: a located error, or a counted skip, never the template's."""

from __future__ import annotations

import json

import pytest

from vlmkit.data.readers import read_dataset
from vlmkit.data.records import BadSampleError, Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import SFTDataset
from vlmkit.data.tokenize import tokenize_prompt, tokenize_sample
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, load_media_processor
from vlmkit.models.tiny import build_tokenizer

GOOD = {"conversations": [{"from": "human", "value": "Say hi"}, {"from": "gpt", "value": "hi"}]}
ASSISTANT_FIRST = {"conversations": [{"from": "gpt", "value": "hello"}, {"from": "human", "value": "Say hi"},
                                     {"from": "gpt", "value": "hi"}]}  # fmt: skip


@pytest.fixture(scope="module")
def tok():
    return build_tokenizer()


def _write(tmp_path, rows) -> str:
    path = tmp_path / "chat.json"
    path.write_text(json.dumps(rows))
    return str(path)


def test_reader_names_file_record_and_field(tmp_path):
    path = _write(tmp_path, [GOOD, ASSISTANT_FIRST])
    with pytest.raises(BadSampleError) as err:
        read_dataset(path, format="llava")
    assert (err.value.source, err.value.index, err.value.field_name) == (path, 1, "conversations[0]")
    assert "assistant turn first" in str(err.value) and path in str(err.value)


def test_reader_skips_and_counts_in_skip_mode(tmp_path):
    skips = SkipCounter()
    samples = read_dataset(_write(tmp_path, [GOOD, ASSISTANT_FIRST, GOOD]), on_bad_sample="skip", skips=skips)
    assert len(samples) == 2 and skips.total == 1


def test_a_system_turn_may_come_before_the_user(tmp_path):
    row = {"messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Say hi"},
                        {"role": "assistant", "content": "hi"}]}  # fmt: skip
    (sample,) = read_dataset(_write(tmp_path, [row]))
    assert [t.role for t in sample.turns] == ["system", "user", "assistant"]


def _assistant_first_sample(index=3) -> Sample:
    turns = [Turn("assistant", "hello"), Turn("user", "Say hi"), Turn("assistant", "hi")]
    return Sample(turns, images=[], source="mem.json", index=index)


def test_tokenizer_refusal_is_a_located_bad_sample(tok):
    # Built in memory (past the reader): the chat template's own ValueError becomes a BadSampleError.
    with pytest.raises(BadSampleError) as err:
        tokenize_sample(_assistant_first_sample(), tok, modality="image", num_media_tokens=4, max_length=64)
    assert (err.value.source, err.value.index, err.value.field_name) == ("mem.json", 3, "conversations")
    assert "chat template refuses" in str(err.value) and "empty conversation" in str(err.value)


def test_tokenize_prompt_refusal_is_located(tok):
    empty = Sample([], images=[], source="prompts.json", index=5)
    with pytest.raises(BadSampleError, match="prompts.json.*5"):
        tokenize_prompt(empty, tok, modality="image", num_media_tokens=4)


def test_sft_dataset_skips_and_counts_it(tok):
    media = load_media_processor(resolve_model_path("vlmkit-tiny/clip-vision"), "image")
    processor = VLMProcessor(tok, media, MediaSpec(modality="image", num_media_tokens=4))
    good = Sample([Turn("user", "Say hi"), Turn("assistant", "hi")], images=[], source="mem.json", index=0)
    with pytest.raises(BadSampleError, match="chat template refuses"):
        SFTDataset([good, _assistant_first_sample(1)], processor, max_length=64)
    skips = SkipCounter()
    dataset = SFTDataset([good, _assistant_first_sample(1)], processor, max_length=64, on_bad_sample="skip",
                         skips=skips)  # fmt: skip
    assert len(dataset) == 1 and skips.total == 1
