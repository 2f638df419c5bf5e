"""Preference pairs for native VLMs: prompt + chosen and prompt + rejected through the model's own processor.

As `vlmkit.data.preference` does for the composite model: both answers are encoded as the final assistant
turn (labels on the answer only), and a batch stacks the chosen rows first and the rejected rows after them
(`num_pairs` = B), right-padded, so a reward model reads the last real token of each row.
"""

from __future__ import annotations

from torch.utils.data import Dataset

from vlmkit.data.preference import answer_sample
from vlmkit.data.records import PreferenceSample, SkipCounter
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.training.native_sft import encode_all


class NativePreferenceDataset(Dataset):
    """Both answers of every pair encoded up front by `encoder`; bad pairs fail or are counted in `skips`."""

    def __init__(
        self,
        pairs: list[PreferenceSample],
        encoder: NativeEncoder,
        *,
        on_bad_sample: str = "error",
        skips: SkipCounter | None = None,
    ):
        self.skips = skips if skips is not None else SkipCounter()
        for pair in pairs:
            if not isinstance(pair, PreferenceSample):
                raise TypeError(
                    f"{pair.source}, record {pair.index}: not a preference row (prompt/chosen/rejected); "
                    "read the file with data_format 'preference'"
                )

        def encode(pair: PreferenceSample) -> tuple[dict, dict]:
            chosen = encoder.encode(answer_sample(pair, pair.chosen))
            return chosen, encoder.encode(answer_sample(pair, pair.rejected))

        self.items: list[tuple[dict, dict]] = encode_all(
            pairs, encode, on_bad_sample=on_bad_sample, skips=self.skips, what="preference pairs"
        )

    def __len__(self) -> int:
        return len(self.items)

    def __getitem__(self, i: int) -> tuple[dict, dict]:
        return self.items[i]


class NativePreferenceCollator:
    """B pairs -> one right-padded batch of 2B rows (chosen rows, then rejected rows) plus `num_pairs`."""

    def __init__(self, pad_token_id: int, model_type: str):
        self.collate = NativeCollator(pad_token_id, model_type)

    def __call__(self, items: list[tuple[dict, dict] | None]) -> dict:
        items = [it for it in items if it is not None]
        if not items:
            return {"empty": True}
        batch = self.collate([c for c, _ in items] + [r for _, r in items])
        batch["num_pairs"] = len(items)
        return batch
