"""Tests for vlmkit.ssl.contrastive: CLIP loss (1 and 2 processes), zero-shot and retrieval metrics."""

from __future__ import annotations

import math

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F

from tests.helpers.launching import free_port
from vlmkit.ssl.contrastive import (
    LogitScale,
    clip_loss,
    gather_with_grad,
    retrieval_recall,
    zero_shot_accuracy,
    zero_shot_classifier,
)


def test_clip_loss_matches_hand_computation_2x2():
    # images [3,4] -> [0.6, 0.8] and [1, 0]; texts [0, 2] -> [0, 1] and [1, 1] -> [1/sqrt2, 1/sqrt2]
    image = torch.tensor([[3.0, 4.0], [1.0, 0.0]])
    text = torch.tensor([[0.0, 2.0], [1.0, 1.0]])
    logit_scale = torch.tensor(math.log(2.0))  # scale = 2
    r = 1 / math.sqrt(2)
    # cosine matrix S[i, j] = image_i . text_j, logits = 2 * S
    s00, s01, s10, s11 = 0.8, 0.6 * r + 0.8 * r, 0.0, r
    l00, l01, l10, l11 = 2 * s00, 2 * s01, 2 * s10, 2 * s11
    # image -> text: row i, target column i; CE = -l_ii + log(sum_j exp(l_ij))
    i2t_0 = -l00 + math.log(math.exp(l00) + math.exp(l01))  # log(1 + e^(1.9799 - 1.6)) = 0.9010
    i2t_1 = -l11 + math.log(math.exp(l10) + math.exp(l11))  # log(1 + e^(0 - 1.4142)) = 0.2176
    # text -> image: transposed logits
    t2i_0 = -l00 + math.log(math.exp(l00) + math.exp(l10))  # log(1 + e^(0 - 1.6)) = 0.1839
    t2i_1 = -l11 + math.log(math.exp(l01) + math.exp(l11))  # log(1 + e^(1.9799 - 1.4142)) = 1.0156
    expected = 0.5 * ((i2t_0 + i2t_1) / 2 + (t2i_0 + t2i_1) / 2)
    assert expected == pytest.approx(0.57953, abs=1e-4)
    loss = clip_loss(image, text, logit_scale)
    assert loss.item() == pytest.approx(expected, rel=1e-5)


def test_logit_scale_is_clamped_at_100():
    torch.manual_seed(0)
    image, text = torch.randn(4, 8), torch.randn(4, 8)
    at_100 = clip_loss(image, text, torch.tensor(math.log(100.0)))
    big = torch.tensor(math.log(1000.0), requires_grad=True)
    loss = clip_loss(image, text, big)
    loss.backward()
    assert loss.item() == pytest.approx(at_100.item(), rel=1e-5)
    assert big.grad is not None and big.grad.item() == 0.0  # clamped: no push to grow further
    below = torch.tensor(math.log(50.0), requires_grad=True)
    clip_loss(image, text, below).backward()
    assert below.grad.item() != 0.0


def test_logit_scale_init_and_identity_gather():
    module = LogitScale()
    assert module().exp().item() == pytest.approx(1 / 0.07, rel=1e-6)
    assert module().requires_grad
    x = torch.randn(3, 4)
    assert gather_with_grad(x) is x  # not distributed
    with pytest.raises(ValueError, match="same shape"):
        clip_loss(torch.randn(3, 4), torch.randn(2, 4), module())


def _inputs():
    """Global batch of 6 raw inputs, two linear projections (the 'model') and a log-scale."""
    gen = torch.Generator().manual_seed(1)
    raw_image, raw_text = torch.randn(6, 5, generator=gen), torch.randn(6, 7, generator=gen)
    w_image, w_text = torch.randn(4, 5, generator=gen), torch.randn(4, 7, generator=gen)
    return raw_image, raw_text, w_image, w_text, torch.tensor(math.log(3.0))


def _loss_and_grads(raw_image, raw_text, w_image, w_text, log_scale, gather=True, detach_gather=False):
    params = [p.clone().requires_grad_(True) for p in (w_image, w_text, log_scale)]
    image, text = raw_image @ params[0].T, raw_text @ params[1].T
    if detach_gather:  # the wrong way: gathered columns carry no gradient back to their owners
        rank, world = dist.get_rank(), dist.get_world_size()
        outs = [torch.empty_like(image) for _ in range(world)]
        dist.all_gather(outs, F.normalize(image, dim=-1).detach())
        outs[rank] = F.normalize(image, dim=-1)
        txts = [torch.empty_like(text) for _ in range(world)]
        dist.all_gather(txts, F.normalize(text, dim=-1).detach())
        txts[rank] = F.normalize(text, dim=-1)
        scale = params[2].exp()
        b = image.shape[0]
        labels = torch.arange(b) + rank * b
        loss = 0.5 * (
            F.cross_entropy(scale * outs[rank] @ torch.cat(txts).T, labels)
            + F.cross_entropy(scale * txts[rank] @ torch.cat(outs).T, labels)
        )
    else:
        loss = clip_loss(image, text, params[2], gather=gather)
    loss.backward()
    return loss.detach(), [p.grad for p in params]


