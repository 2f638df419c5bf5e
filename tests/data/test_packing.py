"""Padding-free packing: exact per-sample losses, no attention across samples, media in placeholder order."""

from types import SimpleNamespace

import numpy as np
import pytest
import torch
from PIL import Image

from vlmkit.config.args import ModelArgs
from vlmkit.data.packing import PackedCollator, PackedDataset, block_causal_mask, pack_lengths
from vlmkit.data.records import Sample, SkipCounter, Turn
from vlmkit.data.sft_dataset import SFTCollator, SFTDataset
from vlmkit.models.build import build_vlm
from vlmkit.training.loop import count_supervised_tokens
from vlmkit.training.losses import token_loss_sum
from vlmkit.training.train_data import build_train_data


def test_pack_lengths_fills_bins_and_keeps_every_sample_once():
    lengths = [5, 4, 3, 3, 2, 1, 7, 6]
    bins = pack_lengths(lengths, 8)
    assert sorted(i for b in bins for i in b) == list(range(len(lengths)))
    assert all(sum(lengths[i] for i in b) <= 8 for b in bins)
    assert len(bins) == 4  # 31 tokens: the optimum for bins of 8
    assert pack_lengths(lengths, 8) == bins


def test_sample_longer_than_the_budget_is_named():
    with pytest.raises(ValueError, match="sample 2 has 9 tokens"):
        pack_lengths([3, 4, 9], 8)


def test_collator_resets_positions_masks_first_labels_and_pads_apart():
    a = {"input_ids": torch.tensor([5, 6, 7]), "labels": torch.tensor([-100, 6, 7]), "media": None}
    b = {"input_ids": torch.tensor([8, 9]), "labels": torch.tensor([8, 9]), "media": None}
    c = {"input_ids": torch.tensor([4]), "labels": torch.tensor([4]), "media": None}
    batch = PackedCollator(pad_token_id=0)([[a, b], [c, None]])
    assert batch["input_ids"].tolist() == [[5, 6, 7, 8, 9], [4, 0, 0, 0, 0]]
    assert batch["position_ids"].tolist() == [[0, 1, 2, 0, 1], [0, 0, 1, 2, 3]]
    assert batch["labels"].tolist() == [[-100, 6, 7, -100, 9], [-100, -100, -100, -100, -100]]
    assert "attention_mask" not in batch
    # Same count as unpacked batches: labels after the one-token shift.
    unpacked = SFTCollator(0)([a, b, c])
    assert count_supervised_tokens(batch) == count_supervised_tokens(unpacked) == 3
    flat = PackedCollator(pad_token_id=0, flatten=True)([[a, b], [c]])
    assert flat["input_ids"].shape == (1, 6) and flat["position_ids"].tolist() == [[0, 1, 2, 0, 1, 0]]
    assert PackedCollator(0)([[None]]) == {"empty": True}


def test_block_causal_mask_blocks_other_samples():
    mask = block_causal_mask(torch.tensor([[0, 1, 2, 0, 1]]))
    allowed = (mask[0, 0] == 0).int().tolist()
    assert allowed == [
        [1, 0, 0, 0, 0],
        [1, 1, 0, 0, 0],
        [1, 1, 1, 0, 0],
        [0, 0, 0, 1, 0],
        [0, 0, 0, 1, 1],
    ]


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    root = tmp_path_factory.mktemp("packing")
    torch.manual_seed(0)
    model, processor = build_vlm(
        ModelArgs(vision_tower="vlmkit-tiny/clip-vision", language_model="vlmkit-tiny/llama")
    )
    model.eval()
    rng = np.random.default_rng(0)
    paths = []
    for i in range(4):
        p = root / f"img{i}.png"
        Image.fromarray(rng.integers(0, 255, (32, 32, 3), dtype=np.uint8)).save(p)
        paths.append(str(p))
    samples = [
        Sample([Turn("user", "<image>\nWhat digit?"), Turn("assistant", "seven")], [paths[0]], index=0),
        Sample([Turn("user", "Hello there"), Turn("assistant", "one two three four")], [], index=1),
        Sample(
            [
                Turn("user", "<image> and <image>: compare"),
                Turn("assistant", "the first is odd"),
                Turn("user", "why?"),
                Turn("assistant", "because it is seven"),
            ],
            paths[1:3],
            index=2,
        ),
        Sample([Turn("user", "<image>\nDescribe"), Turn("assistant", "A digit.")], [paths[3]], index=3),
        Sample([Turn("user", "yes or no"), Turn("assistant", "no")], [], index=4),
    ]
    dataset = SFTDataset(samples, processor, max_length=128)
    world = SimpleNamespace(model=model, processor=processor, dataset=dataset)
    world.expected = _unpacked_losses(world)  # each sample alone, padded collator
    return world


