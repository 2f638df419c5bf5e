"""Run the stages of a pipeline, each as its own process, skipping stages already complete.

A stage starts once its parents are complete; with `jobs` > 1 independent stages (the image and audio branches,
PPO / GRPO / DPO from one policy) run side by side. Each stage is the same process either way, so its results
do not depend on `jobs`.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait
from pathlib import Path

from vlmkit.pipeline.spec import PipelineSpec, StageSpec, stage_argv, stage_fingerprint
from vlmkit.training.reporting import LOG_FILE, METRICS_FILE, read_log

MARKER = "pipeline_stage.json"


_LIVE: set[subprocess.Popen] = set()  # the stage processes running now (terminated on Ctrl-C)


class StageFailed(RuntimeError):
    """A stage's recipe exited with an error; its log is in <output_dir>/<stage>/stage.log."""


def stage_is_complete(stage_dir: Path, fingerprint: str) -> bool:
    marker = stage_dir / MARKER
    if not (marker.is_file() and (stage_dir / METRICS_FILE).is_file()):
        return False
    return json.loads(marker.read_text()).get("fingerprint") == fingerprint


def select_stages(spec: PipelineSpec, only: list[str] | None, from_stage: str | None) -> list[StageSpec]:
    """Enabled stages, optionally restricted to `only` or starting at `from_stage` (names are checked)."""
    names = [s.name for s in spec.stages]
    for name in (only or []) + ([from_stage] if from_stage else []):
        if name not in names:
            raise ValueError(f"unknown stage '{name}'; stages: {', '.join(names)}")
    stages = [s for s in spec.stages if s.enabled or (only and s.name in only)]
    if from_stage:
        start = names.index(from_stage)
        stages = [s for s in stages if names.index(s.name) >= start]
    if only:
        stages = [s for s in stages if s.name in only]
    return stages


def _watch(proc: subprocess.Popen, log_path: Path, name: str, show_progress: bool, position: int = 0) -> None:
    """Show a progress bar (step/total, loss, ETA) from the stage's train_log.jsonl until it exits; `position`
    is its line when several stages run at once."""
    from tqdm.auto import tqdm

    bar = None
    while proc.poll() is None:
        time.sleep(0.5)
        if not show_progress:
            continue
        records = read_log(log_path) if log_path.exists() else []
        if records and bar is None:
            bar = tqdm(
                total=records[-1].get("total_steps"), desc=f"{name:>14}", dynamic_ncols=True, leave=False,
                position=position,
            )  # fmt: skip
        if records and bar is not None:
            last = records[-1]
            bar.update(last["step"] - bar.n)
            if last.get("loss") is not None:
                bar.set_postfix(loss=f"{last['loss']:.4f}")
    if bar is not None:
        bar.close()


def run_stage(
    spec: PipelineSpec,
    stage: StageSpec,
    root: Path,
    fingerprint: str,
    launcher: list[str],
    position: int = 0,
    env: dict[str, str] | None = None,
) -> dict:
    """Run one stage's recipe in a subprocess (resuming from its own checkpoints) and return its metrics."""
    stage_dir = root / stage.name
    marker = stage_dir / MARKER
    if stage_dir.exists():
        previous = json.loads(marker.read_text()).get("fingerprint") if marker.is_file() else None
        started = (stage_dir / "pipeline_started.json").is_file()
        same_run = (
            started
            and json.loads((stage_dir / "pipeline_started.json").read_text())["fingerprint"] == fingerprint
        )
        if previous != fingerprint and not same_run:
            shutil.rmtree(stage_dir)  # output of a different configuration: never mix it in
    stage_dir.mkdir(parents=True, exist_ok=True)
    (stage_dir / "pipeline_started.json").write_text(json.dumps({"fingerprint": fingerprint}))
    recipe = Path(spec.recipes_dir) / f"{stage.recipe}.py"
    if not recipe.is_file():
        raise FileNotFoundError(
            f"stage '{stage.name}': recipe {recipe} not found (run from the repository root)"
        )
    argv = [*launcher, str(recipe), *stage_argv(spec, stage, root), "--resume_from_checkpoint", "latest"]
    started_at = time.perf_counter()
    with open(stage_dir / "stage.log", "a") as log:
        log.write(f"$ {' '.join(argv)}\n")
        log.flush()
        proc = subprocess.Popen(
            argv,
            stdout=log,
            stderr=subprocess.STDOUT,
            env={**os.environ, "PYTHONUNBUFFERED": "1", **(env or {})},
        )
        _LIVE.add(proc)
        try:
            _watch(proc, stage_dir / LOG_FILE, stage.name, sys.stderr.isatty(), position)
        finally:
            _LIVE.discard(proc)
    if proc.returncode != 0:
        tail = "".join((stage_dir / "stage.log").read_text().splitlines(keepends=True)[-25:])
        raise StageFailed(
            f"stage '{stage.name}' failed (exit {proc.returncode}); last lines of its log:\n{tail}"
        )
    metrics = json.loads((stage_dir / METRICS_FILE).read_text())
    wall = time.perf_counter() - started_at
    marker.write_text(json.dumps({"fingerprint": fingerprint, "wall_seconds": round(wall, 1)}, indent=2))
    return metrics


