"""Every native VLM family's tiny stand-in (`NATIVE_FAMILIES`: LLaVA, LLaVA-NeXT, LLaVA-OneVision, Qwen2-VL,
Qwen2.5-VL, Qwen3-VL, Idefics3/SmolVLM, PaliGemma, Gemma 3) through every real recipe, with LoRA: stage 2
(SFT, the connector and the vision tower trained in full beside the adapters), reward model, DPO, PPO
(rewarded by the reward model just trained, which also starts the critic) and GRPO.

The breadth check: a few steps each, on a handful of digits, then what a user does with the output directory
(reload with plain transformers / peft and get the run's held-out numbers back, merge, generate). The depth
(learning, full fine-tuning, QLoRA, resume) is asserted on qwen2_vl and llava in test_native_<recipe>.py.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from tests.recipes.test_native_stage2 import front_matter, generate, held_out_loss
from vlmkit.cli import main as cli_main
from vlmkit.data.embedded import resolve_data_path
from vlmkit.data.readers import read_dataset
from vlmkit.eval.answers import generate_answers
from vlmkit.models.native.encoding import NativeEncoder
from vlmkit.models.native.loading import load_native_checkpoint, load_processor
from vlmkit.models.native.tiny import NATIVE_FAMILIES, build_tiny_native
from vlmkit.rlhf.dpo import ReferencePolicy, evaluate_dpo
from vlmkit.rlhf.native_reward import NativeRewardModel
from vlmkit.rlhf.reward_model import evaluate_pairs, load_reward_model
from vlmkit.training.native_parts import native_parts
from vlmkit.training.native_preference import NativePreferenceCollator, NativePreferenceDataset

# The files every run writes (the run contract), and each recipe's headline held-out metrics.
RUN_FILES = {"config.yaml", "metrics.json", "train_log.jsonl", "loss.png", "README.md"}
ADAPTER_FILES = {"adapter_config.json", "adapter_model.safetensors", "tokenizer.json", "chat_template.jinja"}
RL_METRICS = {"eval_accuracy", "eval_accuracy_before", "eval_reward", "eval_reward_before", "eval_kl"}
HEADLINE = {
    "sft": {"eval_loss", "eval_accuracy"},
    "rm": {"eval_pairwise_accuracy", "eval_mean_margin", "eval_loss"},
    "dpo": {"eval_loss", "eval_reward_accuracy", "eval_accuracy", "eval_accuracy_before"},
    "ppo": RL_METRICS,
    "grpo": RL_METRICS,
}
# Optimizer steps per run: SFT one epoch of its 16 rows in batches of 4 (every row trained on), the rest two.
STEPS = {"sft": 4, "rm": 2, "dpo": 2, "ppo": 2, "grpo": 2}
# name in data(), embedded source file, records
DATA = (
    ("sft_train", "stage2_train", 14), ("sft_eval", "stage2_eval", 8), ("pref_train", "preference_train", 16),
    ("pref_eval", "preference_eval", 8), ("prompts_train", "prompts_train", 8), ("prompts_eval", "prompts_eval", 4),
)  # fmt: skip
# (width, height) the digits are resized to, in turn: every batch mixes sizes, so LLaVA-NeXT/OneVision pick
# several any-res grids, Idefics3 splits some images into tiles, Qwen2-VL gets several patch grids.
SIZES = ((32, 32), (64, 32), (32, 64), (64, 64))
# Two more SFT rows: two images in one conversation (trained on, and held out), and text only (trained on;
# PaliGemma, a prefix-LM reading an image first, cannot take it: its run skips that row and counts it).
TWO_IMAGES = {"image": ["images/sft_train_0.png", "images/sft_train_1.png"],
              "conversations": [{"from": "human", "value": "<image>\n<image>\nName both digits."},
                                {"from": "gpt", "value": "two digits"}]}  # fmt: skip
TEXT_ONLY = {"conversations": [{"from": "human", "value": "Say a digit."}, {"from": "gpt", "value": "7"}]}


def _resized_copies(records: list[dict], name: str, source: Path, out: Path) -> None:
    """Each record's image resized to the next of SIZES and saved under `out`; the record points at it."""
    from PIL import Image

    for i, record in enumerate(records):
        key = "images" if "prompt" in record else "image"
        image = Image.open(source / (record[key][0] if key == "images" else record[key])).convert("RGB")
        path = f"images/{name}_{i}.png"
        image.resize(SIZES[i % len(SIZES)]).save(out / path)
        record[key] = [path] if key == "images" else path


