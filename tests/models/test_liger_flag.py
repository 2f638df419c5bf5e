"""`--use_liger_kernel` is GPU-only: off on a CPU with a clear message, never an error."""

import logging
from types import SimpleNamespace

import pytest
import torch

from vlmkit.config.recipes import Stage2Config
from vlmkit.models.build import apply_liger_kernel


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the CPU fallback")
def test_liger_is_skipped_on_cpu_with_a_message(caplog):
    model = SimpleNamespace(language_model=torch.nn.Linear(2, 2))
    with caplog.at_level(logging.WARNING, logger="vlmkit.models.build"):
        assert apply_liger_kernel(model) is False
    assert "need a CUDA GPU" in caplog.text


def test_flag_is_a_config_field_off_by_default():
    assert Stage2Config().use_liger_kernel is False
