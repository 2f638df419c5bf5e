"""Tiny native VLM stand-ins, built once per test session (under the session's VLMKIT_TINY_DIR)."""

from __future__ import annotations

import pytest

from vlmkit.models.native.loading import load_native_vlm
from vlmkit.models.native.tiny import build_tiny_native

_LOADED: dict = {}


@pytest.fixture(scope="session")
def native_vlm():
    """`native_vlm(family)` -> (model, processor, directory), loaded once per family per session."""

    def get(family: str):
        if family not in _LOADED:
            path = build_tiny_native(family)
            _LOADED[family] = (*load_native_vlm(path), path)
        return _LOADED[family]

    return get