@pytest.fixture(scope="module")
def data(digits_data, tmp_path_factory) -> dict[str, str]:
    """A few embedded digits of each kind (conversations, preference pairs, prompts), images of mixed sizes."""
    out = tmp_path_factory.mktemp("native_families_data")
    (out / "images").mkdir()
    files = {"images": str(out)}
    for name, source_name, n in DATA:
        source = Path(resolve_data_path(f"vlmkit-data/digits/{source_name}.json"))
        records = json.loads(source.read_text())[:n]
        _resized_copies(records, name, source.parent, out)
        if name == "sft_train":
            records[2:2] = [TWO_IMAGES, TEXT_ONLY]
        if name == "sft_eval":
            records.append(TWO_IMAGES)
        files[name] = str(out / f"{name}.json")
        Path(files[name]).write_text(json.dumps(records))
    return files


def _argv(stage: str, data: dict, root: Path, family: str) -> tuple[str, list[str]]:
    """(recipe, its argv) for one stage of one family, LoRA throughout."""
    common = ["--image_folder", data["images"], "--per_device_train_batch_size", "4", "--use_lora", "true",
              "--report_to", "none"]  # fmt: skip
    prompts = ["--data_path", data["prompts_train"], "--eval_data_path", data["prompts_eval"],
               "--max_new_tokens", "3", "--learning_rate", "1e-3"]  # fmt: skip
    pairs = ["--data_path", data["pref_train"], "--eval_data_path", data["pref_eval"]]
    stages = {
        "sft": ("llava_stage2", ["--data_path", data["sft_train"], "--eval_data_path", data["sft_eval"],
                                 "--learning_rate", "5e-4", "--max_new_tokens", "4",
                                 "--on_bad_sample", "skip" if family == "paligemma" else "error",
                                 "--tune_vision_tower", "true"]),
        "rm": ("reward_model", [*pairs, "--learning_rate", "1e-3"]),
        "dpo": ("dpo", [*pairs, "--learning_rate", "5e-3", "--eval_prompts_path", data["prompts_eval"]]),
        "ppo": ("ppo", [*prompts, "--reward_model_name_or_path", str(root / family / "rm"),
                        "--value_model", "reward_model"]),
        "grpo": ("grpo", [*prompts, "--num_generations", "4", "--beta", "0.04",
                          "--reward_funcs", "digit_match,tests.recipes.test_native_grpo:brevity"]),
    }  # fmt: skip
    name, argv = stages[stage]
    model = [
        "--model_name_or_path",
        f"vlmkit-tiny/native-{family}",
        "--output_dir",
        str(root / family / stage),
    ]
    return name, [*model, *common, *argv, "--max_steps", str(STEPS[stage])]


@pytest.fixture(scope="module")
def trained(recipe, data, tmp_path_factory):
    """`trained(family, stage)` -> (output dir, metrics): each run once per module (PPO needs the RM's)."""
    root, done = tmp_path_factory.mktemp("native_families"), {}

    def run(family: str, stage: str) -> tuple[Path, dict]:
        if (family, stage) not in done:
            if stage == "ppo":
                run(family, "rm")
            name, argv = _argv(stage, data, root, family)
            done[family, stage] = (root / family / stage, recipe(name).main(argv))
        return done[family, stage]

    return run


