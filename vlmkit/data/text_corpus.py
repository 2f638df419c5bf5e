"""Text for causal-LM pretraining: documents from plain text, jsonl or a Hugging Face dataset, packed into blocks.

Packing is the GPT convention: every document is followed by the EOS token, all of them are concatenated and
the stream is cut into blocks of `block_size` tokens (the tail shorter than a block is dropped). Attention
crosses document boundaries inside a block; the EOS token tells the model where a new document starts.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from torch.utils.data import Dataset

from vlmkit.data.embedded import resolve_data_path


def read_documents(path: str, text_field: str = "text", split: str = "train") -> list[str]:
    """Documents of `path`: a .txt file (documents separated by blank lines), a .jsonl/.json file (the
    `text_field` of each record) or a Hugging Face dataset (a local directory or a hub name, `split`)."""
    resolved = resolve_data_path(path)
    file = Path(resolved)
    if file.is_file() and file.suffix == ".txt":
        docs = [d.strip() for d in file.read_text(encoding="utf-8").split("\n\n")]
        return [d for d in docs if d]
    if file.is_file() and file.suffix in (".jsonl", ".json"):
        return _json_documents(file, text_field)
    return _hf_documents(resolved, text_field, split)


def _json_documents(file: Path, text_field: str) -> list[str]:
    lines = file.read_text(encoding="utf-8").splitlines()
    if file.suffix == ".json":
        try:
            records = json.loads("\n".join(lines))
        except json.JSONDecodeError as err:
            raise ValueError(f"{file}: not valid JSON ({err})") from None
        if not isinstance(records, list):
            raise ValueError(f"{file}: expected a list of records with a '{text_field}' field")
        numbered = list(enumerate(records))
    else:
        numbered = []
        for i, line in enumerate(lines):
            if line.strip():
                try:
                    numbered.append((i, json.loads(line)))
                except json.JSONDecodeError as err:
                    raise ValueError(f"{file}: record {i} (line {i + 1}) is not valid JSON ({err})") from None
    docs = []
    for i, record in numbered:
        text = record.get(text_field) if isinstance(record, dict) else None
        if not isinstance(text, str):
            raise ValueError(
                f"{file}: record {i} has no string field '{text_field}' (set --dataset_text_field)"
            )
        docs.append(text)
    return docs


def _hf_documents(name: str, text_field: str, split: str) -> list[str]:
    from datasets import load_dataset, load_from_disk

    if Path(name).is_dir() and (Path(name) / "dataset_info.json").is_file():
        dataset = load_from_disk(name)
        dataset = dataset[split] if hasattr(dataset, "keys") else dataset
    else:
        dataset = load_dataset(name, split=split)
    if text_field not in dataset.column_names:
        raise ValueError(
            f"{name}: no column '{text_field}' (columns: {dataset.column_names}); set --dataset_text_field"
        )
    return [t for t in dataset[text_field] if t]


def pack_documents(documents: list[str], tokenizer, block_size: int) -> torch.Tensor:
    """Tokenize, append EOS to each document, concatenate and cut into blocks: (num_blocks, block_size)."""
    if tokenizer.eos_token_id is None:
        raise ValueError("the tokenizer has no EOS token, which packing puts between documents")
    ids = tokenizer(documents, add_special_tokens=False)["input_ids"]
    stream = [t for doc in ids for t in (*doc, tokenizer.eos_token_id)]
    num_blocks = len(stream) // block_size
    if num_blocks == 0:
        raise ValueError(f"{len(stream)} tokens of text are fewer than one block of {block_size}")
    return torch.tensor(stream[: num_blocks * block_size]).view(num_blocks, block_size)


class PackedTextDataset(Dataset):
    """Blocks of token ids for next-token prediction; every position is supervised."""

    def __init__(self, blocks: torch.Tensor):
        self.blocks = blocks

    def __len__(self) -> int:
        return self.blocks.shape[0]

    def __getitem__(self, i: int) -> torch.Tensor:
        return self.blocks[i]


def document_position_ids(ids: torch.Tensor, eos_token_id: int) -> torch.Tensor:
    """Position ids (B, T) that restart at 0 after every EOS (and at each row start)."""
    t = torch.arange(ids.shape[1], device=ids.device).expand_as(ids)
    after_eos = torch.zeros_like(ids, dtype=torch.bool)
    after_eos[:, 1:] = ids[:, :-1] == eos_token_id
    starts = torch.where(after_eos | (t == 0), t, torch.zeros_like(t))
    return t - starts.cummax(dim=1).values


class BlockCollator:
    """Stacks blocks into input_ids = labels (B, T); the loss shifts them by one.

    With `eos_token_id`, attention stays inside each document: position ids restart after every EOS and no
    attention_mask is passed, from which transformers (5.x, sdpa/eager) builds the block-diagonal causal mask.
    Without it, plain GPT packing: every token attends to everything before it in the block."""

    def __init__(self, eos_token_id: int | None = None):
        self.eos_token_id = eos_token_id

    def __call__(self, blocks: list[torch.Tensor]) -> dict:
        ids = torch.stack(blocks)
        batch = {"input_ids": ids, "labels": ids.clone()}
        if self.eos_token_id is None:
            batch["attention_mask"] = torch.ones_like(ids)
        else:
            batch["position_ids"] = document_position_ids(ids, self.eos_token_id)
        return batch
