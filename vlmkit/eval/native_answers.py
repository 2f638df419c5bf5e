"""Held-out answer accuracy of native transformers VLMs: greedy `generate`, exact match after normalisation."""

from __future__ import annotations

import torch

from vlmkit.data.records import Sample
from vlmkit.eval.answers import exact_match
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder


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
