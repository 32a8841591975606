"""Evaluation maths: read a run's predictions, classification metrics, lesion-level bootstrap CIs.

Every interval here resamples *lesions* (HAM10000 has several images per lesion), so images of one
lesion never count as independent evidence.

Example:
    >>> frame = read_predictions("runs/b0_smoke", "test")  # doctest: +SKIP
    >>> report = evaluate_split(frame, n_boot=1000, seed=0)  # doctest: +SKIP
    >>> report["balanced_accuracy"], report["ci"]["balanced_accuracy"]  # doctest: +SKIP
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.stats import rankdata
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    balanced_accuracy_score,
    confusion_matrix,
    f1_score,
    precision_recall_fscore_support,
    roc_auc_score,
)

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.data.splits import SPLITS, read_splits

PROB_COLUMNS: tuple[str, ...] = tuple(f"p_{c}" for c in CLASSES)
# Rows of stored probabilities must sum to 1 within this (CSV round-off is far smaller).
_SUM_TOLERANCE = 1e-3

StatFn = Callable[[np.ndarray, np.ndarray], float]


# ---------------------------------------------------------------- reading a run's predictions


def read_predictions(run_dir: str | Path, split: str) -> pd.DataFrame:
    """Read `predictions_<split>.csv` of a run and add `label` (class index) and `lesion_id`.

    lesion_id comes from the run's `splits.csv`, which must list every predicted image under the
    same split and the same dx. Raises ValueError naming the problem and the fix otherwise.

    Example:
        >>> frame = read_predictions("runs/b0_smoke", "val")  # doctest: +SKIP
        >>> list(frame.columns)[:4]  # doctest: +SKIP
        ['image_id', 'dx', 'label', 'lesion_id']
    """
    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    pred_path = run_dir / f"predictions_{split}.csv"
    splits_path = run_dir / "splits.csv"
    for path, what in ((pred_path, "predictions"), (splits_path, "the lesion split")):
        if not path.is_file():
            raise ValueError(
                f"{path} not found: {what} file is missing; run training/prediction for this run "
                "first or point run_dir at a complete run directory"
            )
    frame = pd.read_csv(pred_path, dtype={"image_id": str, "dx": str})
    _require_columns(frame, ("image_id", "dx", *PROB_COLUMNS), pred_path)
    if frame.empty:
        raise ValueError(f"{pred_path} has no rows: re-run prediction for the {split} split")
    if frame["image_id"].duplicated().any():
        dupes = frame.loc[frame["image_id"].duplicated(), "image_id"].head(3).tolist()
        raise ValueError(
            f"{pred_path} lists some image_ids twice (e.g. {dupes}): re-run prediction"
        )
    unknown_dx = sorted(set(frame["dx"]) - set(CLASSES))
    if unknown_dx:
        raise ValueError(f"{pred_path} has dx values {unknown_dx} outside {CLASSES}")
    probs = frame[list(PROB_COLUMNS)].to_numpy(dtype=float)
    if not np.isfinite(probs).all() or (probs < 0).any():
        raise ValueError(f"{pred_path} has missing, negative or non-finite probabilities")
    worst = float(np.abs(probs.sum(axis=1) - 1.0).max())
    if worst > _SUM_TOLERANCE:
        raise ValueError(
            f"{pred_path}: probability rows must sum to 1 (worst is off by {worst:.3g}); "
            "store softmax outputs, not logits"
        )

    splits = read_splits(splits_path)
    splits = splits.loc[splits["split"] == split, ["image_id", "lesion_id", "dx"]]
    merged = frame.merge(splits, on="image_id", how="left", suffixes=("", "_split"))
    missing = merged["lesion_id"].isna()
    if missing.any():
        examples = merged.loc[missing, "image_id"].head(3).tolist()
        raise ValueError(
            f"{missing.sum()} image_ids in {pred_path.name} are not in the {split!r} rows of "
            f"{splits_path} (e.g. {examples}): the predictions and the split come from different "
            "runs; re-run prediction with this run's splits.csv"
        )
    wrong_dx = merged["dx"] != merged["dx_split"]
    if wrong_dx.any():
        examples = merged.loc[wrong_dx, "image_id"].head(3).tolist()
        raise ValueError(
            f"dx disagrees between {pred_path.name} and splits.csv for {wrong_dx.sum()} images "
            f"(e.g. {examples}): the files come from different runs"
        )
    merged = merged.drop(columns="dx_split")
    merged.insert(2, "label", merged["dx"].map(CLASSES.index).astype(int))
    merged.insert(3, "lesion_id", merged.pop("lesion_id"))
    return merged


def frame_arrays(frame: pd.DataFrame) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(labels, probs (n, 7), lesion ids) of a frame from `read_predictions`."""
    _require_columns(frame, ("label", "lesion_id", *PROB_COLUMNS), "the predictions frame")
    return (
        frame["label"].to_numpy(dtype=int),
        frame[list(PROB_COLUMNS)].to_numpy(dtype=float),
        frame["lesion_id"].to_numpy(),
    )