def check_run_contract(out: Path, metrics: dict, stage: str) -> None:
    """The run's files, its headline metrics (finite), and metrics.json holding what the recipe returned."""
    assert {p.name for p in out.iterdir()} >= RUN_FILES
    assert HEADLINE[stage] <= set(metrics), sorted(metrics)
    assert all(math.isfinite(metrics[k]) for k in HEADLINE[stage]), metrics
    assert json.loads((out / "metrics.json").read_text()) == pytest.approx(metrics)
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and all(math.isfinite(r["loss"]) for r in log if "loss" in r)
    assert metrics["global_step"] == STEPS[stage]


def check_adapter_only(out: Path, *, full_modules: bool) -> dict[str, torch.Tensor]:
    """An adapter directory without the base weights: LoRA on the language model, and only with `full_modules`
    the modules trained in full (connector, tower)."""
    files = {p.name for p in out.iterdir()}
    assert files >= ADAPTER_FILES and not files & {"model.safetensors", "config.json"}, sorted(files)
    keys = load_file(str(out / "adapter_model.safetensors"))
    lora = [k for k in keys if "lora_" in k]
    assert any("lora_B" in k for k in lora)
    assert all(".language_model." in k or ".text_model." in k for k in lora), "LoRA on the LM only"
    if not full_modules:
        assert all("lora_" in k for k in keys), sorted(k for k in keys if "lora_" not in k)
    return keys


