"""Fixtures for the Hub tests: an isolated Hugging Face home and a recording Hub server."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest
from huggingface_hub import constants

from tests.helpers.recording_hub import RecordingHub

FAKE_TOKEN = "hf_" + "TestTokenDoNotLeak0123456789abcd"


@pytest.fixture
def hf_home(tmp_path, monkeypatch) -> Path:
    """No token anywhere, online mode, and a HF_HOME under tmp_path (the real ~/.cache/huggingface is never read).

    huggingface_hub reads HF_HOME / HF_HUB_OFFLINE at import time, so its constants are patched as well.
    """
    home = tmp_path / "hf_home"
    home.mkdir()
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    for name in (
        "HF_TOKEN",
        "HUGGING_FACE_HUB_TOKEN",
        "HF_HUB_OFFLINE",
        "TRANSFORMERS_OFFLINE",
        "HF_OIDC_RESOURCE",
    ):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    return home


@pytest.fixture
def fake_token() -> str:
    return FAKE_TOKEN


@pytest.fixture
def recording_hub(hf_home, caplog):
    """A running `RecordingHub` that accepts `FAKE_TOKEN`; all logging is captured at DEBUG level."""
    caplog.set_level(logging.DEBUG)
    with RecordingHub(token=FAKE_TOKEN) as hub:
        yield hub
