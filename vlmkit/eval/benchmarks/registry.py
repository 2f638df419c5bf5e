"""The benchmark tasks by name: `build_task(name)` raises with the valid names."""

from __future__ import annotations

from vlmkit.eval.benchmarks.base import Task
from vlmkit.eval.benchmarks.chartqa import ChartQATask
from vlmkit.eval.benchmarks.custom import MCQTask, VQACustomTask
from vlmkit.eval.benchmarks.mmbench import MMBenchTask
from vlmkit.eval.benchmarks.mmmu import MMMUTask
from vlmkit.eval.benchmarks.pope import POPETask
from vlmkit.eval.benchmarks.scienceqa import ScienceQATask
from vlmkit.eval.benchmarks.vqa import TextVQATask, VizWizTask, VQAv2Task

EMBEDDED_ROOT = "vlmkit-data/digits_bench"


class DigitsMMBenchTask(MMBenchTask):
    """The embedded default in MMBench's format: which digit, 4 shuffled numeral options, circular eval."""

    name = "digits_mmbench"
    default_file = f"{EMBEDDED_ROOT}/mmbench_digits.tsv"


class DigitsPOPETask(POPETask):
    """The embedded default in POPE's format: "Is there a 3 in the image?" (random/popular/adversarial)."""

    name = "digits_pope"
    default_file = f"{EMBEDDED_ROOT}/pope"
    default_images = "images"


TASKS: dict[str, type[Task]] = {
    "mmbench": MMBenchTask,
    "scienceqa_img": ScienceQATask,
    "pope": POPETask,
    "vqav2": VQAv2Task,
    "textvqa": TextVQATask,
    "vizwiz": VizWizTask,
    "mmmu": MMMUTask,
    "chartqa": ChartQATask,
    "mcq": MCQTask,
    "vqa": VQACustomTask,
    "digits_mmbench": DigitsMMBenchTask,
    "digits_pope": DigitsPOPETask,
}
# The metric shown first for each task (the one papers report).
HEADLINE = {"mmbench": "circular_accuracy", "digits_mmbench": "circular_accuracy", "pope": "f1",
            "digits_pope": "f1", "chartqa": "relaxed_accuracy"}  # fmt: skip


def build_task(name: str, *, field_map: str | dict | None = None) -> Task:
    """The task called `name`; `field_map` applies to the user-file tasks `mcq` and `vqa`."""
    if name not in TASKS:
        raise ValueError(f"unknown benchmark task '{name}'; valid: {', '.join(TASKS)}")
    cls = TASKS[name]
    if name in ("mcq", "vqa"):
        return cls(field_map)
    if field_map:
        raise ValueError(f"field_map applies to the mcq and vqa tasks only, not to '{name}'")
    return cls()


def headline_metric(name: str) -> str:
    return HEADLINE.get(name, "accuracy")