def _per_sample_losses(model, batch, bins, lengths):
    with torch.no_grad():
        logits = model(
            input_ids=batch["input_ids"], attention_mask=batch.get("attention_mask"),
            media=batch.get("media"), position_ids=batch["position_ids"],
        ).logits  # fmt: skip
    losses = {}
    for r, row in enumerate(bins):
        start = 0
        for j in row:
            end = start + lengths[j]
            losses[j] = float(
                token_loss_sum(logits[r : r + 1, start:end], batch["labels"][r : r + 1, start:end])
            )
            start = end
    return losses


def _unpacked_losses(world):
    collate = SFTCollator(world.processor.tokenizer.pad_token_id)
    out = {}
    with torch.no_grad():
        for j in range(len(world.dataset)):
            b = collate([world.dataset[j]])
            logits = world.model(
                input_ids=b["input_ids"], attention_mask=b["attention_mask"], media=b["media"]
            )
            out[j] = float(token_loss_sum(logits.logits, b["labels"]))
    return out


@pytest.mark.parametrize("mode", ["position_ids", "explicit_mask", "flatten"])
def test_packed_losses_equal_unpacked_per_sample(world, mode):
    packed = PackedDataset(world.dataset, max_tokens=112)
    assert any(len(b) >= 2 and sum(len(world.dataset.items[j].media) for j in b) >= 2 for b in packed.bins)
    collate = PackedCollator(
        world.processor.tokenizer.pad_token_id,
        flatten=mode == "flatten",
        explicit_mask=mode == "explicit_mask",
    )
    batch = collate([packed[i] for i in range(len(packed))])
    bins = [[j for b in packed.bins for j in b]] if mode == "flatten" else packed.bins
    packed_losses = _per_sample_losses(world.model, batch, bins, world.dataset.lengths())
    expected = world.expected
    for j, loss in expected.items():
        assert abs(packed_losses[j] - loss) < 1e-5, (j, packed_losses[j], loss)
    unpacked = SFTCollator(world.processor.tokenizer.pad_token_id)([world.dataset[j] for j in range(5)])
    assert count_supervised_tokens(batch) == count_supervised_tokens(unpacked)


def test_without_position_resets_samples_would_leak(world):
    """Control: the same packed rows with plain 0..T-1 positions give different losses, so the test above
    can fail; and swapping two media items in a row changes the losses, so media order is checked too."""
    packed = PackedDataset(world.dataset, max_tokens=112)
    batch = PackedCollator(world.processor.tokenizer.pad_token_id)([packed[i] for i in range(len(packed))])
    expected = world.expected
    leaky = dict(batch, position_ids=torch.arange(batch["input_ids"].shape[1]).expand_as(batch["input_ids"]))
    leaky_losses = _per_sample_losses(world.model, leaky, packed.bins, world.dataset.lengths())
    assert max(abs(leaky_losses[j] - expected[j]) for j in expected) > 1e-3
    swapped = dict(batch, media=batch["media"].flip(0))
    swapped_losses = _per_sample_losses(world.model, swapped, packed.bins, world.dataset.lengths())
    assert max(abs(swapped_losses[j] - expected[j]) for j in expected) > 1e-4


def test_build_train_data_options(world, monkeypatch):
    monkeypatch.setattr("vlmkit.training.train_data.sft_dataset", lambda *a, **k: world.dataset)
    cfg = SimpleNamespace(
        data_path="x", max_length=112, packing=True, packing_max_tokens=112, group_by_length=False,
        per_device_train_batch_size=2, seed=0, feature_cache_dir=None,
    )  # fmt: skip
    train_set, collate, sampler = build_train_data(cfg, world.processor, SkipCounter(), model=world.model)
    assert isinstance(train_set, PackedDataset) and isinstance(collate, PackedCollator) and sampler is None
    cfg.max_length = 113
    with pytest.raises(ValueError, match="packing_max_tokens"):
        build_train_data(cfg, world.processor, SkipCounter(), model=world.model)
    cfg.packing, cfg.group_by_length = False, True
    _, collate, sampler = build_train_data(cfg, world.processor, SkipCounter(), model=world.model)
    assert isinstance(collate, SFTCollator) and sorted(sampler) == list(range(5))
