"""Benchmark evaluation in the published formats with the official scoring rules.

One module per task family (`mmbench`, `scienceqa`, `pope`, `vqa`, `mmmu`, `chartqa`, `custom`), the shared
parsing of multiple-choice answers (`choice`), the task registry (`build_task`) and the runner that generates,
scores and writes `eval_results.json`, `predictions.jsonl` and a Markdown table.
"""
