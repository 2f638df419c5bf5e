"""Exact resume: a stage-2 run interrupted at step k and resumed equals the uninterrupted run.

Data order (EpochSampler offset across epoch ends), RNG states (LoRA dropout draws from them), optimizer,
scheduler and the gradient-accumulation position must all come back for weights and logged losses to match.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from tests.helpers.tiny_stage2 import load_weights, make_image_data, max_abs_diff, read_log, stage2_argv
from vlmkit.training import loop


class _Interrupted(Exception):
    pass


def _interrupt_after(monkeypatch, step: int) -> None:
    """Make the run die right after checkpoint `step` is written, as a crash would."""
    original = loop.save_checkpoint

    def save_then_die(accelerator, output_dir, at, *args, **kwargs):
        path = original(accelerator, output_dir, at, *args, **kwargs)
        if at == step:
            raise _Interrupted(f"interrupted after step {at}")
        return path

    monkeypatch.setattr(loop, "save_checkpoint", save_then_die)


def _assert_same_run(reference: Path, resumed: Path) -> None:
    ref_log, new_log = read_log(reference), read_log(resumed)
    assert [r["step"] for r in new_log] == [r["step"] for r in ref_log] == list(range(1, 9))
    for a, b in zip(ref_log, new_log):
        assert abs(a["loss"] - b["loss"]) <= 1e-6, (a, b)
        assert a["items"] == b["items"] and a["lr"] == pytest.approx(b["lr"], abs=1e-12), (a, b)
    diff = max_abs_diff(load_weights(reference), load_weights(resumed))
    assert diff <= 1e-6, f"resumed weights differ from the uninterrupted run by {diff}"


@pytest.mark.parametrize(
    ("overrides", "stop_at", "resume"),
    [
        ({}, 4, "latest"),  # mid-epoch (3 steps per epoch), full fine-tune
        ({"use_lora": "true", "lora_dropout": 0.2}, 4, "checkpoint-2"),  # dropout: RNG must be restored
    ],
    ids=["full-latest", "lora-dropout-explicit-dir"],
)
def test_interrupted_and_resumed_run_equals_uninterrupted(
    tmp_path, monkeypatch, recipe, overrides, stop_at, resume
):
    main = recipe("llava_stage2").main
    data = make_image_data(tmp_path / "data")
    reference = tmp_path / "reference"
    main(stage2_argv(data, reference, **overrides))

    out = tmp_path / "interrupted"
    with monkeypatch.context() as m:
        _interrupt_after(m, stop_at)
        with pytest.raises(_Interrupted):
            main(stage2_argv(data, out, **overrides))
    assert read_log(out)[-1]["step"] == stop_at
    resume_from = "latest" if resume == "latest" else str(out / resume)
    metrics = main(
        stage2_argv(data, out, resume_from_checkpoint=resume_from, save_total_limit=1, **overrides)
    )

    assert metrics["global_step"] == 8
    _assert_same_run(reference, out)
    # save_total_limit=1 keeps the newest checkpoint plus the one resumed from, never deleted
    resumed_from = f"checkpoint-{stop_at}" if resume == "latest" else resume
    assert sorted(p.name for p in out.glob("checkpoint-*")) == sorted({resumed_from, "checkpoint-6"})


def test_resume_latest_without_checkpoint_starts_fresh(tmp_path, recipe):
    main = recipe("llava_stage2").main
    data = make_image_data(tmp_path / "data", n=4)
    out = tmp_path / "out"
    metrics = main(stage2_argv(data, out, max_steps=2, save_steps=0, resume_from_checkpoint="latest"))
    assert metrics["global_step"] == 2
    assert [r["step"] for r in read_log(out)] == [1, 2]


def test_resume_from_incomplete_checkpoint_is_refused(tmp_path, recipe):
    main = recipe("llava_stage2").main
    data = make_image_data(tmp_path / "data", n=4)
    half = tmp_path / "out" / "checkpoint-2"
    half.mkdir(parents=True)
    (half / "model.safetensors").write_bytes(b"partial")
    with pytest.raises(ValueError, match="not a complete checkpoint"):
        main(stage2_argv(data, tmp_path / "out", resume_from_checkpoint=str(half)))


RECIPES = sorted(p.stem for p in (Path(__file__).resolve().parents[2] / "recipes").glob("*.py"))


@pytest.mark.parametrize("name", RECIPES)
def test_every_recipe_takes_the_checkpoint_flags(recipe, capsys, name):
    with pytest.raises(SystemExit) as info:
        recipe(name).main(["--help"])
    assert info.value.code == 0
    usage = capsys.readouterr().out
    for flag in ("--save_steps", "--save_total_limit", "--resume_from_checkpoint", "--seed"):
        assert flag in usage, f"recipes/{name}.py lacks {flag}"
