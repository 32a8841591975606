"""Checkpoint selection: the per-epoch val metrics, ordered predictions, the kept-epoch summary."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.training.config import SELECT_METRICS, TrainConfig
from skin_tf.training.selection import predict_probs, selection_summary, validation_logs


def test_validation_logs():
    from skin_tf.models.losses import build_loss

    labels = np.array([4, 4, 5, 5])
    probs = np.full((4, 7), 0.01)
    probs[[0, 1, 2, 3], [4, 5, 5, 5]] = 0.94  # one melanoma missed
    logs = validation_logs(labels, probs, build_loss())
    assert set(logs) == set(SELECT_METRICS)  # every metric a config may select by is logged
    assert logs["val_acc"] == 0.75
    assert logs["val_mel_recall"] == 0.5
    # P(mel) is 0.94 and 0.01 for the two melanomas, 0.01 for both nevi: reaching both
    # melanomas flags every lesion, so no threshold reaches 0.85 and the score is 0.
    assert logs["val_mel_spec_at_sens85"] == 0.0
    assert logs["val_balanced_acc"] == 0.75
    expected_loss = -np.mean(np.log([0.94, 0.01, 0.94, 0.94]))
    assert logs["val_loss"] == pytest.approx(expected_loss, rel=1e-4)


def test_predict_probs_keeps_order_and_averages_the_eight_views_for_tta():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    model = keras.Sequential(
        [keras.Input((4, 4, 3)), keras.layers.Flatten(), keras.layers.Dense(7, "softmax")]
    )
    # Inputs in [0, 1) keep the softmax off saturation, where batch-size-dependent matmul paths
    # (seen on an AMD EPYC: 3e-5 relative on a probability of 0.06) exceed any relative tolerance;
    # rows then differ by far more than atol, so a reordering still fails.
    images = np.random.default_rng(0).uniform(0, 1, (5, 4, 4, 3)).astype("float32")
    dataset = tf.data.Dataset.from_tensor_slices((images, np.arange(5))).batch(2)
    plain = model.predict(images, verbose=0)
    assert np.abs(plain[:, None] - plain[None]).max(axis=-1)[~np.eye(5, dtype=bool)].min() > 1e-3
    np.testing.assert_allclose(predict_probs(model, dataset), plain, rtol=1e-5, atol=1e-5)
    turns = [np.rot90(images, k, axes=(1, 2)) for k in range(4)]
    views = turns + [t[:, :, ::-1] for t in turns]  # the 8 flips/rotations
    expected = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    rotations_only = np.mean([model.predict(t, verbose=0) for t in turns], axis=0)
    assert np.abs(rotations_only - expected).max() > 1e-3  # atol below would catch lost flips
    np.testing.assert_allclose(
        predict_probs(model, dataset, tta=True), expected, rtol=1e-5, atol=1e-5
    )


def test_selection_summary_names_the_best_epoch_one_based(tmp_path: Path):
    history = tmp_path / "history.csv"
    pd.DataFrame(
        {"epoch": [0, 1, 2], "val_loss": [0.9, 0.7, 0.8], "val_mel_recall": [0.2, 0.5, 0.6]}
    ).to_csv(history, index=False)
    by_loss = selection_summary(history, TrainConfig(select_metric="val_loss"))
    assert by_loss == {
        "select_metric": "val_loss",
        "best_epoch": 2,
        "best_value": 0.7,
        "epochs_trained": 3,
        "tta": False,
    }
    by_recall = selection_summary(history, TrainConfig(select_metric="val_mel_recall", tta=True))
    assert (by_recall["best_epoch"], by_recall["best_value"], by_recall["tta"]) == (3, 0.6, True)
