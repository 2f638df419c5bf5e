"""Model card rendering and secret scrubbing."""

from __future__ import annotations

import pytest
import yaml

from vlmkit.hub.model_card import render_model_card, scrub_secrets, write_model_card


def card_kwargs(**overrides) -> dict:
    kwargs = dict(
        title="digits-llava-sft",
        base_encoder="openai/clip-vit-base-patch32",
        base_language_model="HuggingFaceTB/SmolLM2-135M-Instruct",
        connector="mlp2x_gelu",
        stage="sft",
        parent_checkpoint="outputs/digits_stage1",
        data={"name": "digits", "fingerprint": "sha256:0f3a9c", "train_records": 1437, "eval_records": 360},
        metrics={"eval_accuracy": 0.96875, "eval_loss": 0.1234567},
        lineage=[
            {"stage": "clip", "checkpoint": "outputs/digits_clip", "eval_zero_shot_accuracy": 0.96},
            {"stage": "connector", "checkpoint": "outputs/digits_stage1"},
        ],
        usage="from vlmkit.models import VlmForCausalLM\nmodel = VlmForCausalLM.from_pretrained('out')",
    )
    kwargs.update(overrides)
    return kwargs


def split_front_matter(card: str) -> tuple[dict, str]:
    assert card.startswith("---\n")
    _, meta, body = card.split("---\n", 2)
    return yaml.safe_load(meta), body


def test_front_matter_is_valid_hub_metadata():
    meta, _ = split_front_matter(render_model_card(**card_kwargs()))
    assert meta["library_name"] == "vlmkit"
    assert meta["license"] == "apache-2.0"
    assert meta["base_model"] == ["HuggingFaceTB/SmolLM2-135M-Instruct", "openai/clip-vit-base-patch32"]
    assert meta["tags"] == ["vlmkit", "multimodal", "sft"]


def test_adapter_card_is_a_peft_card_and_local_bases_are_not_listed_as_hub_models():
    card = render_model_card(
        **card_kwargs(
            base_encoder="tiny-clip (random init)", base_language_model="HuggingFaceTB/SmolLM2-135M"
        ),
        is_adapter=True,
        license="mit",
        tags=("vlmkit",),
        pipeline_tag="image-text-to-text",
    )
    meta, body = split_front_matter(card)
    assert meta["library_name"] == "peft"
    assert meta["base_model"] == "HuggingFaceTB/SmolLM2-135M"
    assert meta["license"] == "mit"
    assert meta["tags"] == ["vlmkit", "sft", "lora"]
    assert meta["pipeline_tag"] == "image-text-to-text"
    assert "PEFT adapter" in body


def test_body_has_all_sections_in_order_with_data_lineage_and_metrics():
    _, body = split_front_matter(render_model_card(**card_kwargs()))
    headings = [line for line in body.splitlines() if line.startswith("## ")]
    assert headings == [
        "## Model description",
        "## Training data",
        "## Lineage",
        "## Metrics",
        "## How to load",
        "## Limitations",
    ]
    assert "`sha256:0f3a9c`" in body
    assert "- **train_records:** 1437" in body
    assert "1. **clip** — `outputs/digits_clip` (eval_zero_shot_accuracy=0.96)" in body
    assert "2. **connector** — `outputs/digits_stage1`" in body
    assert "| eval_accuracy | 0.9688 |" in body
    assert "| eval_loss | 0.1235 |" in body
    assert "```python\nfrom vlmkit.models import VlmForCausalLM\n" in body
    assert "| parent checkpoint | `outputs/digits_stage1` |" in body


def test_empty_lineage_metrics_and_missing_fingerprint_are_stated():
    card = render_model_card(
        **card_kwargs(lineage=[], metrics={}, data={"name": "digits"}, parent_checkpoint=None)
    )
    assert "first stage of its chain" in card
    assert "No held-out metrics" in card
    assert "**Data fingerprint:** not recorded" in card
    assert "| parent checkpoint | `none` |" in card


def test_scrub_secrets_removes_hub_tokens_env_token_and_given_secrets(monkeypatch):
    env_token = "my-custom-env-secret-value"
    monkeypatch.setenv("HF_TOKEN", env_token)
    hub_token = "hf_" + "a1B2c3D4e5F6g7H8i9J0kLmN"
    text = f"token={hub_token} env={env_token} pw=s3cret keep=hf_short sha=0f3a9c"
    scrubbed = scrub_secrets(text, ["s3cret", None, ""])
    assert hub_token not in scrubbed and env_token not in scrubbed and "s3cret" not in scrubbed
    assert scrubbed == "token=<redacted> env=<redacted> pw=<redacted> keep=hf_short sha=0f3a9c"


def test_card_never_contains_tokens(monkeypatch):
    env_token = "hf_" + "EnvironmentToken12345678"
    monkeypatch.setenv("HF_TOKEN", env_token)
    leaked = "hf_" + "PastedIntoConfig98765432"
    card = render_model_card(
        **card_kwargs(
            data={"name": "digits", "fingerprint": "sha256:0f3a9c", "hub_token": leaked},
            usage=f"model = load('out', token='{env_token}')",
        )
    )
    assert leaked not in card and env_token not in card
    assert "<redacted>" in card
    split_front_matter(card)  # still well-formed


def test_write_model_card_writes_readme(tmp_path):
    path = write_model_card(tmp_path, **card_kwargs())
    assert path == tmp_path / "README.md"
    assert path.read_text() == render_model_card(**card_kwargs())
    assert sorted(p.name for p in tmp_path.iterdir()) == ["README.md"]  # no temporary file left behind


def test_write_model_card_requires_existing_directory(tmp_path):
    with pytest.raises(FileNotFoundError, match="save the model there first"):
        write_model_card(tmp_path / "missing", **card_kwargs())
