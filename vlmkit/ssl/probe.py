"""Linear-probe evaluation of frozen encoder features (MAE, wav2vec2, CLIP image towers)."""

from __future__ import annotations

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler

__all__ = ["linear_probe_accuracy"]

ArrayLike = np.ndarray | torch.Tensor


def _to_numpy(x: ArrayLike, name: str, ndim: int) -> np.ndarray:
    array = x.detach().cpu().float().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if array.ndim != ndim:
        raise ValueError(f"{name} must have {ndim} dimension(s), got shape {array.shape}.")
    return array


def linear_probe_accuracy(
    train_features: ArrayLike,
    train_labels: ArrayLike,
    test_features: ArrayLike,
    test_labels: ArrayLike,
    seed: int = 0,
    max_iter: int = 2000,
    c: float = 1.0,
) -> float:
    """Test accuracy of a logistic-regression probe trained on frozen features.

    Features are standardised with statistics of the training split only, then a multinomial
    L2-regularised logistic regression (inverse strength ``c``) is fit.

    Args:
        train_features: (N, D) array or tensor; train_labels: (N,) integer classes.
        test_features: (M, D); test_labels: (M,).
        seed: random state of the solver.
        max_iter: solver iterations.

    Returns:
        Accuracy on the test split, in [0, 1].
    """
    x_train = _to_numpy(train_features, "train_features", 2)
    x_test = _to_numpy(test_features, "test_features", 2)
    y_train = _to_numpy(train_labels, "train_labels", 1)
    y_test = _to_numpy(test_labels, "test_labels", 1)
    if x_train.shape[0] != y_train.shape[0] or x_test.shape[0] != y_test.shape[0]:
        raise ValueError(
            f"features and labels disagree in length: train {x_train.shape[0]} vs {y_train.shape[0]}, "
            f"test {x_test.shape[0]} vs {y_test.shape[0]}."
        )
    if x_train.shape[1] != x_test.shape[1]:
        raise ValueError(f"train and test feature widths differ: {x_train.shape[1]} vs {x_test.shape[1]}.")
    if np.unique(y_train).size < 2:
        raise ValueError("train_labels hold a single class; a probe needs at least two.")
    probe = make_pipeline(StandardScaler(), LogisticRegression(C=c, max_iter=max_iter, random_state=seed))
    probe.fit(x_train, y_train)
    return float(probe.score(x_test, y_test))
