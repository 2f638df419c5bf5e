"""Preference pairs for native VLMs: prompt + chosen and prompt + rejected through the model's own processor.

As `vlmkit.data.preference` does for the composite model: both answers are encoded as the final assistant
turn (labels on the answer only), and a batch stacks the chosen rows first and the rejected rows after them
(`num_pairs` = B), right-padded, so a reward model reads the last real token of each row.
"""

from __future__ import annotations

import logging

from torch.utils.data import Dataset

from vlmkit.data.preference import answer_sample
from vlmkit.data.records import BadSampleError, PreferenceSample, SkipCounter
from vlmkit.data.tokenize import SampleDropped
from vlmkit.models.native.collate import NativeCollator
from vlmkit.models.native.encoding import NativeEncoder

logger = logging.getLogger(__name__)


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
        if on_bad_sample not in ("error", "skip"):
            raise ValueError(f"on_bad_sample must be 'error' or 'skip', got '{on_bad_sample}'")
        self.skips = skips if skips is not None else SkipCounter()
        self.items: list[tuple[dict, dict]] = []
        for pair in pairs:
            if not isinstance(pair, PreferenceSample):
                raise TypeError(
                    f"{pair.source}, record {pair.index}: not a preference row (prompt/chosen/rejected); "
                    "read the file with data_format 'preference'"
                )
            try:
                chosen = encoder.encode(answer_sample(pair, pair.chosen))
                rejected = encoder.encode(answer_sample(pair, pair.rejected))
            except SampleDropped as err:
                self.skips.add(err)
                continue
            except BadSampleError as err:
                if on_bad_sample == "error":
                    raise
                self.skips.add(err)
                continue
            self.items.append((chosen, rejected))
        if not self.items:
            where = pairs[0].source if pairs else "the dataset"
            raise ValueError(
                f"{where}: no usable preference pairs left ({self.skips.total} skipped: {self.skips.as_dict()})"
            )
        if self.skips.total:
            logger.warning("skipped %d preference pairs: %s", self.skips.total, self.skips.as_dict())

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
