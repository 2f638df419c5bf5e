"""The shipped configs for released transformers VLMs (Qwen2.5-VL, SmolVLM, LLaVA-hf, Gemma 3), checked on a CPU.

Each config parses with Stage2Config, says what its name says (LoRA / QLoRA / full, bf16, gradient
checkpointing, Qwen's pixel budget) and carries a header whose memory arithmetic adds up and fits the GPU it
names. Then each runs one optimizer step of recipes/llava_stage2.py with `--model_name_or_path` swapped for the
tiny offline stand-in of its family while every other field (LoRA, 4-bit, frozen parts, pixel budget, data
format) stays as shipped. The data are a few embedded digits in the config's own format: LLaVA json, or a parquet
dataset with the `messages` + `images` columns of HuggingFaceH4/llava-instruct-mix-vsft. Only what a CPU cannot
express is overridden: batch size, loader workers, the step count and the held-out set.
"""

from __future__ import annotations

import importlib.util
import json
import re
from pathlib import Path

import pytest
from safetensors.torch import load_file

from vlmkit.config.parser import parse_config
from vlmkit.config.recipes import Stage2Config
from vlmkit.data.embedded import resolve_data_path

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
# config name -> (real checkpoint, tiny stand-in family)
NATIVE_CONFIGS = {
    "qwen2.5_vl_3b_lora": ("Qwen/Qwen2.5-VL-3B-Instruct", "qwen2_5_vl"),
    "qwen2.5_vl_7b_qlora": ("Qwen/Qwen2.5-VL-7B-Instruct", "qwen2_5_vl"),
    "smolvlm_256m_full": ("HuggingFaceTB/SmolVLM-256M-Instruct", "idefics3"),
    "llava_1.5_7b_hf_lora": ("llava-hf/llava-1.5-7b-hf", "llava"),
    "gemma3_4b_lora": ("google/gemma-3-4b-it", "gemma3"),
}
CONNECTOR_KEY = {"qwen2_5_vl": "visual.merger.", "idefics3": "connector.", "llava": "multi_modal_projector.",
                 "gemma3": "multi_modal_projector."}  # fmt: skip
CPU_RUN = ["--max_steps", "1", "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "1",
           "--dataloader_num_workers", "0", "--report_to", "none", "--max_new_tokens", "2"]  # fmt: skip


def _path(name: str) -> Path:
    return CONFIGS / f"{name}.yaml"


def _load(name: str, *overrides: str) -> Stage2Config:
    return parse_config(Stage2Config, ["--config", str(_path(name)), *overrides])


def _header(name: str) -> str:
    return "".join(line for line in _path(name).read_text().splitlines(True) if line.startswith("#"))


@pytest.mark.parametrize("name", sorted(NATIVE_CONFIGS))
def test_native_config_parses_and_its_header_adds_up(name):
    cfg = _load(name)
    real, family = NATIVE_CONFIGS[name]
    assert cfg.model_name_or_path == real
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.tune_encoder) == ("bf16", True, False)
    assert cfg.use_lora == ("lora" in name) and cfg.load_in_4bit == ("qlora" in name)
    # auto: flash_attention_2 where flash-attn and a GPU are there, else sdpa
    assert cfg.attn_implementation in ("auto", "sdpa")
    assert (cfg.max_pixels is not None) == family.startswith("qwen")  # the others have a fixed resolution
    if cfg.max_pixels:
        assert cfg.max_pixels % (28 * 28) == 0 and cfg.min_pixels <= cfg.max_pixels
        assert cfg.max_pixels // (28 * 28) < cfg.max_length  # an image at the budget fits a sample

    header = _header(name)
    for section in ("# Hardware:", "# Memory, an ESTIMATE", "# Launch:", "# Data:", "Checked on a CPU only"):
        assert section in header, section
    assert f"recipes/llava_stage2.py --config recipes/configs/{name}.yaml" in header
    assert re.search(r"hf download \S+", header) and cfg.data_path.split("/")[0] == "data"
    batch = re.search(r"Global batch: (\d+) = (\d+) per device x 1 GPU x (\d+) accumulation", header)
    assert batch, "no global-batch line"
    glob, per_device, accumulation = map(int, batch.groups())
    assert (per_device, accumulation) == (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps)
    assert glob == per_device * accumulation
    # The memory table: its items add up to the stated total, at the config's batch, within the GPU it names.
    assert f"batch {cfg.per_device_train_batch_size} x {cfg.max_length} tokens" in header
    table = header[header.index("# Memory, an ESTIMATE") : header.index("total")]
    if cfg.use_lora:
        assert f"LoRA r{cfg.lora_r} " in table  # the adapter size counted is the config's rank
    items = [float(x) for x in re.findall(r"=\s+([\d.]+) GiB", table)]
    total = float(re.search(r"total\s+~ (\d+) GiB", header).group(1))
    assert len(items) >= 5 and abs(sum(items) - total) <= 0.6, (items, total)
    gpu_gb = int(re.search(r"(\d+) GB", header.split("# Hardware:")[1].splitlines()[0]).group(1))
    # GiB on the card it names, with headroom for what an estimate misses
    assert total < gpu_gb * 1e9 / 2**30 - 2


