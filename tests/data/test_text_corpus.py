"""Text for LM pretraining: readers (with errors that name file and record), packing, document positions."""

from __future__ import annotations

import json

import pytest
import torch

from vlmkit.data.lm_corpus import corpus_documents
from vlmkit.data.text_corpus import BlockCollator, document_position_ids, pack_documents, read_documents
from vlmkit.models.tiny import build_tokenizer


def test_txt_documents_are_blank_line_separated(tmp_path):
    path = tmp_path / "c.txt"
    path.write_text("first doc\nsecond line\n\n\nsecond doc\n\n")
    assert read_documents(str(path)) == ["first doc\nsecond line", "second doc"]


def test_jsonl_text_field_and_errors_name_file_and_record(tmp_path):
    good = tmp_path / "a.jsonl"
    good.write_text(json.dumps({"body": "x y"}) + "\n\n" + json.dumps({"body": "z"}) + "\n")
    assert read_documents(str(good), text_field="body") == ["x y", "z"]
    with pytest.raises(ValueError, match=r"a\.jsonl: record 0 has no string field 'text'"):
        read_documents(str(good))
    bad = tmp_path / "b.jsonl"
    bad.write_text(json.dumps({"text": "ok"}) + "\n{not json\n")
    with pytest.raises(ValueError, match=r"b\.jsonl: record 1 \(line 2\) is not valid JSON"):
        read_documents(str(bad))


def test_hf_dataset_saved_to_disk(tmp_path):
    from datasets import Dataset

    Dataset.from_dict({"content": ["one two", "three"]}).save_to_disk(str(tmp_path / "ds"))
    assert read_documents(str(tmp_path / "ds"), text_field="content") == ["one two", "three"]
    with pytest.raises(ValueError, match="no column 'text'"):
        read_documents(str(tmp_path / "ds"))


def test_packing_joins_documents_with_eos_and_drops_the_tail():
    tok = build_tokenizer()
    docs = ["one two three", "four five", "six"]
    ids = [tok(d, add_special_tokens=False)["input_ids"] for d in docs]
    stream = [t for d in ids for t in (*d, tok.eos_token_id)]
    blocks = pack_documents(docs, tok, block_size=4)
    assert blocks.shape == (len(stream) // 4, 4)
    assert blocks.reshape(-1).tolist() == stream[: blocks.numel()]
    with pytest.raises(ValueError, match="fewer than one block"):
        pack_documents(["a"], tok, block_size=64)


def test_position_ids_restart_after_each_eos():
    eos = 1
    ids = torch.tensor([[5, 1, 9, 9, 1, 7, 7, 7], [1, 2, 3, 1, 1, 4, 5, 6]])
    expected = torch.tensor([[0, 1, 0, 1, 2, 0, 1, 2], [0, 0, 1, 2, 0, 0, 1, 2]])
    assert torch.equal(document_position_ids(ids, eos), expected)
    batch = BlockCollator(eos)([ids[0], ids[1]])
    assert "attention_mask" not in batch and torch.equal(batch["labels"], ids)
    plain = BlockCollator(None)([ids[0]])
    assert "position_ids" not in plain and plain["attention_mask"].all()


def test_block_diagonal_attention_isolates_documents():
    """With restarted positions a document's logits do not depend on the document before it."""
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM(LlamaConfig(vocab_size=32, hidden_size=32, intermediate_size=64,
                                         num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2))  # fmt: skip
    model.eval()
    eos, doc = 1, [7, 8, 9, 10]
    a = torch.tensor([[3, 4, 5, eos, *doc]])
    b = torch.tensor([[11, 12, 13, eos, *doc]])
    batches = [BlockCollator(eos)([x[0]]) for x in (a, b)]
    # use_cache=False as in training: transformers detects packing only without a cache and attention_mask
    out = [
        model(input_ids=x["input_ids"], position_ids=x["position_ids"], use_cache=False).logits
        for x in batches
    ]
    assert torch.allclose(out[0][0, 4:], out[1][0, 4:], atol=1e-5)
    assert not torch.allclose(out[0][0, :3], out[1][0, :3])


def test_corpus_is_deterministic_and_names_digits_without_media():
    import numpy as np

    docs = corpus_documents(np.random.default_rng(3), 200)
    assert docs == corpus_documents(np.random.default_rng(3), 200)
    assert len(set(docs)) > 150
    assert not any("<image>" in d or "<audio>" in d for d in docs)


def test_corpus_says_what_the_stage1_captions_and_questions_say():
    """The LLM that stage 1 freezes has read every image and audio caption template, stage-1 instruction and
    stage-2 question (with some digit filled in) in its pretraining text."""
    import numpy as np

    from vlmkit.data.digits import CAPTION_TEMPLATES, DIGIT_WORDS, NUMERALS, QUESTIONS, STAGE1_INSTRUCTIONS
    from vlmkit.data.spoken_digits import AUDIO_CAPTIONS, AUDIO_QUESTIONS, AUDIO_STAGE1_INSTRUCTIONS

    text = "\n".join(corpus_documents(np.random.default_rng(0), 3000))
    prompts = [s.replace("{token}", "").strip() for s in STAGE1_INSTRUCTIONS + AUDIO_STAGE1_INSTRUCTIONS]
    missing = [
        t for t in CAPTION_TEMPLATES + AUDIO_CAPTIONS
        if not any(t.format(n=n, w=w) in text for n, w in zip(NUMERALS, DIGIT_WORDS))
    ]  # fmt: skip
    missing += [s for s in [*prompts, *QUESTIONS, *AUDIO_QUESTIONS] if s and s not in text]
    assert not missing, missing
