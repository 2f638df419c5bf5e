"""The GPU configs for real models (recipes/configs/llava15_*.yaml, qlora_*.yaml, ppo_llava.yaml), checked on a CPU.

Each config parses with its recipe's own config class, carries the documented hyperparameters (the header's
batch arithmetic included), and runs one step of its recipe with the real towers swapped for the tiny offline
ones while every other field (connector, feature layer, LoRA, 4-bit, PPO settings, data format) stays as
shipped. The data are a few rows in the exact LLaVA-Pretrain 558K, LLaVA-v1.5 665K mix and LLaVA-Instruct-150K
formats, with small generated PNGs. Only what a CPU cannot express is overridden: batch sizes (3 rows of data),
loader workers (2 shared cores) and the step count.
"""

from __future__ import annotations

import importlib.util
import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from PIL import Image
from safetensors.torch import load_file

from vlmkit.config.parser import parse_config
from vlmkit.config.ppo import PPOConfig
from vlmkit.config.recipes import Stage1Config, Stage2Config
from vlmkit.data.loading import read_samples, sft_dataset
from vlmkit.data.records import SkipCounter
from vlmkit.data.tokenize import IGNORE_INDEX, tokenize_prompt
from vlmkit.models.memory import estimate_finetune_memory
from vlmkit.models.model_paths import resolve_model_path
from vlmkit.models.processor import VLMProcessor

CONFIGS = Path(__file__).resolve().parents[2] / "recipes" / "configs"
STAGE1, STAGE2 = "llava15_stage1", "llava15_stage2"
QLORA, PPO = "qlora_siglip_qwen2.5_0.5b", "ppo_llava"
CONFIG_CLASSES = {STAGE1: Stage1Config, STAGE2: Stage2Config, QLORA: Stage2Config, PPO: PPOConfig}
RECIPES = {STAGE1: "llava_stage1", STAGE2: "llava_stage2", QLORA: "llava_stage2", PPO: "ppo"}
# What a CPU cannot run as shipped: 3-row datasets, 2 shared cores, one optimizer step.
CPU_RUN = ["--max_steps", "1", "--dataloader_num_workers", "0", "--report_to", "none"]
RL_CPU_RUN = ["--max_steps", "1", "--report_to", "none"]  # RL samples its prompts itself: no data loader


def _load(name: str, *overrides: str):
    return parse_config(CONFIG_CLASSES[name], ["--config", str(CONFIGS / f"{name}.yaml"), *overrides])


def _header(name: str) -> str:
    return "".join(
        line for line in (CONFIGS / f"{name}.yaml").read_text().splitlines(True) if line.startswith("#")
    )


# ---- data in the real formats ----------------------------------------------------------------------------
def _png(path: Path, size: tuple[int, int], colour: tuple[int, int, int]) -> str:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path.name


def _turns(*texts: str) -> list[dict]:
    return [{"from": "human" if i % 2 == 0 else "gpt", "value": t} for i, t in enumerate(texts)]


CAPTIONS = ["select luxury furniture 3 - inch gel memory foam mattress topper",
            "a red double decker bus on a city street", "the view of the city from the top of a hill"]  # fmt: skip


