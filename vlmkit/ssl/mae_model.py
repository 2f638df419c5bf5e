"""The stage-0 masked autoencoder: transformers' `ViTMAEForPreTraining` with vlmkit's seeded patch masks,
and the linear-probe evaluation of its frozen encoder.

The encoder sees only the visible patches; a light decoder reconstructs the masked ones and the loss is
the MSE on masked patches only (optionally on per-patch normalised pixels). The output directory is a
plain `ViTMAEForPreTraining` checkpoint plus an image processor; stage 1 takes it as `--vision_tower out`
(`vlmkit.models.encoders` loads its `ViTMAEModel` with mask ratio 0 and identity noise: every patch, in order).
"""

from __future__ import annotations

import copy
import zlib

import torch
from torch import Tensor, nn

from vlmkit.models.encoders import encode
from vlmkit.ssl.masking import random_patch_mask
from vlmkit.ssl.probe import linear_probe_accuracy

__all__ = [
    "PatchMasker",
    "build_mae_model",
    "init_mae_weights",
    "labelled_subset",
    "mae_image_processor",
    "mae_loss_fn",
    "probe_accuracy",
    "probe_features",
    "random_init_encoder",
    "sincos_position_embeddings",
]


def mae_image_processor(image_size: int):
    """Resize to `image_size` square and scale to [-1, 1] (ViT preprocessing, PIL backend)."""
    from transformers import ViTImageProcessorPil

    return ViTImageProcessorPil(size={"height": image_size, "width": image_size})


def build_mae_model(cfg) -> nn.Module:
    """A `ViTMAEForPreTraining`: `from_pretrained(cfg.model_name_or_path)` or new from the size fields of `cfg`.

    `mask_ratio` and `norm_pix_loss` always come from `cfg`.
    """
    from transformers import ViTMAEConfig, ViTMAEForPreTraining

    overrides = {"mask_ratio": cfg.mask_ratio, "norm_pix_loss": cfg.norm_pix_loss}
    if cfg.model_name_or_path:
        return ViTMAEForPreTraining.from_pretrained(
            cfg.model_name_or_path, trust_remote_code=cfg.trust_remote_code, **overrides
        )
    config = ViTMAEConfig(
        image_size=cfg.image_size, patch_size=cfg.patch_size, num_channels=3, hidden_size=cfg.hidden_size,
        num_hidden_layers=cfg.num_layers, num_attention_heads=cfg.num_heads,
        intermediate_size=4 * cfg.hidden_size, decoder_hidden_size=cfg.decoder_hidden_size,
        decoder_num_hidden_layers=cfg.decoder_layers, decoder_num_attention_heads=cfg.decoder_heads,
        decoder_intermediate_size=4 * cfg.decoder_hidden_size, **overrides,
    )  # fmt: skip
    model = ViTMAEForPreTraining(config)
    init_mae_weights(model)
    return model


def sincos_position_embeddings(grid: int, dim: int) -> Tensor:
    """(1 + grid * grid, dim) fixed 2-D sin-cos position embeddings as in MAE: a zero row for CLS, then the
    patches row by row; the first half of the channels encodes the column, the second half the row."""
    if dim % 4:
        raise ValueError(f"sin-cos position embeddings need a width divisible by 4, got {dim}")
    quarter = dim // 4
    omega = 1.0 / 10000 ** (torch.arange(quarter, dtype=torch.float64) / quarter)  # (dim/4,)
    rows, cols = torch.meshgrid(torch.arange(grid), torch.arange(grid), indexing="ij")

    def axis(pos: Tensor) -> Tensor:
        angles = pos.flatten().double()[:, None] * omega  # (grid*grid, dim/4)
        return torch.cat([angles.sin(), angles.cos()], dim=1)

    patches = torch.cat([axis(cols), axis(rows)], dim=1).float()
    return torch.cat([torch.zeros(1, dim), patches])


@torch.no_grad()
def init_mae_weights(model: nn.Module) -> None:
    """MAE's initialisation of the parts transformers 5.x leaves at zero when a ViTMAE is built from a config.

    Its init hook for the embeddings returns early once the patch projection is initialised, so the fixed
    sin-cos position embeddings stay zero and the model knows no patch positions (it can then only learn the
    mean image). This fills them (encoder and decoder) and draws the CLS and mask tokens (normal, std 0.02).
    Takes a `ViTMAEForPreTraining` or a `ViTMAEModel`.
    """
    config = model.config
    grid = config.image_size // config.patch_size
    vit = getattr(model, "vit", model)
    vit.embeddings.position_embeddings.copy_(sincos_position_embeddings(grid, config.hidden_size)[None])
    nn.init.normal_(vit.embeddings.cls_token, std=config.initializer_range)
    decoder = getattr(model, "decoder", None)
    if decoder is not None:
        decoder.decoder_pos_embed.copy_(sincos_position_embeddings(grid, config.decoder_hidden_size)[None])
        nn.init.normal_(decoder.mask_token, std=config.initializer_range)


