"""Stage 0 wav2vec2 on the embedded spoken digits: the run contract and held-out learning."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
import yaml

pytestmark = pytest.mark.slow  # every test here trains a recipe (tens of seconds)

CONFIG = str(Path(__file__).resolve().parents[2] / "recipes" / "configs" / "spoken_digits_wav2vec2.yaml")
# Half the shipped schedule (the temperature decays twice as fast), enough for a clear probe gap.
FAST = ["--max_steps", "150", "--gumbel_temperature_decay", "0.99", "--logging_steps", "10"]


@pytest.fixture(scope="module")
def pretrained(recipe, tmp_path_factory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("wav2vec2")
    metrics = recipe("wav2vec2_pretrain").main(
        ["--config", CONFIG, "--output_dir", str(out), "--report_to", "none", *FAST]
    )
    return out, metrics


def test_pretraining_beats_random_init_on_a_held_out_accent(pretrained):
    out, metrics = pretrained
    assert json.loads((out / "metrics.json").read_text()) == metrics
    # Linear probe on mean-pooled features, trained on 7 accents, tested on the unheard one; chance is 10%.
    gap = metrics["eval_linear_probe_accuracy"] - metrics["eval_linear_probe_accuracy_random_init"]
    assert gap >= 0.10, metrics
    assert metrics["eval_linear_probe_accuracy"] >= 0.5, metrics
    # No codebook collapse: well above G = 2 (one codeword per group) on held-out audio.
    assert metrics["eval_codebook_perplexity"] >= 0.25 * metrics["eval_codebook_size"], metrics
    assert metrics["train_contrastive_loss_end"] < 0.9 * metrics["train_contrastive_loss_start"], metrics


def test_train_log_has_the_objective_terms_and_the_schedule(pretrained):
    out, metrics = pretrained
    log = [json.loads(line) for line in (out / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == metrics["global_step"] == 150
    keys = ("contrastive_loss", "diversity_loss", "codebook_perplexity", "gumbel_temperature")
    assert all(all(k in r for k in keys) for r in log), log[0]
    temps = [r["gumbel_temperature"] for r in log]
    assert temps[0] == 2.0 and temps == sorted(temps, reverse=True) and temps[-1] == pytest.approx(0.5)
    for name in ("config.yaml", "loss.png", "README.md", "model.safetensors", "preprocessor_config.json"):
        assert (out / name).is_file(), name
    assert yaml.safe_load((out / "config.yaml").read_text())["max_steps"] == 150
    assert "eval_linear_probe_accuracy" in (out / "README.md").read_text()


def test_output_is_an_audio_tower_with_the_trained_weights(pretrained):
    from transformers import Wav2Vec2ForPreTraining

    from vlmkit.models.encoders import load_encoder, num_encoder_tokens

    out, _ = pretrained
    encoder = load_encoder(str(out))
    full = Wav2Vec2ForPreTraining.from_pretrained(out)
    for key, value in encoder.state_dict().items():
        assert torch.equal(value, full.wav2vec2.state_dict()[key]), key
    assert num_encoder_tokens(encoder, 16000) == 49  # 20 ms frames