@pytest.fixture(scope="module")
def digits_rows(digits_data, tmp_path_factory) -> dict[str, str]:
    """6 training and 2 held-out digits as LLaVA json (with their image folder) and as a parquet dataset in
    HuggingFaceH4/llava-instruct-mix-vsft's schema (`messages` with content parts, `images` holding the images)."""
    import datasets

    source = Path(resolve_data_path("vlmkit-data/digits/stage2_train.json"))
    records = json.loads(source.read_text())
    out = tmp_path_factory.mktemp("native_config_data")
    files = {"images": str(source.parent)}
    for split, rows in (("train", records[:6]), ("eval", records[6:8])):
        files[f"{split}_json"] = str(out / f"{split}.json")
        Path(files[f"{split}_json"]).write_text(json.dumps(rows))
        messages, images = [], []
        for r in rows:
            question = r["conversations"][0]["value"].replace("<image>", "").strip()
            messages.append([
                {"role": "user", "content": [{"type": "image", "text": None}, {"type": "text", "text": question}]},
                {"role": "assistant", "content": [{"type": "text", "text": r["conversations"][1]["value"]}]},
            ])  # fmt: skip
            images.append([{"bytes": (source.parent / r["image"]).read_bytes(), "path": None}])
        features = datasets.Features({
            "messages": [{"role": datasets.Value("string"),
                          "content": [{"type": datasets.Value("string"), "text": datasets.Value("string")}]}],
            "images": datasets.Sequence(datasets.Image()),
        })  # fmt: skip
        folder = out / f"mix_{split}"
        (folder / "data").mkdir(parents=True)
        ds = datasets.Dataset.from_dict({"messages": messages, "images": images}, features=features)
        ds.to_parquet(str(folder / "data" / "train-00000-of-00001.parquet"))
        files[f"{split}_hf"] = str(folder)
    return files


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(NATIVE_CONFIGS))
def test_native_config_trains_a_step_on_its_tiny_stand_in(recipe, digits_rows, name, tmp_path):
    cfg = _load(name)
    family = NATIVE_CONFIGS[name][1]
    fmt = "hf" if cfg.data_format == "hf" else "json"
    data = ["--data_path", digits_rows[f"train_{fmt}"], "--eval_data_path", digits_rows[f"eval_{fmt}"]]
    if fmt == "json":
        data += ["--image_folder", digits_rows["images"]]
    overrides = []
    if cfg.load_in_4bit and importlib.util.find_spec("bitsandbytes") is None:
        overrides = ["--load_in_4bit", "false"]  # the rest of the QLoRA config still runs
    if cfg.load_in_4bit and not overrides:  # the QLoRA config as shipped quantizes the language model
        from vlmkit.training.vlm_kinds import NATIVE

        model, _ = NATIVE.build(_load(name, "--model_name_or_path", f"vlmkit-tiny/native-{family}"))
        linear4bit = [n for n, m in model.named_modules() if type(m).__name__ == "Linear4bit"]
        assert linear4bit and all("language_model" in n for n in linear4bit)
        del model
    out = tmp_path / name
    metrics = recipe("llava_stage2").main(
        ["--config", str(_path(name)), "--model_name_or_path", f"vlmkit-tiny/native-{family}", *data,
         "--output_dir", str(out), *overrides, *CPU_RUN]
    )  # fmt: skip
    assert metrics["global_step"] == 1 and metrics.get("skipped_samples", 0) == 0
    assert "eval_loss" in metrics
    saved = json.loads((out / "metrics.json").read_text())
    assert saved["global_step"] == 1
    if cfg.use_lora:
        adapter = json.loads((out / "adapter_config.json").read_text())
        assert (adapter["r"], adapter["lora_alpha"]) == (cfg.lora_r, cfg.lora_alpha)
        keys = load_file(str(out / "adapter_model.safetensors"))
        # the connector travels with the adapter exactly when the config trains it
        assert any(CONNECTOR_KEY[family] in k for k in keys) == cfg.tune_connector, sorted(keys)[:5]
        assert not any("vision_tower" in k or "visual.blocks" in k for k in keys)
        assert not (out / "model.safetensors").exists()
    else:
        assert json.loads((out / "config.json").read_text())["model_type"] == family
    if cfg.max_pixels:
        from vlmkit.models.native.loading import load_processor

        size = load_processor(out).image_processor.size
        assert (size["shortest_edge"], size["longest_edge"]) == (cfg.min_pixels, cfg.max_pixels)


def test_readme_launches_every_native_config_and_names_only_shipped_configs():
    readme = (CONFIGS.parents[1] / "README.md").read_text()
    named = set(re.findall(r"recipes/configs/([\w.\-]+)\.yaml", readme))
    assert not {n for n in named if not _path(n).is_file()}, "README names a config that is not shipped"
    for name in NATIVE_CONFIGS:
        assert f"recipes/llava_stage2.py --config recipes/configs/{name}.yaml" in readme, name
