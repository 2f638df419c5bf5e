"""Pipeline orchestration on stand-in recipes: ordering, references, skip-if-complete, resume, selection."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
import yaml

from vlmkit.config.parser import ConfigError
from vlmkit.pipeline.runner import StageFailed, run_pipeline, select_stages
from vlmkit.pipeline.spec import load_pipeline, stage_argv, stage_fingerprint

# A stand-in recipe: records its argv, fails once if asked, and writes the run-contract files.
FAKE_RECIPE = textwrap.dedent(
    """
    import json, sys, pathlib, os, time
    args = dict(zip(sys.argv[1::2], sys.argv[2::2]))
    out = pathlib.Path(args["--output_dir"]); out.mkdir(parents=True, exist_ok=True)
    calls = out.parent / "calls.jsonl"
    started = time.time()
    time.sleep(float(args.get("--sleep", "0")))
    with open(calls, "a") as f:
        f.write(json.dumps({"stage": out.name, "argv": sys.argv[1:], "start": started, "end": time.time()}) + "\\n")
    if os.environ.get("FAIL_STAGE") == out.name and not (out / "partial").exists():
        (out / "partial").write_text("x")
        sys.exit(3)
    value = float(args.get("--value", "0.5"))
    (out / "train_log.jsonl").write_text(json.dumps({"step": 1, "loss": 1.0, "total_steps": 1}) + "\\n")
    (out / "config.yaml").write_text("value: %s\\n" % value)
    (out / "metrics.json").write_text(json.dumps({"eval_accuracy": value, "peak_memory_mb": 1.0}))
    """
)


@pytest.fixture
def project(tmp_path: Path, monkeypatch) -> Path:
    monkeypatch.chdir(tmp_path)
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "fake.py").write_text(FAKE_RECIPE)
    (tmp_path / "a.yaml").write_text("x: 1\n")
    pipeline = {
        "output_dir": "out",
        "stages": [
            {"name": "first", "recipe": "fake", "config": "a.yaml", "args": {"value": 0.9}, "chance": 0.1},
            {"name": "second", "recipe": "fake", "config": "a.yaml", "args": {"parent": "{first}"}},
            {"name": "extra", "recipe": "fake", "config": "a.yaml", "enabled": False},
        ],
    }
    (tmp_path / "pipe.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp_path


def _calls(root: Path) -> list[dict]:
    path = root / "out" / "calls.jsonl"
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def test_runs_enabled_stages_in_order_with_references(project: Path):
    results = run_pipeline(load_pipeline("pipe.yaml"))
    assert list(results) == ["first", "second"]
    calls = _calls(project)
    assert [c["stage"] for c in calls] == ["first", "second"]
    second = dict(zip(calls[1]["argv"][::2], calls[1]["argv"][1::2]))
    assert second["--parent"] == str(Path("out") / "first")
    assert second["--resume_from_checkpoint"] == "latest"
    assert (project / "out" / "report.html").is_file() and (project / "out" / "report.md").is_file()


def test_rerun_skips_complete_stages_and_reruns_changed_ones(project: Path):
    run_pipeline(load_pipeline("pipe.yaml"))
    run_pipeline(load_pipeline("pipe.yaml"))
    assert len(_calls(project)) == 2  # nothing ran again
    (project / "a.yaml").write_text("x: 2\n")  # the config changed: both stages are stale
    run_pipeline(load_pipeline("pipe.yaml"))
    assert [c["stage"] for c in _calls(project)][2:] == ["first", "second"]


def test_failed_stage_reruns_and_resumes_in_the_same_directory(project: Path, monkeypatch):
    monkeypatch.setenv("FAIL_STAGE", "second")
    with pytest.raises(StageFailed, match="second"):
        run_pipeline(load_pipeline("pipe.yaml"))
    assert (project / "out" / "second" / "partial").exists()
    run_pipeline(load_pipeline("pipe.yaml"))
    stages = [c["stage"] for c in _calls(project)]
    assert stages == ["first", "second", "second"]  # first skipped, second's partial output kept for resume


def test_only_and_from_stage(project: Path):
    spec = load_pipeline("pipe.yaml")
    assert [s.name for s in select_stages(spec, ["extra"], None)] == ["extra"]
    assert [s.name for s in select_stages(spec, None, "second")] == ["second"]
    with pytest.raises(ValueError, match="unknown stage 'nope'"):
        select_stages(spec, ["nope"], None)
    with pytest.raises(RuntimeError, match="needs \\['first'\\]"):
        run_pipeline(spec, only=["second"])


def test_fingerprint_depends_on_parents(project: Path):
    spec = load_pipeline("pipe.yaml")
    root = Path("out")
    a = stage_fingerprint(spec, spec.stage("second"), root, {"first": "aaa"})
    b = stage_fingerprint(spec, spec.stage("second"), root, {"first": "bbb"})
    assert a != b
    assert stage_argv(spec, spec.stage("first"), root)[:4] == [
        "--config",
        "a.yaml",
        "--output_dir",
        "out/first",
    ]


@pytest.mark.parametrize(
    "bad, message",
    [
        ({"stages": [{"name": "a", "recipe": "fake", "config": "a.yaml", "typo": 1}]}, "unknown keys"),
        (
            {"stages": [{"name": "a", "recipe": "fake", "config": "a.yaml", "args": {"x": "{b}"}}]},
            "before that stage",
        ),
        (
            {
                "stages": [
                    {"name": "a", "recipe": "f", "config": "c"},
                    {"name": "a", "recipe": "f", "config": "c"},
                ]
            },
            "twice",
        ),
        ({"stage": []}, "unknown key 'stage'"),
        ({"stages": [{"name": "a", "config": "c"}]}, "missing 'recipe'"),
    ],
)
def test_bad_pipeline_files_are_rejected(tmp_path: Path, bad: dict, message: str):
    path = tmp_path / "p.yaml"
    path.write_text(yaml.safe_dump(bad))
    with pytest.raises(ConfigError, match=message):
        load_pipeline(str(path))


def test_report_lists_every_stage_against_chance(project: Path):
    run_pipeline(load_pipeline("pipe.yaml"))
    html = (project / "out" / "report.html").read_text()
    assert "id='stage-first'" in html and "id='stage-second'" in html
    assert "<td class='good'>0.900</td><td>0.100</td>" in html
    md = (project / "out" / "report.md").read_text()
    assert "| first | fake | eval_accuracy | 0.900 | 0.100 |" in md


def _branches(tmp: Path, fail: str | None = None) -> Path:
    """Two independent branches (a -> a2, b) whose stages take 1.5 s each."""
    stage = {"recipe": "fake", "config": "a.yaml"}
    pipeline = {
        "output_dir": "out",
        "stages": [
            {"name": "a", **stage, "args": {"sleep": 1.5}},
            {"name": "b", **stage, "args": {"sleep": 1.5}},
            {"name": "a2", **stage, "args": {"sleep": 1.5, "parent": "{a}"}},
        ],
    }
    (tmp / "branches.yaml").write_text(yaml.safe_dump(pipeline))
    return tmp / "branches.yaml"


def test_jobs_run_independent_stages_side_by_side_after_their_parents(project: Path):
    results = run_pipeline(load_pipeline(str(_branches(project))), jobs=2)
    assert list(results) == ["a", "b", "a2"]  # pipeline order, whatever the finishing order
    calls = {c["stage"]: c for c in _calls(project)}
    assert calls["b"]["start"] < calls["a"]["end"] and calls["a"]["start"] < calls["b"]["end"]  # overlapped
    assert calls["a2"]["start"] >= calls["a"]["end"]  # a child waits for its parent
    with pytest.raises(ValueError, match="jobs must be at least 1"):
        run_pipeline(load_pipeline(str(_branches(project))), jobs=0)


def test_with_jobs_a_failure_lets_the_running_stage_finish_and_starts_nothing_new(project: Path, monkeypatch):
    monkeypatch.setenv("FAIL_STAGE", "a")
    with pytest.raises(StageFailed, match="stage 'a' failed"):
        run_pipeline(load_pipeline(str(_branches(project))), jobs=2)
    assert (project / "out" / "b" / "pipeline_stage.json").is_file()  # b ran to completion beside it
    assert not (project / "out" / "a2").exists()  # a's child never started
    monkeypatch.delenv("FAIL_STAGE")
    assert list(run_pipeline(load_pipeline(str(_branches(project))), jobs=2)) == ["a", "b", "a2"]
    assert [c["stage"] for c in _calls(project)].count("b") == 1  # complete: not run again


def test_side_by_side_stages_wait_without_spinning_unless_the_user_chose(monkeypatch):
    from vlmkit.pipeline.runner import side_by_side_env

    monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
    assert side_by_side_env(1) == {} and side_by_side_env(2) == {"OMP_WAIT_POLICY": "PASSIVE"}
    monkeypatch.setenv("OMP_WAIT_POLICY", "ACTIVE")
    assert side_by_side_env(2) == {}