@pytest.fixture(scope="module")
def data(tmp_path_factory) -> dict[str, Path]:
    """LLaVA-Pretrain 558K rows, LLaVA-v1.5 665K mix rows and LLaVA-Instruct-150K rows, with their images."""
    root = tmp_path_factory.mktemp("real_formats")
    pretrain = root / "LLaVA-Pretrain"
    rows_558k = []
    files = [("00453", "004539375"), ("00223", "002239345"), ("00000", "000000012")]
    for k, (folder, stem) in enumerate(files):
        _png(pretrain / "images" / folder / f"{stem}.png", (40 + 8 * k, 30), (200, 40 * k, 30))
        question = ["Render a clear and concise summary of the photo.\n<image>",
                    "<image>\nGive a brief description of the image.", "What is in the photo?\n<image>"][k]  # fmt: skip
        conversation = _turns(question, CAPTIONS[k])
        rows_558k.append({"id": stem, "image": f"{folder}/{stem}.png", "conversations": conversation})
    (pretrain / "blip_laion_cc_sbu_558k.json").write_text(json.dumps(rows_558k, indent=1))

    instruct = root / "llava-instruct"
    _png(instruct / "coco/train2017/000000033471.png", (64, 48), (250, 250, 250))
    _png(instruct / "ocr_vqa/images/140031996.png", (30, 60), (20, 20, 120))
    _png(instruct / "gqa/images/2354786.png", (50, 50), (10, 160, 10))
    rows_665k = [
        {"id": "000000033471", "image": "coco/train2017/000000033471.png", "conversations": _turns(
            "<image>\nWhat are the colors of the bus in the image?", "The bus in the image is white and red.",
            "What feature can be seen on the back of the bus?", "The back of the bus features an advertisement.")},
        {"id": "i6IyJda_0", "model": "", "conversations": _turns(  # a text-only ShareGPT row of the mix
            "How to tell if a customer segment is well segmented? In 3 bullet points.",
            "1. Homogeneity\n2. Distinctiveness\n3. Stability")},
        {"id": "140031996", "image": "ocr_vqa/images/140031996.png", "conversations": _turns(
            "<image>\nWho wrote this book?\nAnswer the question using a single word or phrase.", "Bill Blass")},
        {"id": "2354786", "image": "gqa/images/2354786.png", "conversations": _turns(
            "<image>\nIs the sky dark?\nAnswer the question using a single word or phrase.", "Yes")},
    ]  # fmt: skip
    (instruct / "llava_v1_5_mix665k.json").write_text(json.dumps(rows_665k, indent=1))
    rows_150k = [  # llava_instruct_150k.json: bare COCO file names, image_folder is coco/train2017
        {"id": "000000033471", "image": "000000033471.png", "conversations": _turns(
            "What are the colors of the bus in the image?\n<image>", "The bus in the image is white and red.",
            "What feature can be seen on the back of the bus?", "The back of the bus features an advertisement.")},
        {"id": "000000052846", "image": "000000052846.png", "conversations": _turns(
            "<image>\nWhere is the cat positioned in the image?", "The cat is on top of the back of the couch.")},
    ]  # fmt: skip
    _png(instruct / "coco/train2017/000000052846.png", (48, 64), (120, 90, 60))
    (instruct / "llava_instruct_150k.json").write_text(json.dumps(rows_150k, indent=1))
    return {"pretrain": pretrain, "instruct": instruct}


# ---- Vicuna: a tokenizer without a chat template, and the header's one-time fix -------------------------
def _header_snippet(name: str) -> str:
    """The `python - <<'EOF' ... EOF` block of a config header, as the user runs it."""
    lines = [line[1:].removeprefix("   ") for line in _header(name).splitlines()]
    start = next(i for i, line in enumerate(lines) if line.strip() == "python - <<'EOF'")
    end = next(i for i in range(start + 1, len(lines)) if lines[i].strip() == "EOF")
    return "\n".join(lines[start + 1 : end]) + "\n"


@pytest.fixture(scope="module")
def vicuna_like(tmp_path_factory) -> Path:
    """The tiny Llama with its chat template removed, like lmsys/vicuna-7b-v1.5 as downloaded."""
    from transformers import AutoTokenizer

    out = tmp_path_factory.mktemp("vicuna") / "vicuna-7b-v1.5"
    shutil.copytree(resolve_model_path("vlmkit-tiny/llama"), out)
    (out / "chat_template.jinja").unlink(missing_ok=True)
    config = json.loads((out / "tokenizer_config.json").read_text())
    config.pop("chat_template", None)
    (out / "tokenizer_config.json").write_text(json.dumps(config))
    assert AutoTokenizer.from_pretrained(out).chat_template is None
    return out


@pytest.fixture(scope="module")
def vicuna_with_template(vicuna_like, tmp_path_factory) -> Path:
    """`vicuna_like` after running the stage-1 header's one-time step on it (a copy, in a subprocess)."""
    out = tmp_path_factory.mktemp("vicuna_fixed") / "vicuna-7b-v1.5"
    shutil.copytree(vicuna_like, out)
    snippet = _header_snippet(STAGE1).replace('"checkpoints/vicuna-7b-v1.5"', repr(str(out)))
    assert repr(str(out)) in snippet, "the header's snippet no longer names checkpoints/vicuna-7b-v1.5"
    subprocess.run([sys.executable, "-"], input=snippet, text=True, check=True, timeout=120)
    return out


