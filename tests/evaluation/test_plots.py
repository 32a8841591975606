"""Figures draw numbers computed elsewhere: check what they label, not how they look."""

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.evaluation.plots import per_class_recall


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