def summary_line(stage: StageSpec, metrics: dict, wall: float | None, skipped: bool) -> str:
    head = stage.headline or next((k for k in metrics if k.startswith("eval_")), None)
    shown = (
        f"{head}={metrics[head]:.3f}" if head and isinstance(metrics.get(head), (int, float)) else "no metric"
    )
    if head and isinstance(metrics.get(f"{head}_before"), (int, float)):  # PPO/DPO: from the starting policy
        shown = f"{head}={metrics[f'{head}_before']:.3f} -> {metrics[head]:.3f}"
    chance = f" (chance {stage.chance:.2f})" if stage.chance is not None else ""
    took = "skipped: already complete" if skipped else f"{wall:.0f}s"
    return f"[{stage.name}] {shown}{chance}  [{took}]"


def run_pipeline(
    spec: PipelineSpec,
    *,
    only: list[str] | None = None,
    from_stage: str | None = None,
    launcher: str | None = None,
    jobs: int = 1,
) -> dict[str, dict]:
    """Run the selected stages, up to `jobs` at once; returns {stage: metrics} in pipeline order. Writes
    report.md / report.html at the end."""
    from vlmkit.pipeline.report import write_report

    if jobs < 1:
        raise ValueError(f"jobs must be at least 1, got {jobs}")
    root = Path(spec.output_dir)
    root.mkdir(parents=True, exist_ok=True)
    launch = launcher.split() if launcher else [sys.executable]
    prints: dict[str, str] = {}
    for stage in spec.stages:
        prints[stage.name] = stage_fingerprint(spec, stage, root, prints)
    selected = select_stages(spec, only, from_stage)
    results: dict[str, dict] = {}
    todo: list[StageSpec] = []
    for stage in selected:
        if stage_is_complete(root / stage.name, prints[stage.name]):
            results[stage.name] = json.loads((root / stage.name / METRICS_FILE).read_text())
            print(summary_line(stage, results[stage.name], None, skipped=True), flush=True)
        else:
            todo.append(stage)
    will_run = {s.name for s in todo}
    for stage in todo:
        missing = [
            p for p in stage.parents() if p not in will_run and not stage_is_complete(root / p, prints[p])
        ]
        if missing:
            raise RuntimeError(
                f"stage '{stage.name}' needs {missing} to be complete first (run them, or drop --only)"
            )
    env = side_by_side_env(jobs)
    results.update(_run_when_ready(todo, jobs, lambda stage, slot: run_stage(
        spec, stage, root, prints[stage.name], launch, slot, env
    )))  # fmt: skip
    report = write_report(spec, root)
    print(f"[pipeline] report: {report}", flush=True)
    return {s.name: results[s.name] for s in selected}


def side_by_side_env(jobs: int) -> dict[str, str]:
    """Stages running side by side share the cores: OpenMP threads that wait by spinning then burn the cores
    the other stage needs (two stages on 2 cores ran ~10x slower), so they sleep instead (OMP_WAIT_POLICY
    PASSIVE; results do not change). A value the user set is kept."""
    return {"OMP_WAIT_POLICY": "PASSIVE"} if jobs > 1 and "OMP_WAIT_POLICY" not in os.environ else {}


def _run_when_ready(todo: list[StageSpec], jobs: int, run) -> dict[str, dict]:
    """Start each stage (in pipeline order) once its parents in `todo` are done, `jobs` at a time.

    When a stage fails, no new stage starts; the ones running finish (their work is kept) and the failure is
    raised.
    """
    waiting, done, results = list(todo), set(), {}
    names = {s.name for s in todo}
    running: dict = {}  # future -> (stage, its progress-bar slot, start time)
    failure: BaseException | None = None
    with ThreadPoolExecutor(max_workers=jobs) as pool:
        try:
            while running or (waiting and failure is None):
                for stage in list(waiting):
                    if failure is not None or len(running) >= jobs:
                        break
                    if all(p in done for p in stage.parents() if p in names):
                        waiting.remove(stage)
                        slot = min(set(range(jobs)) - {slot for _, slot, _ in running.values()})
                        running[pool.submit(run, stage, slot)] = (stage, slot, time.perf_counter())
                finished, _ = wait(running, return_when=FIRST_COMPLETED)
                for future in finished:
                    stage, _, started = running.pop(future)
                    try:
                        results[stage.name] = future.result()
                    except Exception as error:  # re-raised once the running stages finish
                        failure = failure or error
                        if running:
                            print(
                                f"[pipeline] {stage.name} failed; waiting for the running stages", flush=True
                            )
                        continue
                    done.add(stage.name)
                    wall = time.perf_counter() - started
                    print(summary_line(stage, results[stage.name], wall, skipped=False), flush=True)
        except KeyboardInterrupt:
            for proc in list(_LIVE):
                proc.terminate()
            raise
    if failure is not None:
        raise failure
    return results
