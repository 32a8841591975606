"""Is run B better than run A? A paired lesion bootstrap of the difference on the same test images.

Two runs tested on the same split share their errors on the hard lesions, so the interval of the
*difference* is much narrower than the two runs' own intervals side by side suggest: resampling
lesions once for both runs keeps that pairing. The frames come from `read_predictions` (a run
directory) or `report.read_committed_predictions` (the copy `skin-tf evaluate` keeps in
results/, so a comparison still works when the runs/ folder is gone or on another machine).

    >>> from skin_tf.evaluation.report import read_committed_predictions
    >>> a = read_committed_predictions("results/from_scratch", "baseline-cpu")  # doctest: +SKIP
    >>> b = read_committed_predictions("results", "baseline-cpu")               # doctest: +SKIP
    >>> paired_difference(a, b)["balanced_accuracy"]                   # doctest: +SKIP
    (0.27, 0.19, 0.35)

`paired_mean_differences` is the same paired resampling for any per-image scores (e.g. the
deletion AUC of several heatmap methods on the same images, each against a reference method).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.evaluation.metrics import PROB_COLUMNS, SPLIT_STATS, bootstrap_ci

COMPARE_METRICS = (
    "balanced_accuracy",
    "macro_f1",
    "accuracy",
    "mel_sensitivity",
    "mel_specificity",
    "mel_roc_auc",
)
CLASS_RECALLS = tuple(f"recall_{code}" for code in CLASSES)  # each class's recall at the argmax


def paired_difference(
    frame_a: pd.DataFrame,
    frame_b: pd.DataFrame,
    metrics: Sequence[str] = COMPARE_METRICS,
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, tuple[float, float, float]]:
    """(B − A, low, high) per metric: the point difference and its paired 95% lesion interval.

    n_boot=0 gives the differences only, with (nan, nan) intervals (`bootstrap: 0` in a config).
    Both frames need image_id, lesion_id, label and p_<class> columns for the same images (any
    order); raises ValueError naming the images that differ otherwise.

    Example:
        >>> y = [0, 1, 2, 3, 4, 5, 6] * 3
        >>> a = pd.DataFrame({"image_id": range(21), "lesion_id": range(21), "label": y,
        ...                   **{c: 1 / 7 for c in PROB_COLUMNS}})
        >>> b = a.copy(); b[list(PROB_COLUMNS)] = np.eye(7)[y]
        >>> round(paired_difference(a, b, ["accuracy"], n_boot=50)["accuracy"][0], 3)
        0.857
    """
    functions = {name: split_stat(name) for name in metrics}
    a, b = (_indexed(frame, name) for frame, name in ((frame_a, "A"), (frame_b, "B")))
    only_a, only_b = a.index.difference(b.index), b.index.difference(a.index)
    if len(only_a) or len(only_b):
        raise ValueError(
            f"the two runs were tested on different images ({len(only_a)} only in A, e.g. "
            f"{list(only_a[:3])}; {len(only_b)} only in B, e.g. {list(only_b[:3])}): compare "
            "runs made with the same split (fractions and seed)"
        )
    b = b.loc[a.index]
    if not (a["label"].to_numpy() == b["label"].to_numpy()).all():
        raise ValueError("the two runs give the same images different labels: not the same data")
    k = len(CLASSES)
    both = np.hstack([a[list(PROB_COLUMNS)].to_numpy(), b[list(PROB_COLUMNS)].to_numpy()])

    def change(fn):
        return lambda y, p: fn(y, p[:, k:]) - fn(y, p[:, :k])

    stats = {name: change(fn) for name, fn in functions.items()}
    labels = a["label"].to_numpy(dtype=int)
    if n_boot == 0:
        intervals = {name: (np.nan, np.nan) for name in stats}
    else:
        intervals = bootstrap_ci(labels, both, a["lesion_id"].to_numpy(), stats, n_boot, seed)
    return {name: (float(fn(labels, both)), *intervals[name]) for name, fn in stats.items()}


def split_stat(name: str):
    """The statistic `name` as fn(labels, probs): one of SPLIT_STATS, or `recall_<class>` (that
    class's recall at the argmax, NaN when the images hold none of it).

    >>> split_stat("recall_mel")(np.array([4, 4, 5]), np.eye(7)[[4, 5, 5]])
    0.5
    """
    if name in SPLIT_STATS:
        return SPLIT_STATS[name]
    if name in CLASS_RECALLS:
        index = CLASSES.index(name.removeprefix("recall_"))
        return lambda labels, probs: _class_recall(labels, probs, index)
    raise ValueError(
        f"unknown metric {name!r}; choose from {', '.join(SPLIT_STATS)} or "
        f"{', '.join(CLASS_RECALLS)}"
    )


def _class_recall(labels: np.ndarray, probs: np.ndarray, index: int) -> float:
    of_class = labels == index
    if not of_class.any():
        return float("nan")
    return float((probs[of_class].argmax(axis=1) == index).mean())


def _indexed(frame: pd.DataFrame, name: str) -> pd.DataFrame:
    missing = [c for c in ("image_id", "lesion_id", "label", *PROB_COLUMNS) if c not in frame]
    if missing:
        raise ValueError(
            f"predictions {name} lack columns {missing}: use read_predictions(run_dir, 'test') "
            "or read_committed_predictions(results_dir, run_name)"
        )
    return frame.set_index("image_id")


def paired_mean_differences(
    scores: pd.DataFrame,
    reference: str,
    groups: Sequence[object],
    n_boot: int = 1000,
    seed: int = 0,
) -> pd.DataFrame:
    """Per column of `scores` (one row per image): its mean with a 95% lesion-bootstrap interval,
    and its paired mean difference from the `reference` column with the interval of the
    difference. All columns share the same resamples of `groups` (lesions), so every difference
    keeps its pairing and the columns stay comparable.

    Returns one row per column: mean, low, high, diff, diff_low, diff_high (the reference's
    diff is 0 with a (0, 0) interval). n_boot=0 gives the points with NaN intervals.

    Example:
        >>> frame = pd.DataFrame({"a": [0.2, 0.3, 0.4, 0.5], "ref": [0.4, 0.5, 0.5, 0.6]})
        >>> out = paired_mean_differences(frame, "ref", ["l1", "l1", "l2", "l3"], n_boot=200)
        >>> round(float(out.loc["a", "diff"]), 3), bool(out.loc["a", "diff_high"] < 0)
        (-0.15, True)
    """
    if reference not in scores:
        raise ValueError(f"reference {reference!r} is not a column of {list(scores.columns)}")
    if len(groups) != len(scores):
        raise ValueError(f"{len(groups)} groups for {len(scores)} rows: give one per image")
    values = scores.to_numpy(float)
    if not np.isfinite(values).all():
        raise ValueError("scores must be finite: drop or recompute the images with NaN scores")
    names = list(scores.columns)
    ref = names.index(reference)

    def mean_of(j: int):
        return lambda _, v: float(v[:, j].mean())

    def change_of(j: int):
        return lambda _, v: float((v[:, j] - v[:, ref]).mean())

    stats = {("mean", name): mean_of(j) for j, name in enumerate(names)}
    stats |= {("diff", name): change_of(j) for j, name in enumerate(names)}
    labels = np.zeros(len(values), int)
    if n_boot == 0:
        intervals = {key: (np.nan, np.nan) for key in stats}
    else:
        intervals = bootstrap_ci(labels, values, np.asarray(groups), stats, n_boot, seed)
    rows = {}
    for name in names:
        mean, diff = stats[("mean", name)](labels, values), stats[("diff", name)](labels, values)
        rows[name] = {
            "mean": mean,
            "low": intervals[("mean", name)][0],
            "high": intervals[("mean", name)][1],
            "diff": diff,
            "diff_low": intervals[("diff", name)][0],
            "diff_high": intervals[("diff", name)][1],
        }
    return pd.DataFrame.from_dict(rows, orient="index")
