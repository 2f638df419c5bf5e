"""Samples skipped while DataLoader workers read them are counted in the main process, once each."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from tests.helpers.tiny_loop import config
from vlmkit.data.packing import PackedCollator, PackedDataset
from vlmkit.data.records import Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import SFTCollator, SFTDataset
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import MediaSpec, VLMProcessor, load_media_processor
from vlmkit.models.tiny import build_tokenizer
from vlmkit.training.accelerator import make_accelerator
from vlmkit.training.loop import train


@pytest.fixture(scope="module")
def processor():
    media = load_media_processor(resolve_model_path("vlmkit-tiny/clip-vision"), "image")
    return VLMProcessor(build_tokenizer(), media, MediaSpec(modality="image", num_media_tokens=2))


def _samples(tmp_path) -> list[Sample]:
    image = tmp_path / "ok.png"
    Image.new("RGB", (8, 8), (255, 0, 0)).save(image)
    out = []
    for i in range(8):
        path = tmp_path / "gone.png" if i in (2, 5) else image  # records 2 and 5: missing images
        turns = [Turn("user", "<image>\nwhich?"), Turn("assistant", str(i))]
        out.append(Sample(turns, images=[str(path)], index=i, source="train.json"))
    # record 8: two placeholders, one image; skipped (and counted) before any worker starts
    turns = [Turn("user", "<image><image>\nwhich?"), Turn("assistant", "8")]
    out.append(Sample(turns, images=[str(image)], index=8, source="train.json"))
    return out


def _token_loss(model, batch):
    """A loss with a gradient that depends on the batch, enough to drive the loop."""
    x = (batch["labels"] != -100).float().sum(1, keepdim=True)
    return model(x).pow(2).sum(), {}


@pytest.mark.parametrize("packing", [False, True], ids=["padded", "packed"])
@pytest.mark.parametrize("workers", [0, 2])
def test_media_skips_in_worker_processes_reach_the_counter_once(processor, tmp_path, workers, packing):
    skips = SkipCounter()
    dataset = SFTDataset(_samples(tmp_path), processor, max_length=64, on_bad_sample="skip", skips=skips)
    collate = SFTCollator(processor.tokenizer.pad_token_id)
    if packing:
        dataset, collate = (
            PackedDataset(dataset, max_tokens=64),
            PackedCollator(processor.tokenizer.pad_token_id),
        )
    # three epochs over every row: each bad record is met three times, counted once
    steps = 3 * len(dataset) // 2
    cfg = config(tmp_path / "run", max_steps=steps, save_steps=0, per_device_train_batch_size=2,
                 dataloader_num_workers=workers)  # fmt: skip
    (tmp_path / "run").mkdir()
    torch.manual_seed(0)
    accelerator = make_accelerator(output_dir=cfg.output_dir, gradient_accumulation_steps=1)
    result = train(cfg, accelerator, torch.nn.Linear(1, 1), dataset, collate, _token_loss)
    assert result.global_step == steps
    assert skips.total == 3 and skips.as_dict()["image not found"] == 2, skips.as_dict()


def test_absorb_counts_each_keyed_skip_once(monkeypatch):
    from vlmkit.data import records
    from vlmkit.data.records import BadSampleError

    main = SkipCounter()
    main.add(BadSampleError("train.json", 1, "conversations", "placeholders: 2 <image> but 1 image"))
    assert main.take_new() == []  # counted in the main process: nothing to report
    worker = SkipCounter()
    err = BadSampleError("train.json", 3, "images", "image not found: x.png")
    monkeypatch.setattr(records, "_in_dataloader_worker", lambda: True)
    worker.add(err, key=("media", "train.json", 3))
    worker.add(err, key=("media", "train.json", 3))  # the same record in the same worker: once
    new = worker.take_new()
    assert new == [(("media", "train.json", 3), "image not found")] and worker.take_new() == []
    main.absorb(new)
    main.absorb(new)  # another epoch's worker met it again
    assert main.as_dict()["image not found"] == 1 and main.total == 2
