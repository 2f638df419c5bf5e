"""From DataArgs to samples and datasets: one place that applies the data options the same way."""

from __future__ import annotations

import random

from vlmkit.data.embedded import media_root, resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.data.records import SkipCounter
from vlmkit.data.sft_dataset import SFTDataset


def read_samples(
    cfg, path: str | None, skips: SkipCounter | None = None, *, format: str | None = None
) -> list:
    """Read `path` with the config's format, media roots and bad-sample policy."""
    if not path:
        raise ValueError("no data path given: set --data_path (and --eval_data_path for held-out metrics)")
    image_folder, audio_folder = media_folders(cfg, path)
    return read_dataset(
        resolve_data_path(path),
        image_folder,
        format=format or cfg.data_format,
        audio_folder=audio_folder,
        allow_outside_root=cfg.allow_outside_media_root,
        on_bad_sample=cfg.on_bad_sample,
        skips=skips,
    )


def held_out_paths(cfg) -> list[str]:
    """The config's held-out data files (eval_data_path, and DPO's eval_prompts_path)."""
    paths = [cfg.eval_data_path, getattr(cfg, "eval_prompts_path", None)]
    return [p for p in paths if p]


def media_folders(cfg, path: str) -> tuple[str | None, str | None]:
    """(image, audio) roots for the media of data file `path`: held-out files use --eval_image_folder /
    --eval_audio_folder (default: the training ones); an embedded vlmkit-data file always its own folder."""
    image, audio = cfg.image_folder, cfg.audio_folder
    if path != cfg.data_path and path in held_out_paths(cfg):
        image, audio = cfg.eval_image_folder or image, cfg.eval_audio_folder or audio
    return media_root(path, image), media_root(path, audio)


def subsample(samples: list, limit: int, seed: int) -> list:
    """At most `limit` samples (0: all), chosen reproducibly."""
    if limit <= 0 or len(samples) <= limit:
        return samples
    return random.Random(seed).sample(samples, limit)


def sft_dataset(cfg, path: str, processor, skips: SkipCounter) -> SFTDataset:
    """Read and tokenize conversations for supervised training or held-out loss."""
    return SFTDataset(
        read_samples(cfg, path, skips),
        processor,
        max_length=cfg.max_length,
        truncation=cfg.truncation,
        on_bad_sample=cfg.on_bad_sample,
        skips=skips,
    )