class PatchMasker:
    """Seeded MAE masks, handed to ViTMAE as its ``noise`` argument.

    The n-th call on rank r draws from a generator seeded by (seed, r, n), and the call count is
    checkpointed (pass the masker in ``train(..., extra_state=...)``), so a resumed run replays the
    masks of an uninterrupted one.
    """

    def __init__(self, num_patches: int, mask_ratio: float, seed: int, rank: int = 0):
        # ViTMAE keeps int(N * (1 - ratio)) patches; random_patch_mask keeps N - round(N * ratio).
        if int(num_patches * (1 - mask_ratio)) != num_patches - round(num_patches * mask_ratio):
            raise ValueError(
                f"mask_ratio={mask_ratio} with {num_patches} patches is ambiguous (ViTMAE and vlmkit would "
                "keep different counts); choose a ratio that masks a whole number of patches"
            )
        self.num_patches, self.mask_ratio, self.seed, self.rank = num_patches, mask_ratio, seed, rank
        self.calls = 0

    def __call__(self, batch_size: int) -> Tensor:
        """(B, N) float noise whose ascending argsort keeps exactly the patches `random_patch_mask` keeps."""
        key = zlib.crc32(f"{self.seed}/{self.rank}/{self.calls}".encode())
        generator = torch.Generator().manual_seed(key)
        self.calls += 1
        _, _, ids_restore = random_patch_mask(batch_size, self.num_patches, self.mask_ratio, generator)
        return ids_restore.float()  # patch i's rank in the shuffle: argsort gives the shuffle back

    def state_dict(self) -> dict:
        return {"calls": self.calls}

    def load_state_dict(self, state: dict) -> None:
        self.calls = int(state["calls"])


def mae_loss_fn(masker: PatchMasker):
    """`compute_loss` for `vlmkit.training.loop.train` (use ``count_items=lambda b: 1``): the MSE on the
    masked patches of the micro-batch, with masks from `masker`."""

    def compute_loss(model: nn.Module, batch: dict) -> tuple[Tensor, dict]:
        pixels = batch["pixel_values"]
        noise = masker(pixels.shape[0]).to(pixels.device)
        out = model(pixel_values=pixels, noise=noise)
        return out.loss, {}

    return compute_loss


def random_init_encoder(config, seed: int) -> nn.Module:
    """A freshly initialised `ViTMAEModel` of `config`, reading every patch (mask ratio 0): the probe baseline."""
    from transformers import ViTMAEModel

    config = copy.deepcopy(config)
    config.mask_ratio = 0.0
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        encoder = ViTMAEModel(config)
        init_mae_weights(encoder)
    return encoder.eval()


@torch.no_grad()
def probe_features(
    encoder: nn.Module, pixel_values: Tensor, pooling: str = "mean", batch_size: int = 64
) -> Tensor:
    """Frozen last-layer features for a linear probe, read the way stage 1 reads the tower.

    Args:
        encoder: a loaded tower (`vlmkit.models.encoders.load_encoder`; ViTMAE needs mask ratio 0).
        pixel_values: (N, C, H, W).
        pooling: "mean" over the patch tokens, or "cls" (token 0).

    Returns:
        (N, D) float features on the CPU.
    """
    if pooling not in ("mean", "cls"):
        raise ValueError(f"probe pooling must be 'mean' or 'cls', got {pooling!r}")
    if getattr(encoder.config, "mask_ratio", 0.0) != 0.0:
        raise ValueError("probe_features needs an encoder that reads every patch: load it with load_encoder")
    device = next(encoder.parameters()).device
    rows = []
    for chunk in pixel_values.split(batch_size):
        tokens = encode(encoder, chunk.to(device), feature_layer=-1, drop_cls=False)  # (B, 1 + N, D)
        rows.append((tokens[:, 1:].mean(dim=1) if pooling == "mean" else tokens[:, 0]).float().cpu())
    return torch.cat(rows)


def labelled_subset(labels: Tensor, per_class: int, seed: int) -> Tensor:
    """Indices of at most `per_class` examples of every class, drawn reproducibly (0: all indices)."""
    if per_class <= 0:
        return torch.arange(len(labels))
    generator = torch.Generator().manual_seed(seed)
    order = torch.randperm(len(labels), generator=generator)
    picked = [order[labels[order] == c][:per_class] for c in labels.unique()]
    return torch.cat(picked).sort().values


def probe_accuracy(
    encoder: nn.Module,
    train_pixels: Tensor,
    train_labels: Tensor,
    eval_pixels: Tensor,
    eval_labels: Tensor,
    *,
    pooling: str = "mean",
    labels_per_class: int = 0,
    seed: int = 0,
    batch_size: int = 64,
) -> float:
    """Held-out accuracy of a logistic-regression probe on frozen features of `encoder`.

    The probe trains on `labels_per_class` images per class of the training split (0: all of them).
    """
    keep = labelled_subset(train_labels, labels_per_class, seed)
    train_features = probe_features(encoder, train_pixels[keep], pooling, batch_size)
    eval_features = probe_features(encoder, eval_pixels, pooling, batch_size)
    return linear_probe_accuracy(train_features, train_labels[keep], eval_features, eval_labels, seed=seed)