# ---- parsing and hyperparameters ------------------------------------------------------------------------
@pytest.mark.parametrize("name", list(CONFIG_CLASSES))
def test_config_parses_with_its_recipe_class_and_documents_its_launch(name):
    _load(name)  # unknown keys or wrong types raise ConfigError
    header = _header(name)
    assert "accelerate launch --config_file accelerate_configs/" in header
    assert f"recipes/{RECIPES[name]}.py --config recipes/configs/{name}.yaml" in header
    assert "https://huggingface.co/datasets/liuhaotian/" in header  # where the data come from


BATCH = re.compile(r"Global batch: (\d+) = (\d+) per device x (\d+) GPUs? x (\d+) accumulation", re.I)
ROLLOUT = re.compile(
    r"Rollout batch: (\d+) responses per PPO step = (\d+) per device x (\d+) accumulation x (\d+) mini-batches"
    r" x (\d+) GPU"
)


@pytest.mark.parametrize("name", [STAGE1, STAGE2, QLORA])
def test_documented_global_batch_is_what_the_fields_give(name):
    cfg = _load(name)
    total, per_device, gpus, accumulation = map(int, BATCH.search(_header(name)).groups())
    assert (cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps) == (per_device, accumulation)
    assert per_device * gpus * accumulation == total
    expected = {STAGE1: (256, 8), STAGE2: (128, 8), QLORA: (128, 1)}[name]
    assert (total, gpus) == expected
    if gpus > 1:
        assert f"--num_processes {gpus}" in _header(name)


def test_llava15_stage1_hyperparameters():
    cfg = _load(STAGE1)
    assert cfg.vision_tower == "openai/clip-vit-large-patch14-336"
    assert Path(cfg.language_model).name == "vicuna-7b-v1.5"  # the local copy of lmsys/vicuna-7b-v1.5
    assert "hf download lmsys/vicuna-7b-v1.5 --local-dir " + cfg.language_model in _header(STAGE1)
    assert (cfg.connector, cfg.feature_layer, cfg.drop_cls_token) == ("mlp2x_gelu", -2, True)
    assert cfg.model_name_or_path is None and cfg.pretrain_connector is None
    assert Path(cfg.data_path).name == "blip_laion_cc_sbu_558k.json" and cfg.image_folder
    assert (cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio) == (1e-3, 0.0, 0.03)
    assert (cfg.lr_scheduler_type, cfg.num_train_epochs, cfg.max_steps) == ("cosine", 1.0, -1)
    assert (cfg.max_length, cfg.mixed_precision, cfg.gradient_checkpointing) == (2048, "bf16", True)


def test_llava15_stage2_hyperparameters():
    cfg, stage1 = _load(STAGE2), _load(STAGE1)
    assert cfg.model_name_or_path == stage1.output_dir  # starts from the stage-1 output
    assert "--config_file accelerate_configs/deepspeed_zero3.yaml" in _header(STAGE2)
    assert Path(cfg.data_path).name == "llava_v1_5_mix665k.json"
    assert (cfg.learning_rate, cfg.weight_decay, cfg.warmup_ratio) == (2e-5, 0.0, 0.03)
    assert (cfg.lr_scheduler_type, cfg.num_train_epochs, cfg.max_steps) == ("cosine", 1.0, -1)
    assert (cfg.max_length, cfg.mixed_precision, cfg.gradient_checkpointing) == (2048, "bf16", True)
    assert not cfg.use_lora and not cfg.load_in_4bit and not cfg.tune_encoder
    assert cfg.connector_learning_rate is None  # LLaVA: connector and LLM at the same rate


