"""Batch 8 x accumulation 1 and batch 1 x accumulation 8 give the same model (stage-2 recipe, tiny parts).

The loop divides the summed token loss by the supervised tokens of the whole optimizer step, so samples
with long answers weigh the same whichever micro-batch they fall in; a per-micro-batch mean would not.
"""

from __future__ import annotations

import pytest

from tests.helpers.tiny_stage2 import load_weights, make_image_data, max_abs_diff, read_log, stage2_argv


@pytest.mark.slow
def test_batch8_accum1_equals_batch1_accum8(tmp_path, recipe):
    main = recipe("llava_stage2").main
    data = make_image_data(tmp_path / "data", n=24)
    runs = {}
    for batch, accum in ((8, 1), (1, 8)):
        out = tmp_path / f"b{batch}x{accum}"
        main(
            stage2_argv(
                data, out, per_device_train_batch_size=batch, gradient_accumulation_steps=accum,
                max_steps=3, save_steps=0, warmup_ratio=0.0, learning_rate=1e-3,
            )
        )  # fmt: skip
        runs[(batch, accum)] = out
    big, small = (read_log(runs[k]) for k in ((8, 1), (1, 8)))
    # answers of different lengths: steps hold different token counts, so normalisation matters
    assert len({r["items"] for r in big}) > 1
    assert [r["items"] for r in big] == [r["items"] for r in small]
    for a, b in zip(big, small):
        assert abs(a["loss"] - b["loss"]) <= 1e-5, (a, b)
    diff = max_abs_diff(load_weights(runs[(8, 1)]), load_weights(runs[(1, 8)]))
    assert diff <= 1e-5, f"batch 8 x 1 and batch 1 x 8 differ by {diff}"
