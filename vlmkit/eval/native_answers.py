"""Greedy (or sampled) answers of native transformers VLMs, batched with left padding and the KV cache.

`vlmkit.eval.answers.generate_answers` (and so `answer_accuracy`) calls this when its processor is a
`NativeEncoder`, so held-out accuracy is measured the same way for both kinds of model.
"""

from __future__ import annotations

import torch

from vlmkit.data.records import Sample
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder


@torch.no_grad()
def native_generate_answers(
    model,
    encoder: NativeEncoder,
    samples: list[Sample],
    *,
    batch_size: int = 32,
    max_new_tokens: int = 8,
    do_sample: bool = False,
    temperature: float = 1.0,
    top_p: float = 1.0,
) -> list[tuple[str, str | None]]:
    """(generated answer, reference: the sample's final assistant turn or None) for each sample."""
    model.eval()
    tok = encoder.tokenizer
    collate = NativeCollator(tok.pad_token_id, encoder.model_type, left_pad=True)
    device = next(model.parameters()).device
    eos = model.generation_config.eos_token_id or tok.eos_token_id
    results = []
    for start in range(0, len(samples), batch_size):
        prompts = [encoder.encode_prompt(s) for s in samples[start : start + batch_size]]
        batch = {k: v.to(device) for k, v in collate([p for p, _ in prompts]).items()}
        out = model.generate(
            **batch, max_new_tokens=max_new_tokens, do_sample=do_sample,
            temperature=temperature if do_sample else None, top_p=top_p if do_sample else None,
            pad_token_id=tok.pad_token_id, eos_token_id=eos,
        )  # fmt: skip
        texts = tok.batch_decode(out[:, batch["input_ids"].shape[1] :], skip_special_tokens=True)
        results.extend((text.strip(), ref) for text, (_, ref) in zip(texts, prompts))
    return results