def _require_columns(frame: pd.DataFrame, columns: tuple[str, ...], where: object) -> None:
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise ValueError(
            f"{where} lacks columns {missing} (has {list(frame.columns)}); expected image_id, dx "
            f"and {', '.join(PROB_COLUMNS)} in class order"
        )


# ---------------------------------------------------------------- point metrics (scikit-learn)


def classification_metrics(y_true: np.ndarray, probs: np.ndarray) -> dict[str, Any]:
    """7-class metrics at the argmax plus melanoma one-vs-rest metrics.

    balanced_accuracy is the ISIC 2018 challenge metric (mean per-class recall over the classes
    present in y_true). Classes absent from y_true get recall 0 and support 0 in `per_class`;
    macro_f1 averages over all 7 classes. Melanoma AUC/AP are NaN when y_true has no melanoma or
    only melanoma.

    Example:
        >>> m = classification_metrics(np.array([4, 5]), np.eye(7)[[4, 5]])
        >>> m["accuracy"], m["mel_sensitivity"]
        (1.0, 1.0)
    """
    y_true, probs = check_labels_probs(y_true, probs)
    labels = list(range(len(CLASSES)))
    y_pred = probs.argmax(axis=1)
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=labels, zero_division=0
    )
    is_mel = y_true == MEL_INDEX
    flagged = y_pred == MEL_INDEX
    return {
        "n_images": int(len(y_true)),
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=labels, average="macro", zero_division=0)
        ),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "per_class": {
            code: {
                "precision": float(precision[i]),
                "recall": float(recall[i]),
                "f1": float(f1[i]),
                "support": int(support[i]),
            }
            for i, code in enumerate(CLASSES)
        },
        "mel_sensitivity": _ratio(np.sum(flagged & is_mel), np.sum(is_mel)),
        "mel_specificity": _ratio(np.sum(~flagged & ~is_mel), np.sum(~is_mel)),
        "mel_roc_auc": _if_both_classes(is_mel, roc_auc_score, probs[:, MEL_INDEX]),
        "mel_average_precision": _if_both_classes(
            is_mel, average_precision_score, probs[:, MEL_INDEX]
        ),
        "confusion_matrix": confusion_matrix(y_true, y_pred, labels=labels).tolist(),
    }


