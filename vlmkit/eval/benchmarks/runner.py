"""Run benchmark tasks on a model: load each task's file, generate greedily in batches (sharded across
processes under `accelerate launch`, gathered on the main process), parse, score, write the results.

Outputs in `output_dir`: `eval_results.json` (per task: metrics, n, prompt template id, parser, fallback and
unparsed counts, skipped rows, model, data file and its hash), `predictions.jsonl` (one line per prompt) and
`eval_results.md` (a Markdown table).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from vlmkit.data.embedded import DATA_PREFIX, resolve_data_path
from vlmkit.data.records import Sample, Turn
from vlmkit.eval.answers import generate_answers
from vlmkit.eval.benchmarks.base import FAILED, FALLBACK, EvalItem, RowReader, Task, file_hash
from vlmkit.eval.benchmarks.registry import TASKS, build_task, headline_metric

RESULTS_FILE, PREDICTIONS_FILE, TABLE_FILE = "eval_results.json", "predictions.jsonl", "eval_results.md"


@dataclass
class BenchmarkOptions:
    """What to evaluate and how (the `vlmkit eval --tasks` flags and the eval recipe's fields)."""

    tasks: list[str]
    data_dir: str | None = None
    data_files: dict[str, str] = field(default_factory=dict)  # task -> file or directory
    image_folders: dict[str, str] = field(default_factory=dict)  # task -> image folder
    field_map: str | None = None  # for mcq / vqa: "question=q,answer=a,..."
    batch_size: int = 32
    max_new_tokens: int = 0  # 0: the task's own
    max_samples: int = 0  # at most this many questions per task (0: all)
    on_bad_sample: str = "error"


def parse_assignments(values: list[str] | None, what: str) -> dict[str, str]:
    """['mmbench=a.tsv', ...] -> {'mmbench': 'a.tsv'}; task names are checked."""
    out = {}
    for value in values or []:
        name, sep, path = value.partition("=")
        if not sep or not path:
            raise ValueError(f"{what}: '{value}' is not TASK=PATH")
        if name not in TASKS:
            raise ValueError(f"{what}: unknown benchmark task '{name}'; valid: {', '.join(TASKS)}")
        out[name] = path
    return out


def locate(task: Task, options: BenchmarkOptions) -> tuple[Path, Path]:
    """(data file or directory, image folder) of a task, from --data_files, the embedded data or --data_dir."""
    given = options.data_files.get(task.name)
    if given:
        path = Path(resolve_data_path(given))
    elif task.default_file.startswith(DATA_PREFIX):
        path = Path(resolve_data_path(task.default_file))
    elif options.data_dir and task.default_file:
        path = Path(options.data_dir) / task.default_file
    else:
        expects = f" (expects {task.default_file} under it)" if task.default_file else ""
        raise ValueError(f"task '{task.name}': pass --data_dir{expects} or --data_files {task.name}=PATH")
    if task.name in options.image_folders:
        return path, Path(options.image_folders[task.name])
    base = path if path.is_dir() else path.parent
    return path, base / task.default_images if task.default_images else base


def first_questions(items: list[EvalItem], n: int) -> list[EvalItem]:
    """The items of the first `n` questions of each split (an MMBench question's rotations stay together)."""
    if n <= 0:
        return items
    seen: dict[str, set] = {}
    out = []
    for it in items:
        questions = seen.setdefault(str(it.meta.get("split", "")), set())
        key = it.meta.get("index", it.uid)
        if key not in questions and len(questions) == n:
            continue
        questions.add(key)
        out.append(it)
    return out


def generate_texts(model, processor, items: list[EvalItem], *, batch_size: int, max_new_tokens: int, state,
                   desc: str = "") -> list[str]:  # fmt: skip
    """Greedy answers for `items`, in order. Each process answers items rank, rank + world, ...; the main
    process gathers all of them (the others get them too)."""
    from tqdm.auto import tqdm

    rank, world = state.process_index, state.num_processes
    mine = list(range(rank, len(items), world))
    texts: list[str] = []
    with tqdm(total=len(mine), desc=desc, disable=not state.is_main_process, dynamic_ncols=True) as bar:
        for start in range(0, len(mine), batch_size):
            chunk = [items[i] for i in mine[start : start + batch_size]]
            samples = [
                Sample([Turn("user", it.prompt)], images=list(it.images), source=it.source, index=it.row)
                for it in chunk
            ]
            answers = generate_answers(
                model, processor, samples, batch_size=len(samples), max_new_tokens=max_new_tokens
            )
            texts.extend(text for text, _ in answers)
            bar.update(len(chunk))
    pairs = list(zip(mine, texts))
    if world > 1:
        from accelerate.utils import gather_object

        pairs = gather_object(pairs)
    ordered = [""] * len(items)
    for i, text in pairs:
        ordered[i] = text
    return ordered


def score_task(task: Task, items: list[EvalItem], texts: list[str]) -> tuple[dict, list[dict]]:
    """(result summary, prediction rows) from the generated texts."""
    parsed = [task.parse(it, text) for it, text in zip(items, texts)]
    metrics, scores = task.score(items, parsed)
    n = len(items)
    fallback = sum(p.how == FALLBACK for p in parsed)
    result = {
        "metrics": metrics,
        "headline": headline_metric(task.name),
        "n": n,
        "prompt_template": task.prompt_id,
        "parser": task.parser,
        "fallback_count": fallback,
        "fallback_rate": fallback / n if n else 0.0,
        "unparsed_count": sum(p.how == FAILED for p in parsed),
    }
    rows = [
        {"task": task.name, "uid": it.uid, "prompt": it.prompt, "prediction": text, "parsed": p.value,
         "parsed_by": p.how, "target": it.target, "score": s,
         **{k: v for k, v in it.meta.items() if isinstance(v, (str, int, float, bool)) or v is None}}
        for it, text, p, s in zip(items, texts, parsed, scores)
    ]  # fmt: skip
    return result, rows


@dataclass
class LoadedTask:
    """A task with its items read from disk (before any model is loaded, so bad data fails fast)."""

    task: Task
    path: Path
    items: list[EvalItem]
    reader: RowReader


def load_tasks(options: BenchmarkOptions) -> list[LoadedTask]:
    """Build every task (unknown names fail first) and read its file into items."""
    tasks = [build_task(name, field_map=options.field_map if name in ("mcq", "vqa") else None)
             for name in options.tasks]  # fmt: skip
    loaded = []
    for task in tasks:
        path, images = locate(task, options)
        reader = RowReader(options.on_bad_sample)
        items = first_questions(task.load(path, images, reader), options.max_samples)
        if not items:
            raise ValueError(f"{path}: no usable rows for task '{task.name}'")
        loaded.append(LoadedTask(task, path, items, reader))
    return loaded


def run_benchmarks(model, processor, options: BenchmarkOptions, *, model_name: str, state,
                   output_dir: str | Path | None = None,
                   loaded: list[LoadedTask] | None = None) -> dict[str, dict]:  # fmt: skip
    """Evaluate every task in `options` (or the already `loaded` ones); returns {task: result} on the main
    process ({} elsewhere) and writes the output files into `output_dir` when given."""
    if processor.spec.modality != "image":
        raise ValueError(
            f"{model_name} is an {processor.spec.modality} model; the benchmarks are image tasks"
        )
    results, rows = {}, []
    for t in loaded if loaded is not None else load_tasks(options):
        texts = generate_texts(
            model, processor, t.items, batch_size=options.batch_size, state=state, desc=t.task.name,
            max_new_tokens=options.max_new_tokens or t.task.max_new_tokens,
        )  # fmt: skip
        if not state.is_main_process:
            continue
        result, task_rows = score_task(t.task, t.items, texts)
        result.update(model=model_name, data_file=str(t.path), data_hash=file_hash(*t.task.data_files(t.path)),
                      skipped_rows=t.reader.skips.total, skipped_reasons=t.reader.skips.as_dict())  # fmt: skip
        results[t.task.name] = result
        rows.extend(task_rows)
    if output_dir is not None and state.is_main_process:
        write_outputs(Path(output_dir), results, rows)
    return results


def flat_metrics(results: dict[str, dict]) -> dict[str, float]:
    """{'eval_<task>_<metric>': value} for metrics.json."""
    return {f"eval_{task}_{k}": v for task, r in results.items() for k, v in r["metrics"].items()}


def markdown_table(results: dict[str, dict]) -> str:
    lines = ["| task | metric | value | n | fallback | unparsed | prompt | parser |", "|---" * 8 + "|"]
    for name, r in results.items():
        m = r["metrics"]
        head = r["headline"]
        others = ", ".join(f"{k} {v:.3f}" for k, v in m.items() if k != head and isinstance(v, float))
        lines.append(
            f"| {name} | {head} | {m[head]:.3f} | {r['n']} | {r['fallback_count']} | {r['unparsed_count']} "
            f"| `{r['prompt_template']}` | `{r['parser']}` |"
        )
        if others:
            lines.append(f"| | others | {others} | | | | | |")
    return "\n".join(lines) + "\n"


def write_outputs(out_dir: Path, results: dict[str, dict], rows: list[dict]) -> None:
    out_dir.mkdir(parents=True, exist_ok=True)
    (out_dir / RESULTS_FILE).write_text(json.dumps(results, indent=2) + "\n")
    with open(out_dir / PREDICTIONS_FILE, "w", encoding="utf-8") as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False, default=str) + "\n")
    (out_dir / TABLE_FILE).write_text(markdown_table(results))


def process_state():
    """Accelerate's process state (rank, world size, device); gloo for several CPU processes."""
    import os

    import torch
    from accelerate import PartialState

    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return PartialState(backend="gloo", cpu=True)
    return PartialState()


def evaluate_checkpoint(checkpoint: str, options: BenchmarkOptions, output_dir: str | Path, *, state=None,
                        print_table: bool = False) -> dict[str, dict]:  # fmt: skip
    """Read the tasks' data, load a vlmkit checkpoint (full model or LoRA adapter) with `load_vlm` and run
    `run_benchmarks`."""
    from vlmkit.models.build import load_vlm

    loaded = load_tasks(options)  # unknown tasks and bad data fail before the model loads
    state = state or process_state()
    model, processor = load_vlm(checkpoint)
    model.to(state.device)
    results = run_benchmarks(model, processor, options, model_name=str(checkpoint), state=state,
                             output_dir=output_dir, loaded=loaded)  # fmt: skip
    if print_table and state.is_main_process:
        print(markdown_table(results), end="")
        print(f"[vlmkit] eval results: {Path(output_dir) / RESULTS_FILE}", flush=True)
    return results
