"""Disk cache of frozen-encoder features: later epochs and later stages skip media decoding and the encoder.

Layout of the cache directory:

    manifest.json             {"version", "encoder_fingerprint", "preprocessing_fingerprint"}
    shard-<id>.safetensors    one tensor (N, D_enc) per media item, named by the media hash; the file's
                              metadata repeats both fingerprints

- media hash: sha256 of the file bytes (paths), of the raw bytes, or of the decoded pixels/samples
  (in-memory images and arrays), so one image under two names is encoded once.
- encoder fingerprint: sha256 of the encoder weights, its config (minus paths and attention backend),
  `feature_layer` and `drop_cls_token`.
- preprocessing fingerprint: sha256 of the image processor / feature extractor config and the media spec.

A cache made by another encoder or another preprocessing is detected from the manifest (and shard
metadata), logged with the reason, deleted and rebuilt: it is never reused silently.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import uuid
from dataclasses import asdict
from pathlib import Path

import numpy as np
import torch
from safetensors import safe_open
from safetensors.torch import save_file
from torch.utils.data import Dataset

from vlmkit.data.records import BadSampleError, SkipCounter
from vlmkit.data.sft_dataset import load_media_item
from vlmkit.models.encoders import encode

logger = logging.getLogger(__name__)

MANIFEST = "manifest.json"
VERSION = 1
_VOLATILE_CONFIG_KEYS = {"_name_or_path", "transformers_version", "_attn_implementation", "name_or_path"}


def media_hash(item) -> str:
    """sha256 of one media item: file bytes for a path, raw bytes, or decoded pixels / samples."""
    h = hashlib.sha256()
    if isinstance(item, dict):
        if item.get("bytes") is not None:
            item = item["bytes"]
        elif item.get("array") is not None:
            h.update(str(item.get("sampling_rate")).encode())
            item = np.asarray(item["array"])
        else:
            item = item.get("path")
    if isinstance(item, (str, os.PathLike)):
        with open(item, "rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    elif isinstance(item, (bytes, bytearray)):
        h.update(item)
    elif hasattr(item, "tobytes") and hasattr(item, "mode"):  # PIL image
        h.update(f"{item.mode}{item.size}".encode())
        h.update(item.tobytes())
    elif hasattr(item, "shape"):
        arr = np.ascontiguousarray(item)
        h.update(f"{arr.dtype}{arr.shape}".encode())
        h.update(arr.tobytes())
    else:
        raise TypeError(f"cannot hash a media item of type {type(item).__name__}")
    return h.hexdigest()


def _config_dict(obj) -> dict:
    d = obj.to_dict()
    return {k: v for k, v in d.items() if k not in _VOLATILE_CONFIG_KEYS and not k.startswith("_")}


def encoder_fingerprint(encoder: torch.nn.Module, feature_layer: int, drop_cls: bool) -> str:
    """sha256 of the encoder's weights + config + which features are taken (layer, CLS dropped)."""
    h = hashlib.sha256()
    meta = {"config": _config_dict(encoder.config), "feature_layer": feature_layer, "drop_cls": drop_cls}
    h.update(json.dumps(meta, sort_keys=True, default=str).encode())
    for name, tensor in sorted(encoder.state_dict().items()):
        t = tensor.detach().cpu().contiguous().reshape(-1)
        h.update(f"{name}{tensor.dtype}{tuple(tensor.shape)}".encode())
        h.update(t.view(torch.uint8).numpy().tobytes())
    return h.hexdigest()


def preprocessing_fingerprint(processor) -> str:
    """sha256 of the media processor config and the media spec (modality, clip length, sampling rate)."""
    spec = asdict(processor.spec)
    spec.pop("num_media_tokens", None)  # a connector property, not preprocessing
    meta = {"media_processor": _config_dict(processor.media_processor), "spec": spec}
    return hashlib.sha256(json.dumps(meta, sort_keys=True, default=str).encode()).hexdigest()