def policy_answers(out: Path, family: str, data: dict) -> tuple[list[str], list[str]]:
    """(answers of the reloaded policy, answers the run saved) on the held-out prompts it showed."""
    model, processor = load_native_checkpoint(out)  # plain transformers + peft
    shown = json.loads((out / "eval_examples.json").read_text())
    prompts = read_dataset(data["prompts_eval"], data["images"])[: len(shown)]
    encoder = NativeEncoder(processor, family)
    answers = [a for a, _ in generate_answers(model, encoder, prompts, max_new_tokens=3)]
    return answers, [row["prediction"] for row in shown]


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_sft_lora_reloads_with_plain_peft_merges_and_generates(family, trained, data, tmp_path, capsys):
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    out, metrics = trained(family, "sft")
    check_run_contract(out, metrics, "sft")
    if family == "paligemma":  # the text-only row, named in skipped.json
        assert metrics["skipped_samples"] == 1
        assert "PaliGemma needs an image" in (out / "skipped.json").read_text()
    else:
        assert "skipped_samples" not in metrics
    base = AutoModelForImageTextToText.from_pretrained(build_tiny_native(family))
    parts = native_parts(base)
    full = [k for k in check_adapter_only(out, full_modules=True) if "lora_" not in k]
    assert any(f"{parts.connector}." in k for k in full), "the connector is saved with the adapter"
    assert any(f"{parts.vision}." in k and f"{parts.connector}." not in k for k in full), "and the tower"
    meta = front_matter(out)
    assert meta["library_name"] == "peft" and meta["pipeline_tag"] == "image-text-to-text"
    assert meta["base_model"] == f"vlmkit-tiny/native-{family}"

    held_out = {"eval": data["sft_eval"], "images": data["images"]}
    processor = load_processor(out)
    untrained = held_out_loss(base, processor, held_out)
    reloaded = held_out_loss(PeftModel.from_pretrained(base, out), processor, held_out)
    assert reloaded == pytest.approx(metrics["eval_loss"], rel=1e-5)
    assert abs(untrained - reloaded) > 1e-3  # the steps moved the model

    merged = tmp_path / "merged"
    assert cli_main(["merge", str(out), str(merged)]) == 0
    plain = AutoModelForImageTextToText.from_pretrained(merged)
    assert type(plain).__name__ == type(base).__name__
    assert held_out_loss(plain, load_processor(merged), held_out) == pytest.approx(reloaded, rel=1e-4)
    # the recipe's own held-out answer to a one-image question (the longest: an untrained answer is often
    # empty), generated again
    examples = json.loads((out / "eval_examples.json").read_text())
    one_image = [e for e in examples if e["question"].count("<image>") == 1]
    shown = max(one_image, key=lambda e: len(e["prediction"]))
    for checkpoint in (out, merged):
        assert generate(capsys, checkpoint, shown) == shown["prediction"]


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_reward_model_lora_reloads_merges_and_scores_as_trained(family, trained, data, tmp_path):
    out, metrics = trained(family, "rm")
    check_run_contract(out, metrics, "rm")
    check_adapter_only(out, full_modules=False)
    assert {"score_head.safetensors", "reward_model.json"} <= {p.name for p in out.iterdir()}
    model, encoder = load_reward_model(out)
    assert isinstance(model, NativeRewardModel) and isinstance(encoder, NativeEncoder)
    pairs = read_dataset(data["pref_eval"], data["images"], format="preference")
    dataset = NativePreferenceDataset(pairs, NativeEncoder(load_processor(out), family))
    collate = NativePreferenceCollator(encoder.tokenizer.pad_token_id, family)
    scores = evaluate_pairs(model, dataset, collate, batch_size=8)
    assert scores["mean_margin"] == pytest.approx(metrics["eval_mean_margin"], rel=1e-4, abs=1e-6)
    assert scores["pairwise_accuracy"] == metrics["eval_pairwise_accuracy"]
    # merged, it is still a reward model (a full one: plain transformers backbone + the same head)
    assert cli_main(["merge", str(out), str(tmp_path / "merged")]) == 0
    merged, _ = load_reward_model(tmp_path / "merged")
    assert not merged.is_peft
    again = evaluate_pairs(merged, dataset, collate, batch_size=8)
    assert again["mean_margin"] == pytest.approx(scores["mean_margin"], rel=1e-4, abs=1e-6)


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_dpo_lora_moves_from_its_start_and_reloads(family, trained, data):
    out, metrics = trained(family, "dpo")
    check_run_contract(out, metrics, "dpo")
    check_adapter_only(out, full_modules=False)
    # at the start the policy is its reference (adapters off): the loss is log 2; two steps move it
    assert abs(metrics["eval_loss"] - math.log(2)) > 1e-4
    assert abs(metrics["eval_logp_margin"] - metrics["eval_logp_margin_before"]) > 1e-3
    model, processor = load_native_checkpoint(out)
    pairs = read_dataset(data["pref_eval"], data["images"], format="preference")
    dataset = NativePreferenceDataset(pairs, NativeEncoder(processor, family))
    collate = NativePreferenceCollator(processor.tokenizer.pad_token_id, family)
    reference = ReferencePolicy(model, adapters_off=True)
    scores = evaluate_dpo(model, reference, dataset, collate, beta=0.1, batch_size=8)
    assert scores["loss"] == pytest.approx(metrics["eval_loss"], rel=1e-4)
    assert scores["logp_chosen"] == pytest.approx(metrics["eval_logp_chosen"], rel=1e-4)


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_ppo_lora_on_the_trained_reward_model_reloads_and_answers_alike(family, trained, data):
    out, metrics = trained(family, "ppo")
    check_run_contract(out, metrics, "ppo")
    assert metrics["bad_steps"] == 0 and metrics["eval_kl"] != 0.0  # the policy moved from its start
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all(r["score_std"] > 0 and math.isfinite(r["value_loss"]) for r in log)  # the RM tells them apart
    check_adapter_only(out, full_modules=False)
    # the critic started from the reward model and was trained on: it reloads as a native reward model
    critic = NativeRewardModel.from_pretrained(out / "value_model")
    start = NativeRewardModel.from_pretrained(trained(family, "rm")[0])
    assert not torch.equal(critic.score_head.weight, start.score_head.weight)
    answers, saved = policy_answers(out, family, data)
    assert answers == saved


@pytest.mark.slow
@pytest.mark.parametrize("family", NATIVE_FAMILIES)
def test_grpo_lora_reloads_and_answers_alike(family, trained, data):
    out, metrics = trained(family, "grpo")
    check_run_contract(out, metrics, "grpo")
    assert metrics["bad_steps"] == 0 and metrics["eval_kl"] > 0.0  # KL to the adapters-off start
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert all({"reward_digit_match", "reward_brevity"} <= set(r) for r in log)
    check_adapter_only(out, full_modules=False)
    answers, saved = policy_answers(out, family, data)
    assert answers == saved
