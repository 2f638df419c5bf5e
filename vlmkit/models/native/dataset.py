"""Supervised datasets, the loss and held-out answer accuracy for native VLMs, for the shared training loop."""

from __future__ import annotations

import logging

import torch
from torch.utils.data import Dataset

from vlmkit.data.records import BadSampleError, Sample, SkipCounter
from vlmkit.data.tokenize import SampleDropped
from vlmkit.eval.answers import exact_match
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.training.losses import token_loss_sum

logger = logging.getLogger(__name__)


class NativeSFTDataset(Dataset):
    """Every sample encoded up front by `encoder` (so bad ones fail or are counted before training starts)."""

    def __init__(
        self,
        samples: list[Sample],
        encoder: NativeEncoder,
        *,
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
        self.skips = skips if skips is not None else SkipCounter()
        self.items: list[dict] = []
        for sample in samples:
            try:
                self.items.append(encoder.encode(sample))
            except SampleDropped as err:
                self.skips.add(err)
            except BadSampleError as err:
                if on_bad_sample == "error":
                    raise
                self.skips.add(err)
        if not self.items:
            where = samples[0].source if samples else "the dataset"
            raise ValueError(
                f"{where}: no usable samples left ({self.skips.total} skipped: {self.skips.as_dict()})"
            )
        if self.skips.total:
            logger.warning("skipped %d samples: %s", self.skips.total, self.skips.as_dict())

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> dict:
        return self.items[i]


def native_sft_loss(model, batch: dict) -> tuple[torch.Tensor, dict]:
    """Summed next-token loss over the supervised (assistant) tokens of a native-VLM batch."""
    inputs = {k: v for k, v in batch.items() if k != "labels"}
    return token_loss_sum(model(**inputs).logits, batch["labels"]), {}


@torch.no_grad()
def native_answer_accuracy(
    model, encoder: NativeEncoder, samples: list[Sample], *, batch_size: int = 32, max_new_tokens: int = 8
) -> tuple[float, list[dict]]:
    """Exact-match accuracy of greedy `model.generate` answers against each sample's last assistant turn."""
    model.eval()
    tok = encoder.processor.tokenizer
    collate = NativeCollator(tok.pad_token_id, encoder.model_type, left_pad=True)
    device = next(model.parameters()).device
    examples = []
    for start in range(0, len(samples), batch_size):
        chunk = samples[start : start + batch_size]
        prompts = [encoder.encode_prompt(s) for s in chunk]
        batch = {k: v.to(device) for k, v in collate([p for p, _ in prompts]).items()}
        eos = model.generation_config.eos_token_id or tok.eos_token_id
        out = model.generate(**batch, max_new_tokens=max_new_tokens, do_sample=False,
                             pad_token_id=tok.pad_token_id, eos_token_id=eos)  # fmt: skip
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        for sample, text, (_, ref) in zip(chunk, texts, prompts):
            if ref is None:
                raise ValueError(
                    f"{sample.source}, record {sample.index}: no reference answer (final assistant turn)"
                )
            examples.append({"index": sample.index, "prediction": text.strip(), "reference": ref,
                             "correct": exact_match(text, ref)})  # fmt: skip
    return sum(e["correct"] for e in examples) / max(1, len(examples)), examples
