"""Checkpoint selection on validation: the per-epoch val metrics and which epoch was kept.

Each epoch `validation_callback` predicts the val set once (`predict_probs`) and adds
`validation_logs` (val_loss, val_acc, val_macro_f1, val_balanced_acc, val_mel_recall,
val_mel_spec_at_sens85) to the Keras epoch logs, where ModelCheckpoint (monitoring the config's
`select_metric`) and CSVLogger (history.csv) read them. After training, `selection_summary`
reads history.csv back into the select_metric / best_epoch / best_value block of metrics.json.

skin_tf.training.fit wires these into `model.fit` and writes the files; nothing here writes one.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # TensorFlow loads only when a model is at hand
    import keras
    import tensorflow as tf

    from skin_tf.training.config import TrainConfig


def predict_probs(model: keras.Model, dataset: tf.data.Dataset, tta: bool = False) -> np.ndarray:
    """Softmax probabilities (n, 7) for an ordered (images, labels) dataset, float64.

    tta=True averages the 8 flips/90° rotations (`evaluate.predict_tta`, the one TTA).
    """
    if tta:
        from skin_tf.evaluation.evaluate import predict_tta

        return predict_tta(model, dataset)
    return np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)


def validation_logs(labels: np.ndarray, probs: np.ndarray, loss_fn: Any) -> dict[str, float]:
    """The per-epoch selection metrics: val_loss, val_acc, val_macro_f1, val_balanced_acc,
    val_mel_recall (at the argmax) and val_mel_spec_at_sens85 (the specificity of the melanoma
    threshold that reaches sensitivity 0.85, `threshold.specificity_at_target`); the last two are
    NaN when the val split has no melanoma.

    >>> from skin_tf.models.losses import build_loss
    >>> logs = validation_logs(np.array([4, 5]), np.eye(7)[[4, 5]], build_loss())
    >>> float(logs["val_acc"]), float(logs["val_mel_recall"])
    (1.0, 1.0)
    """
    from skin_tf.data.ham10000 import MEL_INDEX
    from skin_tf.evaluation.metrics import (
        fast_accuracy,
        fast_balanced_accuracy,
        fast_macro_f1,
        fast_mel_sensitivity,
    )
    from skin_tf.evaluation.threshold import specificity_at_target

    loss = loss_fn(labels.astype(np.int32), probs.astype(np.float32))
    return {
        "val_loss": float(np.asarray(loss)),
        "val_acc": fast_accuracy(labels, probs),
        "val_macro_f1": fast_macro_f1(labels, probs),
        "val_balanced_acc": fast_balanced_accuracy(labels, probs),
        "val_mel_recall": fast_mel_sensitivity(labels, probs),
        "val_mel_spec_at_sens85": specificity_at_target(
            labels == MEL_INDEX, probs[:, MEL_INDEX], min_sensitivity=0.85
        ),
    }


def validation_callback(
    dataset: tf.data.Dataset, labels: np.ndarray, loss_fn: Any
) -> keras.callbacks.Callback:
    """A Keras callback adding `validation_logs` of `dataset` (ordered, with `labels`) to the
    logs of every epoch; list it before the callbacks that read val_* values."""
    import keras

    class ValidationMetrics(keras.callbacks.Callback):
        """Predicts the val set after each epoch and adds `validation_logs` to the epoch logs.

        One pass over the val set serves the loss and every metric (fit gets no
        validation_data, so Keras does not predict it a second time).
        """

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is None:
                return
            probs = predict_probs(self.model, dataset)
            logs.update(validation_logs(labels, probs, loss_fn))

    return ValidationMetrics()


def selection_summary(history_path: Path, config: TrainConfig) -> dict[str, Any]:
    """Which epoch best.keras holds, from history.csv: the opening keys of metrics.json
    (select_metric, best_epoch (1-based), best_value, epochs_trained, tta)."""
    history = pd.read_csv(history_path)
    column = history[config.select_metric]
    row = column.idxmin() if config.select_mode == "min" else column.idxmax()
    return {
        "select_metric": config.select_metric,
        "best_epoch": int(history.loc[row, "epoch"]) + 1,  # 1-based, as in the progress bar
        "best_value": float(column[row]),
        "epochs_trained": len(history),
        "tta": config.tta,
    }
