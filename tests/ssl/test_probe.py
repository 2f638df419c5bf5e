"""Tests for vlmkit.ssl.probe.linear_probe_accuracy."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from vlmkit.ssl.probe import linear_probe_accuracy


def _blobs(rng: np.random.Generator, n: int, labels: np.ndarray) -> np.ndarray:
    # class k sits at 5 * e_k (plus a large constant offset and scale the probe must standardise away)
    centers = 5.0 * np.eye(4, 16)
    return 1000.0 + 50.0 * (centers[labels] + rng.normal(size=(n, 16)))


def test_probe_separates_separable_features():
    rng = np.random.default_rng(0)
    y_train, y_test = rng.integers(0, 4, 200), rng.integers(0, 4, 100)
    x_train, x_test = _blobs(rng, 200, y_train), _blobs(rng, 100, y_test)
    acc = linear_probe_accuracy(torch.tensor(x_train), torch.tensor(y_train), x_test, y_test)
    assert acc > 0.95


def test_probe_is_near_chance_on_random_labels():
    rng = np.random.default_rng(1)
    x_train, x_test = rng.normal(size=(200, 16)), rng.normal(size=(400, 16))
    y_train, y_test = rng.integers(0, 4, 200), rng.integers(0, 4, 400)
    acc = linear_probe_accuracy(x_train, y_train, x_test, y_test)
    assert 0.1 < acc < 0.4  # chance is 0.25


def test_probe_is_deterministic_and_validates():
    rng = np.random.default_rng(2)
    y = rng.integers(0, 3, 60)
    x = rng.normal(size=(60, 5)) + y[:, None]
    assert linear_probe_accuracy(x, y, x, y, seed=3) == linear_probe_accuracy(x, y, x, y, seed=3)
    with pytest.raises(ValueError, match="disagree in length"):
        linear_probe_accuracy(x, y[:-1], x, y)
    with pytest.raises(ValueError, match="single class"):
        linear_probe_accuracy(x, np.zeros(60), x, y)