def balanced_accuracy(y_true: np.ndarray, y_pred: np.ndarray) -> float:
    """Mean recall over the classes present in y_true (sklearn's balanced_accuracy_score).

    sklearn warns when y_pred has classes absent from y_true; that is expected on small splits
    (a missed class still counts as a wrong prediction), so the warning is silenced.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "y_pred contains classes not in y_true", UserWarning)
        return float(balanced_accuracy_score(y_true, y_pred))


def check_labels_probs(y_true: np.ndarray, probs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Validate int labels (n,) and class probabilities (n, 7); return them as numpy arrays."""
    y_true = np.asarray(y_true)
    probs = np.asarray(probs, dtype=float)
    n_classes = len(CLASSES)
    if probs.ndim != 2 or probs.shape[1] != n_classes:
        raise ValueError(f"probs must have shape (n, {n_classes}), got {probs.shape}")
    if y_true.shape != (probs.shape[0],):
        raise ValueError(f"y_true must have shape ({probs.shape[0]},), got {y_true.shape}")
    if len(y_true) == 0:
        raise ValueError("no predictions: y_true and probs are empty")
    if not np.issubdtype(y_true.dtype, np.integer):
        raise ValueError(
            f"y_true must hold int class indices 0..{n_classes - 1}, got {y_true.dtype}"
        )
    if y_true.min() < 0 or y_true.max() >= n_classes:
        raise ValueError(f"y_true must hold class indices 0..{n_classes - 1}")
    return y_true.astype(int), probs


def _ratio(numerator: float, denominator: float) -> float:
    return float(numerator / denominator) if denominator else math.nan


def _if_both_classes(is_positive: np.ndarray, metric, scores: np.ndarray) -> float:
    if is_positive.all() or not is_positive.any():
        return math.nan
    return float(metric(is_positive, scores))


# ---------------------------------------------------------------- fast statistics for resampling
# sklearn's metric functions spend ~1 ms each on input checks; 1000 resamples x 6 statistics made
# that the bottleneck. These compute the same numbers from a 7x7 bincount (tests compare them with
# sklearn).


def _confusion(y_true: np.ndarray, probs: np.ndarray) -> np.ndarray:
    k = probs.shape[1]
    return np.bincount(y_true * k + probs.argmax(axis=1), minlength=k * k).reshape(k, k)


def fast_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Accuracy at the argmax (same as sklearn.metrics.accuracy_score)."""
    return float(np.mean(probs.argmax(axis=1) == y_true))


def fast_macro_f1(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Macro F1 over all 7 classes, zero_division=0 (same as sklearn's f1_score)."""
    cm = _confusion(y_true, probs)
    tp = np.diag(cm).astype(float)
    denominator = cm.sum(axis=0) + cm.sum(axis=1)  # 2tp + fp + fn
    f1 = np.divide(2 * tp, denominator, out=np.zeros_like(tp), where=denominator > 0)
    return float(f1.mean())


