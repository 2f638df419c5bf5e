"""Preference pairs -> batches: answer-only labels, chosen rows first, media once per row, bad pairs named."""

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.data.preference import PreferenceCollator, PreferenceDataset, count_pairs
from vlmkit.data.records import BadSampleError, PreferenceSample, Sample, SkipCounter, Turn
from vlmkit.data.tokenize import IGNORE_INDEX

NUM_MEDIA_TOKENS = 4


@pytest.fixture(scope="module")
def processor():
    from transformers import AutoTokenizer

    from vlmkit.models.model_paths import resolve_model_path
    from vlmkit.models.processor import MediaSpec, VLMProcessor, load_media_processor

    tokenizer = AutoTokenizer.from_pretrained(resolve_model_path("vlmkit-tiny/llama"))
    media = load_media_processor(resolve_model_path("vlmkit-tiny/clip-vision"), "image")
    return VLMProcessor(tokenizer, media, MediaSpec("image", NUM_MEDIA_TOKENS))


def image(value: int) -> Image.Image:
    return Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8), "RGB")


def pair(chosen="7", rejected="1", prompt="<image>\nWhat digit is this?", images=None, index=0):
    images = [image(40 * index)] if images is None else images
    return PreferenceSample(
        [Turn("user", prompt)], chosen, rejected, images, [], source="prefs.json", index=index
    )


def answer_text(processor, ids, labels):
    kept = [int(t) for t, lab in zip(ids, labels) if lab != IGNORE_INDEX]
    return processor.tokenizer.decode(kept, skip_special_tokens=True).strip()


def test_labels_cover_exactly_the_answer(processor):
    ds = PreferenceDataset([pair("The digit is 7.", "The digit is 1.")], processor, max_length=128)
    item = ds[0]
    assert answer_text(processor, item["chosen_input_ids"], item["chosen_labels"]) == "The digit is 7."
    assert answer_text(processor, item["rejected_input_ids"], item["rejected_labels"]) == "The digit is 1."
    # Same prompt (media tokens included) in front of both answers.
    first = int((item["chosen_labels"] != IGNORE_INDEX).nonzero()[0])
    assert torch.equal(item["chosen_input_ids"][:first], item["rejected_input_ids"][:first])
    assert int((item["chosen_input_ids"] == processor.media_token_id).sum()) == NUM_MEDIA_TOKENS
    assert item["media"].shape[0] == 1


def test_collator_stacks_chosen_then_rejected_with_media_for_each_row(processor):
    pairs = [pair("7", "The digit is 1.", index=0), pair("3", "8", index=1)]
    ds = PreferenceDataset(pairs, processor, max_length=128)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([ds[0], ds[1]])
    assert batch["num_pairs"] == 2 and count_pairs(batch) == 2
    assert batch["input_ids"].shape[0] == 4 and batch["labels"].shape == batch["input_ids"].shape
    answers = [answer_text(processor, i, lab) for i, lab in zip(batch["input_ids"], batch["labels"])]
    assert answers == ["7", "3", "The digit is 1.", "8"]
    # Right padding: every row starts with a real token, lengths follow the mask.
    assert bool(batch["attention_mask"][:, 0].all())
    assert int(batch["attention_mask"][2].sum()) == len(ds[0]["rejected_input_ids"])
    # Media once per row, in row order: pairs' media, then the same again for the rejected rows.
    media = batch["media"]
    assert media.shape[0] == 4
    assert torch.equal(media[0], media[2]) and torch.equal(media[1], media[3])
    assert not torch.equal(media[0], media[1])
    # Every media placeholder in the batch has its media tokens.
    assert int((batch["input_ids"] == processor.media_token_id).sum()) == 4 * NUM_MEDIA_TOKENS


def test_text_only_pairs_have_no_media(processor):
    ds = PreferenceDataset([pair(prompt="Say a digit.", images=[])], processor, max_length=64)
    batch = PreferenceCollator(processor.tokenizer.pad_token_id)([ds[0]])
    assert batch["media"] is None and batch["input_ids"].shape[0] == 2


def test_bad_pair_raises_with_its_location_or_is_skipped_and_counted(processor):
    bad = pair(prompt="What digit is this?", index=5)  # an image but no placeholder
    with pytest.raises(BadSampleError, match=r"prefs.json, record 5.*placeholders"):
        PreferenceDataset([pair(), bad], processor, max_length=128)
    skips = SkipCounter()
    ds = PreferenceDataset([pair(), bad], processor, max_length=128, on_bad_sample="skip", skips=skips)
    assert len(ds) == 1 and skips.total == 1


def test_pair_whose_answer_is_cut_off_is_dropped_and_counted(processor):
    skips = SkipCounter()
    long_prompt = "<image>\n" + "digit " * 100
    ds = PreferenceDataset([pair(), pair(prompt=long_prompt, index=1)], processor, max_length=64, skips=skips)
    assert len(ds) == 1 and skips.total == 1


def test_empty_batch_and_wrong_record_type(processor):
    assert PreferenceCollator(0)([None]) == {"empty": True}
    assert count_pairs({"empty": True}) == 0
    with pytest.raises(TypeError, match="preference"):
        PreferenceDataset([Sample([Turn("user", "hi")])], processor, max_length=32)


def test_pair_with_bad_media_is_skipped_and_counted_once_over_two_epochs(processor, tmp_path):
    pairs = [pair(index=0), pair(images=[str(tmp_path / "gone.png")], index=1), pair(index=2)]
    with pytest.raises(BadSampleError, match="record 1.*image not found"):
        PreferenceDataset(pairs, processor, max_length=128)[1]
    skips = SkipCounter()
    ds = PreferenceDataset(pairs, processor, max_length=128, on_bad_sample="skip", skips=skips)
    loader = torch.utils.data.DataLoader(ds, batch_size=3, collate_fn=PreferenceCollator(0))
    for _ in range(2):  # two epochs meet the bad pair
        (batch,) = list(loader)
        assert count_pairs(batch) == 2
    assert skips.total == 1 and "image not found" in next(iter(skips.as_dict()))