def _distributed_worker(rank: int, world_size: int, out_path: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        raw_image, raw_text, w_image, w_text, log_scale = _inputs()
        local = slice(rank * 3, (rank + 1) * 3)
        loss, grads = _loss_and_grads(raw_image[local], raw_text[local], w_image, w_text, log_scale)
        # what DDP does: average the replicated parameters' gradients over ranks
        for g in grads:
            dist.all_reduce(g)
            g /= world_size
        losses = [torch.zeros(()) for _ in range(world_size)]
        dist.all_gather(losses, loss)
        _, wrong = _loss_and_grads(
            raw_image[local], raw_text[local], w_image, w_text, log_scale, detach_gather=True
        )
        for g in wrong:
            dist.all_reduce(g)
            g /= world_size
        gathered = gather_with_grad(torch.full((2, 1), float(rank)))
        if rank == 0:
            torch.save({"losses": losses, "grads": grads, "wrong": wrong, "gathered": gathered}, out_path)
        dist.barrier()  # leave together: a rank exiting while another still works can abort gloo's teardown
    finally:
        dist.destroy_process_group()


@pytest.mark.slow
def test_two_process_loss_and_gradients_equal_single_process(tmp_path, monkeypatch):
    monkeypatch.setenv("MASTER_ADDR", "127.0.0.1")
    monkeypatch.setenv("MASTER_PORT", str(free_port()))
    out_path = str(tmp_path / "rank0.pt")
    mp.spawn(_distributed_worker, args=(2, out_path), nprocs=2, join=True)
    result = torch.load(out_path)

    full_loss, full_grads = _loss_and_grads(*_inputs(), gather=False)
    # each rank's loss covers its 3 rows against all 6 columns; their mean is the global loss
    rank_losses = torch.stack(result["losses"])
    assert not torch.allclose(rank_losses[0], rank_losses[1])
    assert rank_losses.mean().item() == pytest.approx(full_loss.item(), rel=1e-5)
    # the DDP average of (projection, projection, log-scale) gradients equals the 1-process gradient
    for g_ddp, g_full in zip(result["grads"], full_grads):
        torch.testing.assert_close(g_ddp, g_full, rtol=1e-5, atol=1e-6)
    # a gather without gradient loses the cross-rank terms: the test above would catch it
    assert not torch.allclose(result["wrong"][0], full_grads[0], rtol=1e-3, atol=1e-4)
    assert result["gathered"].flatten().tolist() == [0.0, 0.0, 1.0, 1.0]


def test_zero_shot_classifier_and_accuracy():
    # class 0 templates point along x (different lengths), class 1 along y
    per_class = [torch.tensor([[2.0, 0.0], [5.0, 0.0]]), torch.tensor([[0.0, 1.0], [1.0, 1.0]])]
    classifier = zero_shot_classifier(per_class)
    r = 1 / math.sqrt(2)
    mean1 = torch.tensor([r / 2, (1 + r) / 2])  # mean of [0,1] and [r,r]
    torch.testing.assert_close(classifier[0], torch.tensor([1.0, 0.0]))
    torch.testing.assert_close(classifier[1], mean1 / mean1.norm())
    images = torch.tensor([[1.0, 0.1], [0.1, 1.0], [1.0, 0.0], [0.2, 1.0]])
    assert zero_shot_accuracy(images, classifier, torch.tensor([0, 1, 0, 1])) == 1.0
    assert zero_shot_accuracy(images, classifier, torch.tensor([0, 1, 1, 0])) == 0.5
    with pytest.raises(ValueError, match="class 1"):
        zero_shot_classifier([torch.ones(2, 3), torch.ones(2, 4)])


def test_retrieval_recall_constructed_example():
    # 4 images, captions built so that image 0 and 1 retrieve their caption first, image 2 retrieves
    # caption 3 first and its own second, image 3 retrieves caption 2 first and its own second.
    image = torch.eye(4)
    text = torch.tensor(
        [
            [1.0, 0.0, 0.0, 0.0],
            [0.0, 1.0, 0.0, 0.0],
            [0.0, 0.0, 0.6, 0.8],  # closer to image 3 than to image 2
            [0.0, 0.0, 0.8, 0.6],  # closer to image 2 than to image 3
        ]
    )
    rec = retrieval_recall(image, text, ks=(1, 2))
    assert rec["image_to_text_r1"] == 0.5
    assert rec["image_to_text_r2"] == 1.0
    # text -> image: caption 2's best image is 3 (0.8 > 0.6); caption 3's best image is 2
    assert rec["text_to_image_r1"] == 0.5
    assert rec["text_to_image_r2"] == 1.0
    # a collapsed encoder (all identical) must not look perfect
    collapsed = retrieval_recall(torch.ones(4, 3), torch.ones(4, 3), ks=(1,))
    assert collapsed == {"image_to_text_r1": 0.0, "text_to_image_r1": 0.0}