class FeatureCache:
    """Read/write access to one cache directory for one (encoder, preprocessing) fingerprint pair.

    `open` checks the manifest: a mismatch (or unreadable manifest) wipes the old shards and records the
    reason in `stale_reason`. `get(key)` returns the cached (N, D_enc) tensor.
    """

    def __init__(self, cache_dir: str | Path, encoder_fp: str, preprocessing_fp: str):
        self.dir = Path(cache_dir)
        self.fingerprints = {"encoder_fingerprint": encoder_fp, "preprocessing_fingerprint": preprocessing_fp}
        self.stale_reason: str | None = None
        self.index: dict[str, Path] = {}
        self._handles: dict[Path, object] = {}

    @classmethod
    def open(cls, cache_dir: str | Path, encoder_fp: str, preprocessing_fp: str, *, writer: bool = True):
        """Open (creating, or rebuilding when stale, if `writer`) the cache and index its shards."""
        cache = cls(cache_dir, encoder_fp, preprocessing_fp)
        cache.dir.mkdir(parents=True, exist_ok=True)
        cache.stale_reason = cache._check_manifest()
        if cache.stale_reason and writer:
            logger.warning("feature cache %s is stale (%s): rebuilding it", cache.dir, cache.stale_reason)
            for shard in cache.dir.glob("shard-*.safetensors"):
                shard.unlink()
        if writer and (cache.stale_reason or not (cache.dir / MANIFEST).exists()):
            tmp = cache.dir / f".{MANIFEST}.{uuid.uuid4().hex}"
            tmp.write_text(json.dumps({"version": VERSION, **cache.fingerprints}, indent=2))
            os.replace(tmp, cache.dir / MANIFEST)
        cache.refresh()
        return cache

    def _check_manifest(self) -> str | None:
        path = self.dir / MANIFEST
        if not path.exists():
            return "no manifest" if any(self.dir.glob("shard-*.safetensors")) else None
        try:
            manifest = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError) as err:
            return f"unreadable manifest: {err}"
        if manifest.get("version") != VERSION:
            return f"cache format version {manifest.get('version')}, expected {VERSION}"
        for key, expected in self.fingerprints.items():
            if manifest.get(key) != expected:
                what = "a different encoder" if key.startswith("encoder") else "different preprocessing"
                return f"built with {what} ({key} {str(manifest.get(key))[:12]} != {expected[:12]})"
        return None

    def refresh(self) -> None:
        """Re-index the shards on disk; shards with other fingerprints are ignored (never read)."""
        self.index = {}
        for shard in sorted(self.dir.glob("shard-*.safetensors")):
            with safe_open(str(shard), framework="pt") as f:
                meta = f.metadata() or {}
                if any(meta.get(k) != v for k, v in self.fingerprints.items()):
                    logger.warning("feature cache: ignoring %s (other fingerprints)", shard.name)
                    continue
                self.index.update(dict.fromkeys(f.keys(), shard))
        self._handles = {}

    def __contains__(self, key: str) -> bool:
        return key in self.index

    def __len__(self) -> int:
        return len(self.index)

    def get(self, key: str) -> torch.Tensor:
        shard = self.index[key]
        handle = self._handles.get(shard)
        if handle is None:
            handle = self._handles[shard] = safe_open(str(shard), framework="pt")
        return handle.get_tensor(key)

    def write_shard(self, features: dict[str, torch.Tensor], tag: str = "") -> Path:
        """Write one shard atomically (temporary file, then rename) and index it."""
        name = f"shard-{tag}{uuid.uuid4().hex[:12]}.safetensors"
        tmp = self.dir / f".{name}.tmp"
        tensors = {k: v.detach().cpu().contiguous() for k, v in features.items()}
        save_file(tensors, str(tmp), metadata=dict(self.fingerprints))
        os.replace(tmp, self.dir / name)
        for key in tensors:
            self.index[key] = self.dir / name
        return self.dir / name

    def __getstate__(self) -> dict:  # safe_open handles do not pickle (DataLoader workers)
        return {**self.__dict__, "_handles": {}}


def _encoder_is_frozen(model) -> bool:
    return not any(p.requires_grad for p in model.encoder.parameters())


