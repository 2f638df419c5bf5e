"""The processor saved beside every model: tokenizer + image processor or audio feature extractor.

It knows how many LLM tokens one media item becomes, which is what `<image>` / `<audio>` expand to.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
import torch

from vlmkit.data.records import AUDIO_TOKEN, IMAGE_TOKEN

PROCESSOR_FILE = "vlmkit_processor.json"


@dataclass
class MediaSpec:
    """What the text side needs to know about media."""

    modality: str  # "image" or "audio"
    num_media_tokens: int  # LLM tokens per media item
    audio_samples: int = 16000  # fixed clip length for audio (samples at sampling_rate)
    sampling_rate: int = 16000


def ensure_special_tokens(tokenizer) -> list[str]:
    """Add `<image>`/`<audio>` and a pad token if the tokenizer lacks them; returns what was added."""
    added = [t for t in (IMAGE_TOKEN, AUDIO_TOKEN) if t not in tokenizer.get_vocab()]
    if added:
        tokenizer.add_special_tokens({"additional_special_tokens": added}, replace_extra_special_tokens=False)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": "<|pad|>"})
        added.append("<|pad|>")
    return added


class VLMProcessor:
    """Tokenizer + media processor + the media token count."""

    def __init__(self, tokenizer, media_processor, spec: MediaSpec):
        self.tokenizer = tokenizer
        self.media_processor = media_processor
        self.spec = spec
        if getattr(tokenizer, "chat_template", None) is None:
            raise ValueError(
                "the tokenizer has no chat template; use an instruct/chat model's tokenizer or set one "
                "(tokenizer.chat_template = ...) before training"
            )

    @property
    def modality(self) -> str:
        """image or audio: what media the model reads."""
        return self.spec.modality

    @property
    def media_token(self) -> str:
        return IMAGE_TOKEN if self.spec.modality == "image" else AUDIO_TOKEN

    @property
    def media_token_id(self) -> int:
        return self.tokenizer.convert_tokens_to_ids(self.media_token)

    def process_media(self, items: list) -> torch.Tensor | None:
        """PIL images -> pixel values (n, C, H, W); float arrays -> fixed-length audio (n, L)."""
        if not items:
            return None
        if self.spec.modality == "image":
            return self.media_processor(images=items, return_tensors="pt")["pixel_values"]
        n = self.spec.audio_samples
        clips = [np.pad(a[:n], (0, max(0, n - len(a)))) for a in items]
        out = self.media_processor(clips, sampling_rate=self.spec.sampling_rate, return_tensors="pt")
        return out["input_values"]

    def save_pretrained(self, out_dir: str | Path) -> None:
        out_dir = Path(out_dir)
        out_dir.mkdir(parents=True, exist_ok=True)
        self.tokenizer.save_pretrained(out_dir)
        self.media_processor.save_pretrained(out_dir)
        (out_dir / PROCESSOR_FILE).write_text(json.dumps(asdict(self.spec), indent=2))

    @classmethod
    def from_pretrained(cls, path: str | Path) -> VLMProcessor:
        from transformers import AutoTokenizer

        path = Path(path)
        spec_file = path / PROCESSOR_FILE
        if not spec_file.is_file():
            raise FileNotFoundError(f"{path} is not a vlmkit checkpoint: {PROCESSOR_FILE} is missing")
        spec = MediaSpec(**json.loads(spec_file.read_text()))
        return cls(AutoTokenizer.from_pretrained(path), load_media_processor(path, spec.modality), spec)


def load_media_processor(path: str | Path, modality: str):
    """The image processor (PIL backend: no torchvision needed) or audio feature extractor at `path`."""
    from transformers import AutoFeatureExtractor, AutoImageProcessor

    if modality == "audio":
        return AutoFeatureExtractor.from_pretrained(path)
    return AutoImageProcessor.from_pretrained(path, backend="pil")
