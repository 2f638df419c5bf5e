"""Canonical samples through a native VLM's own processor: chat template, media expansion, assistant labels.

Labels never rely on `{% generation %}` markers (most released templates have none). Each assistant turn k
is located by rendering the conversation twice more and comparing token ids with the full rendering:

    start = common prefix of ids(messages[:k] + generation prompt) and ids(all messages)
    end   = common prefix of ids(messages[:k+1]) and ids(all messages)

`full[start:end]` is what the template writes for that turn: the answer and its end-of-turn token (the
family's `END_OF_TURN`, e.g. `<|im_end|>`, supervised so the model learns to stop); formatting the template
writes after that token (a newline) is not supervised. Where the processor expands an image only by repeating
its image token (LLaVA, LLaVA-NeXT/OneVision, Qwen2/2.5-VL), the full text is tokenized once with character
offsets and the prefixes are rendered as text only: a prefix shares the tokens that end inside the characters
it shares with the full text, mapped onto the processor's ids (checked per sample). That saves processing the
images and tokenizing once per turn; the labels are the same (tested). Media are expanded by the processor itself
(Qwen2-VL `image_grid_thw`, LLaVA-NeXT `image_sizes`, Idefics3 `pixel_attention_mask`, Gemma 3
`token_type_ids`...). A sample longer than `max_length` is cut only after its last media token, and only
if a supervised token survives; otherwise it is an error or, with `truncation="drop"`, a counted drop.
"""

from __future__ import annotations

from bisect import bisect_right
from collections.abc import Sequence
from itertools import accumulate

import torch

from vlmkit.data.records import IMAGE_TOKEN, BadSampleError, Sample
from vlmkit.data.sft_dataset import load_media_item
from vlmkit.data.tokenize import IGNORE_INDEX, SampleDropped
from vlmkit.models.native.loading import save_processor
from vlmkit.models.native.templates import END_OF_TURN

# Tokens that belong to an image's block besides the image token itself (never cut, never supervised).
_MEDIA_TOKENS = (
    "<|vision_start|>", "<|vision_end|>", "<fake_token_around_image>", "<global-img>", "<start_of_image>",
    "<end_of_image>",
)  # fmt: skip
# Families whose processor expands an image only by repeating its image token: their assistant turns are
# found on the template's text with the tokenizer alone (no image processing per prefix).
REPEATS_IMAGE_TOKEN = ("llava", "llava_next", "llava_onevision", "qwen2_vl", "qwen2_5_vl")
# Keys the processor returns with one entry per token (padded with the value given).
SEQUENCE_KEYS = {"input_ids": None, "attention_mask": 0, "labels": IGNORE_INDEX, "token_type_ids": 0,
                 "mm_token_type_ids": 0}  # fmt: skip


def sample_messages(sample: Sample) -> list[dict]:
    """Turns with `<image>` placeholders -> processor messages with image and text parts, in order."""
    messages = []
    for turn in sample.turns:
        if "<audio>" in turn.text:
            raise BadSampleError(
                sample.source,
                sample.index,
                "conversations",
                "audio is not supported by "
                "native image-text models; use a vlmkit composite model with an audio encoder",
            )
        parts: list[dict] = []
        for i, piece in enumerate(turn.text.split(IMAGE_TOKEN)):
            if i:
                parts.append({"type": "image"})
            if piece.strip():
                parts.append({"type": "text", "text": piece.strip()})
        messages.append({"role": turn.role, "content": parts})
    return messages


def expanded_positions(short: list[int], full: list[int], image_id: int) -> list[int] | None:
    """Where each token of `short` sits in `full`, when `full` is `short` with every image token repeated
    (one or more times); None when it is not, or when two image tokens are adjacent (ambiguous)."""
    positions, j = [], 0
    for i, token in enumerate(short):
        if j >= len(full) or full[j] != token:
            return None
        positions.append(j)
        j += 1
        if token == image_id:
            if i + 1 < len(short) and short[i + 1] == image_id:
                return None
            while j < len(full) and full[j] == image_id:
                j += 1
    return positions if j == len(full) else None


def _common_prefix(a: Sequence, b: Sequence) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