@torch.no_grad()
def build_feature_cache(
    dataset,
    model,
    processor,
    cache_dir: str | Path,
    *,
    batch_size: int = 32,
    shard_items: int = 2048,
    accelerator=None,
    skips: SkipCounter | None = None,
) -> tuple[FeatureCache, list[list[str] | None]]:
    """Encode every media item of an SFTDataset that the cache lacks; returns (cache, keys per sample).

    keys[i] is None when sample i has media that failed to load (counted in `skips`, or raised with
    `on_bad_sample: error`). Under several processes each rank encodes its share, with the same number of
    encoder calls on every rank (ZeRO-3 needs that), and all ranks wait until the cache is complete.
    """
    if not _encoder_is_frozen(model):
        raise ValueError(
            "feature_cache_dir needs a frozen encoder, but encoder parameters are trainable "
            "(tune_encoder: true?); unset feature_cache_dir or tune_encoder"
        )
    rank, world = (accelerator.process_index, accelerator.num_processes) if accelerator else (0, 1)
    wait = accelerator.wait_for_everyone if accelerator else (lambda: None)
    enc_fp = encoder_fingerprint(model.encoder, model.config.feature_layer, model.config.drop_cls_token)
    pre_fp = preprocessing_fingerprint(processor)
    stale = FeatureCache.open(cache_dir, enc_fp, pre_fp).stale_reason if rank == 0 else None
    wait()
    cache = FeatureCache.open(cache_dir, enc_fp, pre_fp, writer=False)
    cache.stale_reason = stale  # what the check on rank 0 found (and rebuilt)
    keys_per_sample: list[list[str] | None] = []
    where: dict[str, tuple] = {}
    for item in dataset.items:
        try:
            keys = [media_hash(m) for m in item.media]
        except OSError as err:
            bad = BadSampleError(item.source, item.index, "media", f"media file not readable: {err}")
            if getattr(dataset, "on_bad_sample", "error") == "error":
                raise bad from err
            if skips is not None:
                skips.add(bad)
            keys_per_sample.append(None)
            continue
        for m, key in zip(item.media, keys):
            where.setdefault(key, (m, item.source, item.index))
        keys_per_sample.append(keys)
    missing = sorted(k for k in where if k not in cache)
    mine = missing[rank::world]
    calls = math.ceil(math.ceil(len(missing) / world) / batch_size) if missing else 0
    logger.info("feature cache %s: %d media cached, %d to encode", cache.dir, len(cache), len(missing))
    device = accelerator.device if accelerator else next(model.encoder.parameters()).device
    model.encoder.to(device).eval()
    spec = processor.spec
    pending: dict[str, torch.Tensor] = {}
    for c in range(calls):
        decoded, ok = [], []
        for key in mine[c * batch_size : (c + 1) * batch_size]:
            m, source, index = where[key]
            try:
                decoded.append(load_media_item(m, modality=spec.modality, source=source, index=index,
                                               sampling_rate=spec.sampling_rate))  # fmt: skip
                ok.append(key)
            except BadSampleError as err:
                if getattr(dataset, "on_bad_sample", "error") == "error":
                    raise
                if skips is not None:
                    skips.add(err)
        # A rank with nothing left still calls the encoder, so every rank makes the same calls (ZeRO-3).
        inputs = processor.process_media(decoded).to(device) if ok else model.dummy_media(device)
        feats = encode(model.encoder, inputs, model.config.feature_layer, model.config.drop_cls_token)
        for key, f in zip(ok, feats):
            pending[key] = f.cpu().clone()
        if len(pending) >= shard_items or (c == calls - 1 and pending):
            cache.write_shard(pending, tag=f"r{rank}-")
            pending = {}
    wait()
    cache.refresh()
    for i, keys in enumerate(keys_per_sample):
        if keys is not None and any(k not in cache for k in keys):
            keys_per_sample[i] = None
    return cache, keys_per_sample


class CachedFeatureDataset(Dataset):
    """An SFTDataset whose items carry cached `media_features` (n, N, D_enc) instead of pixels.

    Samples whose media could not be encoded (keys None) come out as None, like skipped media in SFTDataset.
    """

    def __init__(self, dataset, cache: FeatureCache, keys_per_sample: list[list[str] | None]):
        self.dataset = dataset
        self.cache = cache
        self.keys = keys_per_sample

    def __len__(self) -> int:
        return len(self.dataset)

    def lengths(self) -> list[int]:
        return self.dataset.lengths()

    def __getitem__(self, i: int) -> dict | None:
        keys = self.keys[i]
        if keys is None:
            return None
        item = self.dataset.items[i]
        return {
            "input_ids": torch.tensor(item.input_ids),
            "labels": torch.tensor(item.labels),
            "media_features": torch.stack([self.cache.get(k) for k in keys]) if keys else None,
        }