def test_qlora_hyperparameters_and_its_memory_estimate():
    cfg = _load(QLORA)
    assert cfg.vision_tower == "google/siglip-so400m-patch14-384"
    assert cfg.language_model == "Qwen/Qwen2.5-0.5B-Instruct"
    assert (cfg.connector, cfg.feature_layer) == ("mlp2x_gelu", -2)
    assert (cfg.use_lora, cfg.load_in_4bit, cfg.lora_r, cfg.lora_alpha) == (True, True, 64, 128)
    assert Path(cfg.data_path).name == "llava_v1_5_mix665k.json"
    assert (cfg.mixed_precision, cfg.gradient_checkpointing, cfg.max_length) == ("bf16", True, 2048)
    assert "accelerate_configs/single_gpu.yaml" in _header(QLORA)
    # The header's estimate, recomputed for the config's batch: ~13 GiB, inside a 24 GB card.
    estimate = estimate_finetune_memory(
        0.494e9, "qlora", hidden_size=896, intermediate_size=4864, num_layers=24, vocab_size=151936,
        lora_r=cfg.lora_r, encoder_params=428e6, batch_size=cfg.per_device_train_batch_size,
        seq_len=cfg.max_length, gradient_checkpointing=cfg.gradient_checkpointing,
    )  # fmt: skip
    assert 12.0 < estimate.total_gib < 14.0 and "~13 GiB at batch 4" in _header(QLORA)


def test_ppo_defaults():
    cfg = _load(PPO)
    assert cfg.model_name_or_path == _load(STAGE2).output_dir  # policy: the stage-2 output
    assert cfg.reward_model_name_or_path.endswith("reward_model") and cfg.reward_funcs == []
    assert (cfg.cliprange, cfg.cliprange_value, cfg.gamma, cfg.lam) == (0.2, 0.2, 1.0, 0.95)
    assert (cfg.kl_controller, cfg.kl_estimator, cfg.init_kl_coef) == ("adaptive", "k1", 0.2)
    assert (cfg.kl_target, cfg.kl_horizon) == (6.0, 10000)
    assert (cfg.temperature, cfg.top_p, cfg.whiten_advantages, cfg.vf_coef) == (1.0, 1.0, True, 0.1)
    assert (cfg.num_ppo_epochs, cfg.use_lora, cfg.mixed_precision) == (4, True, "bf16")
    total, per_device, accumulation, mini_batches, gpus = map(int, ROLLOUT.search(_header(PPO)).groups())
    assert (per_device, accumulation, mini_batches) == (
        cfg.per_device_train_batch_size, cfg.gradient_accumulation_steps, cfg.num_mini_batches,
    )  # fmt: skip
    assert cfg.rollout_batch_size * gpus == total == 64
    # The ZeRO-3 variant in the header keeps the same rollout batch.
    zero3 = next(
        line for line in _header(PPO).splitlines() if "launch --config_file accelerate_configs/deep" in line
    )
    args = zero3.split("recipes/ppo.py", 1)[1].split()
    full = _load(PPO, *args[2:])
    assert not full.use_lora and full.rollout_batch_size * 8 == total and "--num_processes 8" in zero3


# ---- the models, built with tiny stand-in weights --------------------------------------------------------
@pytest.mark.slow
def test_vicuna_without_a_chat_template_is_refused_and_the_header_step_fixes_it(
    vicuna_like, vicuna_with_template, data
):
    from vlmkit.models.build import build_vlm

    tiny_clip = ["--vision_tower", "vlmkit-tiny/clip-vision"]
    with pytest.raises(ValueError, match="no chat template"):
        build_vlm(_load(STAGE1, *tiny_clip, "--language_model", str(vicuna_like)))
    cfg = _load(
        STAGE1, *tiny_clip, "--language_model", str(vicuna_with_template),
        "--data_path", str(data["pretrain"] / "blip_laion_cc_sbu_558k.json"),
        "--image_folder", str(data["pretrain"] / "images"),
    )  # fmt: skip
    _, processor = build_vlm(cfg)
    tok = processor.tokenizer
    messages = [{"role": "user", "content": "<image>\nWhat is it?"}]
    messages.append({"role": "assistant", "content": "A bus."})
    assert tok.apply_chat_template(messages, tokenize=False).endswith(
        "human's questions. USER: <image>\nWhat is it? ASSISTANT: A bus." + tok.eos_token
    )
    # LLaVA-Pretrain rows through the recipe's dataset path: only the caption (and EOS) is supervised.
    skips = SkipCounter()
    ds = sft_dataset(cfg, cfg.data_path, processor, skips)
    assert skips.total == 0 and len(ds) == len(CAPTIONS)
    for item, caption in zip(ds.items, CAPTIONS):
        supervised = tok.decode([t for t in item.labels if t != IGNORE_INDEX])
        assert supervised.strip() == caption + tok.eos_token
        assert item.input_ids.count(tok.convert_tokens_to_ids("<image>")) == processor.spec.num_media_tokens


