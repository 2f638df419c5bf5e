"""Stage 2 with --use_lora --push_to_hub against a recording Hub server: what is uploaded, and where the token is.

The server (tests/helpers/recording_hub.py) answers the real huggingface_hub client on 127.0.0.1 and records every
request; HF_ENDPOINT points the recipe at it and HF_TOKEN holds a planted token.
"""

from __future__ import annotations

import time
from pathlib import Path

import pytest
import yaml
from huggingface_hub import constants

from tests.helpers.recording_hub import RecordingHub
from vlmkit.hub.push import HubAccessError

REPO_ROOT = Path(__file__).resolve().parents[2]
TOKEN = "hf_" + "RecipePlantedToken0123456789xyz"
REPO = "tester/digits-llava-lora"


@pytest.fixture
def hub_env(tmp_path, monkeypatch):
    """An isolated HF home, the planted token in HF_TOKEN, online mode."""
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in ("HUGGING_FACE_HUB_TOKEN", "HF_HUB_OFFLINE", "TRANSFORMERS_OFFLINE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    return monkeypatch


def stage2_argv(out: Path, *extra: str) -> list[str]:
    return [
        "--config", str(REPO_ROOT / "recipes" / "configs" / "digits_llava_stage2.yaml"),
        "--model_name_or_path", "none", "--vision_tower", "vlmkit-tiny/clip-vision",
        "--language_model", "vlmkit-tiny/llama", "--use_lora", "true", "--lora_r", "4",
        "--max_steps", "3", "--logging_steps", "1", "--per_device_train_batch_size", "4",
        "--eval_data_path", "none", "--report_to", "none", "--output_dir", str(out), *extra,
    ]  # fmt: skip


@pytest.mark.slow
def test_stage2_lora_pushes_adapter_card_and_config_and_never_leaks_the_token(
    recipe, hub_env, tmp_path, capfd
):
    stage2 = recipe("llava_stage2")
    out = tmp_path / "run"
    with RecordingHub(token=TOKEN) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        stage2.main(
            stage2_argv(out, "--push_to_hub", "true", "--hub_model_id", REPO, "--hub_private", "true")
        )

    # Access was checked before the repository was created and the files committed.
    paths = [r.path.split("?")[0] for r in hub.requests]
    assert paths[0] == "/api/whoami-v2"
    (create,) = hub.find("POST", "/api/repos/create")
    assert create.json()["name"] == "digits-llava-lora" and create.json()["organization"] == "tester"
    assert create.json()["visibility"] == "private"

    committed = hub.committed_files()
    for name in ("README.md", "config.yaml", "vlmkit_config.json", "connector.safetensors",
                 "language_model/adapter_config.json", "language_model/adapter_model.safetensors",
                 "tokenizer.json", "metrics.json"):  # fmt: skip
        assert name in committed, sorted(committed)
    assert (
        committed["language_model/adapter_model.safetensors"]
        == (out / "language_model" / "adapter_model.safetensors").read_bytes()
    )
    assert not [p for p in committed if p.startswith("encoder/") or p.endswith("model.safetensors")
                and not p.endswith("adapter_model.safetensors")]  # fmt: skip
    card = committed["README.md"].decode()
    assert card.startswith("---\n") and "library_name: peft" in card and REPO in card

    # The token is sent in the authorization header only: not in paths, bodies, other headers, files or output.
    for req in hub.requests:
        assert req.headers.get("authorization") == f"Bearer {TOKEN}", req.path
        assert TOKEN not in req.path and TOKEN.encode() not in req.body
        assert TOKEN not in str({k: v for k, v in req.headers.items() if k != "authorization"})
    for path in out.rglob("*"):
        if path.is_file():
            assert TOKEN.encode() not in path.read_bytes(), path
    captured = capfd.readouterr()
    assert "stage instruct" in captured.err  # the run's log lines were captured ...
    assert TOKEN not in captured.out + captured.err  # ... and hold no token


def test_offline_push_fails_before_training(recipe, hub_env, tmp_path):
    hub_env.setenv("HF_HUB_OFFLINE", "1")
    stage2 = recipe("llava_stage2")
    out = tmp_path / "run"
    start = time.monotonic()
    with pytest.raises(HubAccessError, match="HF_HUB_OFFLINE"):
        stage2.main(stage2_argv(out, "--push_to_hub", "true", "--hub_model_id", REPO))
    assert time.monotonic() - start < 5.0
    assert not (out / "train_log.jsonl").exists()
    assert not (out / "language_model").exists()


def test_push_without_repo_id_is_refused_before_training(recipe, hub_env, tmp_path):
    stage2 = recipe("llava_stage2")
    with pytest.raises(ValueError, match="--hub_model_id"):
        stage2.main(stage2_argv(tmp_path / "run", "--push_to_hub", "true"))
    assert not (tmp_path / "run" / "train_log.jsonl").exists()


@pytest.mark.slow
def test_native_vlm_lora_pushes_an_adapter_that_loads_with_plain_peft(recipe, hub_env, digits_data, tmp_path):
    """A Qwen2-VL stand-in with LoRA: the pushed repository is a peft adapter with the processor files and a card
    naming its base model; what was uploaded loads with PeftModel onto the base and gives the run's model."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForImageTextToText

    from vlmkit.models.native.tiny import build_tiny_native

    base = build_tiny_native("qwen2_vl")
    out = tmp_path / "run"
    argv = [
        "--model_name_or_path", "vlmkit-tiny/native-qwen2_vl", "--use_lora", "true", "--lora_r", "4",
        "--data_path", "vlmkit-data/digits/stage2_train.json", "--eval_data_path", "none", "--max_steps", "2",
        "--per_device_train_batch_size", "4", "--learning_rate", "1e-2", "--report_to", "none",
        "--output_dir", str(out), "--push_to_hub", "true", "--hub_model_id", "tester/qwen2-vl-digits-lora",
    ]  # fmt: skip
    with RecordingHub(token=TOKEN) as hub:
        hub_env.setenv("HF_ENDPOINT", hub.url)
        recipe("llava_stage2").main(argv)

    committed = hub.committed_files()
    for name in ("README.md", "adapter_config.json", "adapter_model.safetensors", "chat_template.jinja",
                 "processor_config.json", "tokenizer.json", "tokenizer_config.json", "metrics.json"):  # fmt: skip
        assert name in committed, sorted(committed)
    assert not [p for p in committed if p.endswith("model.safetensors") and p != "adapter_model.safetensors"]
    card = yaml.safe_load(committed["README.md"].decode().split("---")[1])
    assert card["library_name"] == "peft" and card["pipeline_tag"] == "image-text-to-text"
    assert card["base_model"] == "vlmkit-tiny/native-qwen2_vl"  # the name the user passed
    downloaded = tmp_path / "downloaded"
    for name, data in committed.items():
        (downloaded / name).parent.mkdir(parents=True, exist_ok=True)
        (downloaded / name).write_bytes(data)
    pushed = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), downloaded).eval()
    saved = PeftModel.from_pretrained(AutoModelForImageTextToText.from_pretrained(base), out).eval()
    ids = torch.tensor([[1, 2, 3, 4, 5]])
    with torch.no_grad():
        assert torch.equal(pushed(input_ids=ids).logits, saved(input_ids=ids).logits)
        plain = AutoModelForImageTextToText.from_pretrained(base).eval()(input_ids=ids).logits
    assert not torch.allclose(pushed(input_ids=ids).logits, plain)  # the adapter is trained, not a no-op
    for req in hub.requests:
        assert TOKEN not in req.path and TOKEN.encode() not in req.body
