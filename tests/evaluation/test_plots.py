"""Figures draw numbers computed elsewhere: check what they label, not how they look."""

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.evaluation.plots import per_class_recall, training_curves


def recall_table(supports: list[int]) -> pd.DataFrame:
    return pd.DataFrame(
        {"recall": 0.5, "lo": np.nan, "hi": np.nan, "support": supports}, index=list(CLASSES)
    )


def tick_labels(figure) -> list[str]:
    return [t.get_text() for t in figure.axes[0].get_xticklabels()]


def test_per_class_recall_says_a_shared_count_once_and_different_counts_per_run():
    same = recall_table([32, 51, 110, 12, 112, 671, 14])
    runs = per_class_recall({"a": same, "b": same}, title="t", caption="c")
    assert tick_labels(runs)[4] == "mel\n(112)"
    assert runs.axes[0].get_xlabel() == "class (images)"

    val = recall_table([33, 50, 110, 11, 112, 670, 15])
    splits = per_class_recall({"test": same, "val": val}, title="t", caption="c")
    assert tick_labels(splits)[0] == "akiec\n(32/33)"
    assert splits.axes[0].get_xlabel() == "class (images: test / val)"


def test_training_curves_draw_scores_and_losses_but_not_the_epoch_time():
    history = pd.DataFrame({
        "epoch": [0, 1, 2], "acc": [0.5, 0.6, 0.7], "epoch_seconds": [296.0, 212.0, 146.0],
        "loss": [0.3, 0.2, 0.1], "val_acc": [0.4, 0.5, 0.6], "val_loss": [1.3, 0.9, 0.7],
        "learning_rate": [1e-3, 5e-4, 1e-4],
    })  # fmt: skip
    figure = training_curves(history, kept_epoch=3, title="t", caption="c")
    losses, scores = (ax.get_legend_handles_labels()[1] for ax in figure.axes[:2])
    assert losses == ["loss (train)", "loss (val)", "kept checkpoint (epoch 3)"]
    assert scores == ["acc (train)", "acc (val)", "kept checkpoint (epoch 3)"]
    assert figure.axes[1].get_ylim()[1] < 2  # scores keep their own scale