class NativeEncoder:
    """Turns `Sample`s into model inputs for one native VLM (its processor and `model_type`).

    It is the recipes' `processor` of a native model, as `VLMProcessor` is the composite's: it has the
    `tokenizer` and `save_pretrained` (the processor files beside the weights).
    """

    def __init__(
        self,
        processor,
        model_type: str,
        *,
        max_length: int | None = None,
        truncation: str = "error",
        min_pixels: int | None = None,
        max_pixels: int | None = None,
    ):
        if truncation not in ("error", "drop"):
            raise ValueError(f"truncation must be 'error' or 'drop', got {truncation!r}")
        self.processor, self.model_type = processor, model_type
        self.max_length, self.truncation = max_length, truncation
        tok = processor.tokenizer
        self.end_of_turn_id = tok.convert_tokens_to_ids(END_OF_TURN.get(model_type, tok.eos_token))
        ids = {getattr(processor, "image_token_id", None), getattr(tok, "image_token_id", None)}
        ids |= {tok.convert_tokens_to_ids(t) for t in _MEDIA_TOKENS if t in tok.get_vocab()}
        self.media_token_ids = {i for i in ids if i is not None and i != tok.unk_token_id}
        if min_pixels is not None or max_pixels is not None:
            self._set_pixel_budget(min_pixels, max_pixels)

    modality = "image"  # what media the model reads (as VLMProcessor.modality)

    @property
    def tokenizer(self):
        """The processor's tokenizer (what generation decodes with)."""
        return self.processor.tokenizer

    def save_pretrained(self, out_dir) -> None:
        """Write the processor files (tokenizer, image processor, chat template) a user of the model needs."""
        save_processor(self.processor, out_dir)

    def _set_pixel_budget(self, min_pixels: int | None, max_pixels: int | None) -> None:
        """Qwen2-VL dynamic resolution: images are resized to hold between min and max pixels."""
        images = self.processor.image_processor
        if not hasattr(images, "merge_size"):
            raise ValueError(
                f"min_pixels/max_pixels apply to Qwen2-VL-style processors, not {type(images).__name__}"
            )
        size = dict(images.size)
        if min_pixels is not None:
            size["shortest_edge"] = min_pixels
        if max_pixels is not None:
            size["longest_edge"] = max_pixels
        images.size = size
        if hasattr(images, "min_pixels"):  # the deprecated duplicates would override `size`
            images.min_pixels = images.max_pixels = None

    def _images(self, sample: Sample) -> list:
        return [
            load_media_item(m, modality="image", source=sample.source, index=sample.index)
            for m in sample.images
        ]

    def _render(self, messages: list[dict], *, generation_prompt: bool) -> str:
        return self.processor.apply_chat_template(
            messages, tokenize=False, add_generation_prompt=generation_prompt
        )

    def _run(
        self, messages: list[dict], images: list, *, generation_prompt: bool, text: str | None = None
    ) -> dict:
        """The processor's inputs for `messages` (`text`: their rendering, when already made)."""
        if text is None:
            text = self._render(messages, generation_prompt=generation_prompt)
        n_images = sum(p["type"] == "image" for m in messages for p in m["content"])
        kwargs = {"images": [images[:n_images]]} if n_images else {}
        out = self.processor(text=[text], return_tensors="pt", **kwargs)
        out.pop("labels", None)  # PaliGemma's own (prefix/suffix) labels; ours are built below
        return dict(out)

    def _check(self, sample: Sample, messages: list[dict], images: list) -> None:
        n_placeholders = sum(p["type"] == "image" for m in messages for p in m["content"])
        if n_placeholders != len(images):
            raise BadSampleError(sample.source, sample.index, "images", f"{n_placeholders} <image> placeholders "
                                 f"but {len(images)} images")  # fmt: skip
        if self.model_type == "paligemma" and not images:
            raise BadSampleError(
                sample.source, sample.index, "images", "PaliGemma needs an image in every sample"
            )

    def encode(self, sample: Sample) -> dict:
        """Model inputs of one sample (batch dimension 1) with `labels` on assistant tokens only."""
        messages, images = sample_messages(sample), self._images(sample)
        self._check(sample, messages, images)
        if not any(m["role"] == "assistant" for m in messages):
            raise BadSampleError(
                sample.source, sample.index, "conversations", "no assistant turn to learn from"
            )
        text = self._render(messages, generation_prompt=False)
        out = self._run(messages, images, generation_prompt=False, text=text)
        full = out["input_ids"][0].tolist()
        shared_prefix, reference, to_full = self._renderer(text, images, full)
        labels = [IGNORE_INDEX] * len(full)
        for k, message in enumerate(messages):
            if message["role"] != "assistant":
                continue
            start = shared_prefix(messages[:k], True)
            end = shared_prefix(messages[: k + 1], False) if k + 1 < len(messages) else len(reference)
            span = reference[start:end]
            if self.end_of_turn_id in span:
                end = start + len(span) - span[::-1].index(self.end_of_turn_id)
            if end <= start:
                raise BadSampleError(sample.source, sample.index, f"turn {k}", "the chat template renders no "
                                     "tokens for this assistant turn; check the template")  # fmt: skip
            start, end = to_full(start), to_full(end - 1) + 1
            labels[start:end] = full[start:end]
        out["labels"] = torch.tensor([labels])
        if self.model_type == "paligemma":  # prefix-LM: the prefix attends both ways, the rest causally
            first = next(i for i, t in enumerate(labels) if t != IGNORE_INDEX)
            out["token_type_ids"] = (torch.arange(len(full)) >= first).long()[None]
        return self._truncate(out, sample)

    def _renderer(self, text: str, images: list, full: list[int]):
        """(shared_prefix(messages, generation_prompt) -> how many leading tokens of the reference that
        rendering shares, the whole conversation's ids (the reference), map from the reference into `full`).

        Where the processor only repeats each image token (`REPEATS_IMAGE_TOKEN`, checked on this sample's
        `full` ids) the reference is the template's text tokenized once, with character offsets, and a prefix
        is rendered as text only: it shares the reference tokens that end inside the characters both texts
        share. Otherwise every prefix goes through the processor and the token ids are compared."""
        image_id = getattr(self.processor, "image_token_id", None)
        if self.model_type in REPEATS_IMAGE_TOKEN and image_id is not None and self.tokenizer.is_fast:
            encoded = self.tokenizer(text, return_offsets_mapping=True)
            short = encoded["input_ids"]
            positions = expanded_positions(short, full, image_id)
            if positions is not None:
                token_ends = list(accumulate((end for _, end in encoded["offset_mapping"]), max))

                def shared_text(prefix: list[dict], generation_prompt: bool) -> int:
                    rendered = self._render(prefix, generation_prompt=generation_prompt)
                    return bisect_right(token_ends, _common_prefix(rendered, text))

                return shared_text, short, positions.__getitem__

        def shared_ids(prefix: list[dict], generation_prompt: bool) -> int:
            ids = self._run(prefix, images, generation_prompt=generation_prompt)["input_ids"][0].tolist()
            return _common_prefix(ids, full)

        return shared_ids, full, lambda i: i

    def _truncate(self, out: dict, sample: Sample) -> dict:
        ids = out["input_ids"][0]
        if self.max_length is None or len(ids) <= self.max_length:
            return out
        media = [i for i, t in enumerate(ids.tolist()) if t in self.media_token_ids]
        if media and media[-1] >= self.max_length:
            reason = (f"too long: the sample needs {len(ids)} tokens; cutting to max_length={self.max_length} would "
                      "cut through media tokens (raise max_length, or set truncation: drop)")  # fmt: skip
            if self.truncation == "drop":
                raise SampleDropped(sample.source, sample.index, "max_length", reason)
            raise BadSampleError(sample.source, sample.index, "max_length", reason)
        for key in SEQUENCE_KEYS:
            if key in out:
                out[key] = out[key][:, : self.max_length]
        if not (out["labels"] != IGNORE_INDEX).any():
            raise SampleDropped(
                sample.source,
                sample.index,
                "max_length",
                f"no supervised tokens left after truncation to max_length={self.max_length}",
            )
        return out

    def encode_prompt(self, sample: Sample) -> tuple[dict, str | None]:
        """Inputs up to the last assistant turn plus a generation prompt, and that turn's text (the reference)."""
        messages, images = sample_messages(sample), self._images(sample)
        self._check(sample, messages, images)
        reference = None
        if messages[-1]["role"] == "assistant":
            reference = sample.turns[-1].text
            messages = messages[:-1]
        return self._run(messages, images, generation_prompt=True), reference