@pytest.fixture(scope="module")
def stage1_run(recipe, vicuna_with_template, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("llava15_stage1")
    metrics = recipe(RECIPES[STAGE1]).main(
        ["--config", str(CONFIGS / f"{STAGE1}.yaml"), "--vision_tower", "vlmkit-tiny/clip-vision",
         "--language_model", str(vicuna_with_template),
         "--data_path", str(data["pretrain"] / "blip_laion_cc_sbu_558k.json"),
         "--image_folder", str(data["pretrain"] / "images"), "--output_dir", str(out),
         "--per_device_train_batch_size", "3", *CPU_RUN]
    )  # fmt: skip
    return out, metrics


def _safetensors(directory: Path) -> dict[str, torch.Tensor]:
    tensors = {}
    for f in sorted(directory.glob("*.safetensors")):
        tensors.update(load_file(str(f)))
    return tensors


@pytest.mark.slow
def test_llava15_stage1_builds_and_trains_only_the_connector(stage1_run, vicuna_with_template):
    out, metrics = stage1_run
    assert metrics["global_step"] == 1 and metrics.get("skipped_samples", 0) == 0
    vlm_config = json.loads((out / "vlmkit_config.json").read_text())
    assert vlm_config["connector"] == "mlp2x_gelu"
    assert (vlm_config["feature_layer"], vlm_config["drop_cls_token"]) == (-2, True)
    assert vlm_config["num_media_tokens"] == 16  # tiny CLIP: 4x4 patches, CLS dropped (CLIP-L/336: 576)
    # Frozen encoder and LLM: after a step at lr 1e-3 their saved weights equal the ones they started from.
    for start, saved in (
        (vicuna_with_template, "language_model"),
        (resolve_model_path("vlmkit-tiny/clip-vision"), "encoder"),
    ):
        before, after = _safetensors(Path(start)), _safetensors(out / saved)
        assert before.keys() <= after.keys()
        assert all(torch.equal(before[k], after[k]) for k in before), saved
    resolved = yaml.safe_load((out / "config.yaml").read_text())
    assert (resolved["learning_rate"], resolved["gradient_checkpointing"]) == (1e-3, True)


@pytest.fixture(scope="module")
def stage2_run(recipe, stage1_run, data, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("llava15_stage2")
    metrics = recipe(RECIPES[STAGE2]).main(
        ["--config", str(CONFIGS / f"{STAGE2}.yaml"), "--model_name_or_path", str(stage1_run[0]),
         "--data_path", str(data["instruct"] / "llava_v1_5_mix665k.json"),
         "--image_folder", str(data["instruct"]), "--output_dir", str(out),
         "--per_device_train_batch_size", "2", *CPU_RUN]
    )  # fmt: skip
    return out, metrics


@pytest.mark.slow
def test_llava15_stage2_reads_the_665k_mix_and_trains_from_stage1(stage2_run, data):
    out, metrics = stage2_run
    assert metrics["global_step"] == 1 and metrics.get("skipped_samples", 0) == 0
    assert (out / "language_model" / "config.json").is_file()  # full fine-tuning: the whole LLM is saved
    assert not (out / "language_model" / "adapter_config.json").exists()
    # The mix's rows, through the recipe's dataset path: the text-only row keeps no media; every answer of the
    # multi-turn row is supervised.
    cfg = _load(STAGE2, "--data_path", str(data["instruct"] / "llava_v1_5_mix665k.json"),
                "--image_folder", str(data["instruct"]))  # fmt: skip
    processor = VLMProcessor.from_pretrained(out)
    skips = SkipCounter()
    ds = sft_dataset(cfg, cfg.data_path, processor, skips)
    assert skips.total == 0 and [len(it.media) for it in ds.items] == [1, 0, 1, 1]
    supervised = processor.tokenizer.decode([t for t in ds.items[0].labels if t != IGNORE_INDEX])
    assert "white and red." in supervised and "an advertisement." in supervised
    assert "What feature" not in supervised


@pytest.mark.slow
def test_qlora_config_builds_a_4bit_lora_model_and_trains(recipe, data, tmp_path):
    from vlmkit.models.build import build_vlm

    parts = ["--vision_tower", "vlmkit-tiny/siglip-vision", "--language_model", "vlmkit-tiny/qwen2"]
    cfg = _load(QLORA, *parts)
    if importlib.util.find_spec("bitsandbytes") is None:  # then the 4-bit path must say what is missing
        with pytest.raises(RuntimeError, match="needs bitsandbytes"):
            build_vlm(cfg, cfg)
        parts += ["--load_in_4bit", "false"]  # and everything else in the config still runs
        cfg = _load(QLORA, *parts)
    # load_in_4bit as shipped: bitsandbytes' nf4 also runs on a CPU (bitsandbytes >= 0.45 has CPU kernels).
    model, processor = build_vlm(cfg, cfg)
    base = model.language_model.get_base_model()
    assert getattr(base, "is_loaded_in_4bit", False) == cfg.load_in_4bit
    if cfg.load_in_4bit:
        assert base.config.quantization_config.bnb_4bit_quant_type == "nf4"
    lora = model.language_model.peft_config["default"]
    assert (lora.r, lora.lora_alpha) == (64, 128)
    assert (model.config.connector, model.config.feature_layer) == ("mlp2x_gelu", -2)
    assert processor.spec.num_media_tokens == 16  # tiny SigLIP: 4x4 patches, no CLS (so400m/14-384: 729)
    del model

    out = tmp_path / "qlora"
    metrics = recipe(RECIPES[QLORA]).main(
        ["--config", str(CONFIGS / f"{QLORA}.yaml"), *parts,
         "--data_path", str(data["instruct"] / "llava_v1_5_mix665k.json"), "--image_folder", str(data["instruct"]),
         "--output_dir", str(out), "--per_device_train_batch_size", "2", "--gradient_accumulation_steps", "2",
         *CPU_RUN]
    )  # fmt: skip
    assert metrics["global_step"] == 1 and metrics.get("skipped_samples", 0) == 0
    adapter = json.loads((out / "language_model" / "adapter_config.json").read_text())
    assert (adapter["r"], adapter["lora_alpha"]) == (64, 128)


@pytest.fixture(scope="module")
def reward_model_dir(stage2_run, tmp_path_factory) -> Path:
    """A stage-3 layout on the tiny stage-2 model (a fresh score head stands in for a trained one)."""
    from vlmkit.models.vlm import VLM
    from vlmkit.rlhf.reward_model import RewardModel

    out = tmp_path_factory.mktemp("reward_model")
    RewardModel(VLM.from_pretrained(stage2_run[0])).save_pretrained(out)
    VLMProcessor.from_pretrained(stage2_run[0]).save_pretrained(out)
    return out


@pytest.mark.slow
def test_ppo_config_runs_on_the_stage2_policy_with_a_reward_model(
    recipe, stage2_run, reward_model_dir, data, tmp_path
):
    cfg = _load(PPO, "--data_path", str(data["instruct"] / "llava_instruct_150k.json"),
                "--image_folder", str(data["instruct"] / "coco" / "train2017"))  # fmt: skip
    # LLaVA-Instruct rows through the PPO recipe's reader: the conversation up to the last answer is the prompt.
    processor = VLMProcessor.from_pretrained(stage2_run[0])
    prompts = read_samples(cfg, cfg.data_path)
    ids, reference = tokenize_prompt(
        prompts[0], processor.tokenizer, modality="image", num_media_tokens=processor.spec.num_media_tokens
    )
    assert reference == "The back of the bus features an advertisement."
    assert "white and red" in processor.tokenizer.decode(ids)  # the earlier turns stay in the prompt

    out = tmp_path / "ppo"
    metrics = recipe(RECIPES[PPO]).main(
        ["--config", str(CONFIGS / f"{PPO}.yaml"), "--model_name_or_path", str(stage2_run[0]),
         "--reward_model_name_or_path", str(reward_model_dir), "--data_path", cfg.data_path,
         "--image_folder", cfg.image_folder, "--output_dir", str(out),
         "--per_device_train_batch_size", "1", "--gradient_accumulation_steps", "1", "--num_mini_batches", "2",
         "--max_new_tokens", "4", *RL_CPU_RUN]
    )  # fmt: skip
    assert metrics["global_step"] == 1
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log and log[-1]["kl_coef"] == pytest.approx(0.2, rel=0.01)  # adaptive, starting from init_kl_coef
    assert json.loads((out / "language_model" / "adapter_config.json").read_text())["r"] == 64
