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
from vlmkit.models.packed_attention import is_packed, packed_attention_kwargs
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
    return _make_world(tmp_path_factory.mktemp("packing"), "llama", "sdpa")


def _make_world(root, family: str, attn: str) -> SimpleNamespace:
    """A tiny VLM with the `family` LLM and `attn` attention, five samples (with and without images) and
    each sample's loss computed alone."""
    torch.manual_seed(0)
    model, processor = build_vlm(
        ModelArgs(
            vision_tower="vlmkit-tiny/clip-vision", language_model=f"vlmkit-tiny/{family}",
            attn_implementation=attn,
        )
    )  # fmt: skip
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


FAMILIES = [("llama", "sdpa"), ("llama", "eager"), ("qwen2", "sdpa"), ("qwen2", "eager")]


@pytest.fixture(scope="module", params=FAMILIES, ids=[f"{f}-{a}" for f, a in FAMILIES])
def family_world(request, tmp_path_factory):
    family, attn = request.param
    return _make_world(tmp_path_factory.mktemp(f"packing-{family}-{attn}"), family, attn)


def test_packed_logits_and_loss_equal_unpacked_for_every_lm_family(family_world, monkeypatch):
    """The boundaries VLM.forward passes are enough on their own: transformers' detection of position-id
    resets is switched off here, and every sample's logits and the batch loss still match unpacked runs."""
    import transformers.masking_utils

    world = family_world
    monkeypatch.setattr(transformers.masking_utils, "find_packed_sequence_indices", lambda position_ids: None)
    pad = world.processor.tokenizer.pad_token_id
    packed = PackedDataset(world.dataset, max_tokens=112)
    assert any(len(b) >= 2 for b in packed.bins)
    batch = PackedCollator(pad)([packed[i] for i in range(len(packed))])
    assert "attention_mask" not in batch
    lengths = world.dataset.lengths()
    with torch.no_grad():
        logits = world.model(
            input_ids=batch["input_ids"], media=batch.get("media"), position_ids=batch["position_ids"]
        ).logits
        # control: the same packed call without the boundaries (the LLM alone) attends across samples
        embeds = world.model.embed(batch["input_ids"], batch.get("media"))
        leaky = world.model.language_model(inputs_embeds=embeds, position_ids=batch["position_ids"]).logits
    alone = SFTCollator(pad)
    worst, leak = 0.0, 0.0
    for r, row in enumerate(packed.bins):
        start = 0
        for j in row:
            single = alone([world.dataset[j]])
            with torch.no_grad():
                expected = world.model(
                    input_ids=single["input_ids"],
                    attention_mask=single["attention_mask"],
                    media=single["media"],
                ).logits[0]
            end = start + lengths[j]
            worst = max(worst, (logits[r, start:end] - expected).abs().max().item())
            leak = max(leak, (leaky[r, start:end] - expected).abs().max().item())
            start = end
    assert worst < 1e-4, worst
    assert leak > 1e-3, leak  # so the comparison above can fail
    packed_loss = float(token_loss_sum(logits, batch["labels"]))
    assert packed_loss == pytest.approx(sum(world.expected.values()), rel=1e-5)


def test_use_cache_with_packed_rows_is_refused(world):
    packed = PackedDataset(world.dataset, max_tokens=112)
    batch = PackedCollator(world.processor.tokenizer.pad_token_id)([packed[i] for i in range(len(packed))])
    with pytest.raises(ValueError, match="use_cache=True with packed rows"):
        world.model(
            input_ids=batch["input_ids"], media=batch.get("media"), position_ids=batch["position_ids"],
            use_cache=True,
        )  # fmt: skip
    # unpacked rows may still use the cache
    single = SFTCollator(world.processor.tokenizer.pad_token_id)([world.dataset[1]])
    out = world.model(input_ids=single["input_ids"], attention_mask=single["attention_mask"], use_cache=True)
    assert out.past_key_values is not None


def test_boundaries_passed_to_each_attention_backend():
    positions = torch.tensor([[0, 1, 2, 0, 1, 0]])
    assert is_packed(positions, None) and not is_packed(torch.arange(6)[None], None)
    assert not is_packed(positions, torch.ones(1, 6))  # a 2-D padding mask: padded rows, not packed ones
    flash = packed_attention_kwargs("flash_attention_2", positions, None, torch.float32)
    assert flash["cu_seq_lens_q"].tolist() == flash["cu_seq_lens_k"].tolist() == [0, 3, 5, 6]
    assert flash["cu_seq_lens_q"].dtype == torch.int32 and flash["max_length_q"] == flash["max_length_k"] == 3
    with pytest.raises(ValueError, match="one flattened row"):
        packed_attention_kwargs("flash_attention_2", positions.expand(2, -1), None, torch.float32)
    sdpa = packed_attention_kwargs("sdpa", positions, None, torch.float32)["attention_mask"]
    assert sdpa.dtype == torch.bool and sdpa.shape == (1, 1, 6, 6)
    assert torch.equal(sdpa, block_causal_mask(positions, torch.float32) == 0)
    eager = packed_attention_kwargs("eager", positions, None, torch.bfloat16)["attention_mask"]
    assert eager.dtype == torch.bfloat16 and eager[0, 0, 3, 2] == torch.finfo(torch.bfloat16).min
    assert packed_attention_kwargs("sdpa", torch.arange(6)[None], None, torch.float32) == {}
    with pytest.raises(ValueError, match="flex_attention"):
        packed_attention_kwargs("flex_attention", positions, None, torch.float32)