def fast_balanced_accuracy(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Mean recall over classes present in y_true (same as balanced_accuracy_score)."""
    cm = _confusion(y_true, probs)
    support = cm.sum(axis=1)
    present = support > 0
    return float(np.mean(np.diag(cm)[present] / support[present]))


def fast_mel_sensitivity(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Melanoma recall at the argmax; NaN without melanoma."""
    is_mel = y_true == MEL_INDEX
    return _ratio(np.sum(is_mel & (probs.argmax(axis=1) == MEL_INDEX)), np.sum(is_mel))


def fast_mel_specificity(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Share of non-melanoma not called melanoma at the argmax; NaN with only melanoma."""
    other = y_true != MEL_INDEX
    return _ratio(np.sum(other & (probs.argmax(axis=1) != MEL_INDEX)), np.sum(other))


def fast_mel_roc_auc(y_true: np.ndarray, probs: np.ndarray) -> float:
    """Melanoma one-vs-rest ROC AUC by the rank-sum formula (ties count half), NaN if one class."""
    return binary_roc_auc(y_true == MEL_INDEX, probs[:, MEL_INDEX])


def binary_roc_auc(is_positive: np.ndarray, scores: np.ndarray) -> float:
    """ROC AUC as Mann-Whitney U / (n_pos * n_neg), as sklearn's roc_auc_score; NaN if one class."""
    n_pos = int(np.sum(is_positive))
    n_neg = len(is_positive) - n_pos
    if n_pos == 0 or n_neg == 0:
        return math.nan
    ranks = rankdata(scores)
    return float((ranks[is_positive].sum() - n_pos * (n_pos + 1) / 2) / (n_pos * n_neg))


SPLIT_STATS: dict[str, StatFn] = {
    "accuracy": fast_accuracy,
    "macro_f1": fast_macro_f1,
    "balanced_accuracy": fast_balanced_accuracy,
    "mel_sensitivity": fast_mel_sensitivity,
    "mel_specificity": fast_mel_specificity,
    "mel_roc_auc": fast_mel_roc_auc,
}


# ---------------------------------------------------------------- lesion-level bootstrap


def bootstrap_ci(
    y_true: np.ndarray,
    probs: np.ndarray,
    groups: np.ndarray,
    stat_fns: Mapping[str, StatFn],
    n_boot: int = 1000,
    seed: int = 0,
    alpha: float = 0.05,
) -> dict[str, tuple[float, float]]:
    """Percentile (1 - alpha) intervals of each `stat_fn(y_true, probs)`, resampling groups.

    Each resample draws as many groups (lesions) as there are, with replacement, and keeps every
    row of each drawn group as often as it was drawn. y_true and probs are indexed along axis 0, so
    they may be labels + (n, 7) probabilities or a binary target + 1-D scores. Resamples where a
    statistic is undefined (NaN, e.g. no melanoma drawn) are left out of that statistic's interval;
    (nan, nan) if all are.

    Example:
        >>> y = np.array([0, 1, 1, 0]); p = np.eye(7)[[0, 1, 0, 0]]
        >>> lo, hi = bootstrap_ci(y, p, ["a", "a", "b", "c"], {"acc": fast_accuracy})["acc"]
    """
    y_true = np.asarray(y_true)
    probs = np.asarray(probs)
    group_codes, _ = pd.factorize(np.asarray(groups), use_na_sentinel=False)
    if not (len(y_true) == len(probs) == len(group_codes)):
        raise ValueError(
            f"y_true, probs and groups need one row per image; got lengths "
            f"{len(y_true)}, {len(probs)}, {len(group_codes)}"
        )
    if n_boot < 1:
        raise ValueError(f"n_boot must be at least 1, got {n_boot}")
    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n_groups = int(group_codes.max()) + 1
    rng = np.random.default_rng(seed)
    # Drawing group g k times == keeping each of its rows k times: one bincount and one
    # np.repeat per resample instead of gathering per-group index lists.
    draws = rng.integers(0, n_groups, size=(n_boot, n_groups))
    rows = np.arange(len(group_codes))
    values = np.full((n_boot, len(stat_fns)), np.nan)
    for b in range(n_boot):
        times_drawn = np.bincount(draws[b], minlength=n_groups)
        index = np.repeat(rows, times_drawn[group_codes])
        y_b, p_b = y_true[index], probs[index]
        for j, fn in enumerate(stat_fns.values()):
            values[b, j] = fn(y_b, p_b)
    intervals = {}
    for j, name in enumerate(stat_fns):
        column = values[:, j]
        column = column[~np.isnan(column)]
        if len(column) == 0:
            intervals[name] = (math.nan, math.nan)
        else:
            lo, hi = np.quantile(column, [alpha / 2, 1 - alpha / 2])
            intervals[name] = (float(lo), float(hi))
    return intervals


def evaluate_split(frame: pd.DataFrame, n_boot: int = 1000, seed: int = 0) -> dict[str, Any]:
    """`classification_metrics` of a predictions frame plus lesion-bootstrap 95% intervals in `ci`.

    Example:
        >>> report = evaluate_split(read_predictions("runs/b0", "test"))  # doctest: +SKIP
        >>> report["ci"]["mel_sensitivity"]  # doctest: +SKIP
        (0.52, 0.71)
    """
    y_true, probs, lesions = frame_arrays(frame)
    report = classification_metrics(y_true, probs)
    report["n_lesions"] = int(pd.Series(lesions).nunique())
    report["ci"] = bootstrap_ci(y_true, probs, lesions, SPLIT_STATS, n_boot=n_boot, seed=seed)
    report["ci_method"] = (
        f"percentile bootstrap over lesions, {n_boot} resamples, seed {seed}, 95% interval"
    )
    return report
