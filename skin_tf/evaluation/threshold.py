"""Melanoma operating point: a threshold on P(mel) chosen on validation, applied once to test.

The rule: among thresholds whose validation sensitivity reaches the target, take the one with the
highest specificity (ties: highest precision). A threshold that flags every non-melanoma
(specificity 0) is not an operating point, since it ignores the model; if no other threshold reaches
the target we say so and fall back to the highest-sensitivity one.

Example:
    >>> op = choose_operating_point(np.array([0, 0, 1, 1]), np.array([0.1, 0.4, 0.35, 0.8]), 0.5)
    >>> op.threshold, op.sensitivity, op.specificity
    (0.8, 0.5, 1.0)
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import (
    accuracy_score,
    average_precision_score,
    f1_score,
    roc_auc_score,
)

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.evaluation.calibration import calibrated_frame, read_temperature
from skin_tf.evaluation.metrics import (
    balanced_accuracy,
    bootstrap_ci,
    frame_arrays,
    read_predictions,
)
from skin_tf.evaluation.report import warn_if_replacing
from skin_tf.evaluation.threshold_report import threshold_figures, threshold_markdown
from skin_tf.runs import run_caption, run_name_of, write_json

OPERATING_POINT_FILE = "operating_point.json"
DECISION_RULE = "mel if P(mel) >= threshold, else the argmax of the other six classes"
# Thresholds shown in the markdown sweep table (besides the chosen ones).
TABLE_THRESHOLDS = (0.01, 0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9)
_RATES = ("sensitivity", "specificity", "precision", "npv")
# The default target: the validation melanoma sensitivity the operating point must reach.
TARGET_SENSITIVITY = 0.85


@dataclass(frozen=True)
class OperatingPoint:
    """A chosen threshold on P(mel) and its counts/rates on the data it was chosen on."""

    threshold: float
    target_sensitivity: float
    reached: bool
    sensitivity: float
    specificity: float
    precision: float
    npv: float
    tp: int
    fp: int
    tn: int
    fn: int
    note: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _check_binary(is_mel: np.ndarray, p_mel: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    is_mel = np.asarray(is_mel)
    p_mel = np.asarray(p_mel, dtype=float)
    if is_mel.ndim != 1 or is_mel.shape != p_mel.shape or len(is_mel) == 0:
        raise ValueError(
            f"is_mel and p_mel must be 1-D of the same non-zero length, got {is_mel.shape} "
            f"and {p_mel.shape}"
        )
    if not np.isin(is_mel, (0, 1)).all():
        raise ValueError("is_mel must be boolean (or 0/1): True where the image is melanoma")
    if not np.isfinite(p_mel).all():
        raise ValueError("p_mel has NaN/inf scores")
    return is_mel.astype(bool), p_mel


def _rates(tp, fp, tn, fn) -> dict[str, Any]:
    with np.errstate(invalid="ignore", divide="ignore"):
        return {
            "sensitivity": np.divide(tp, tp + fn),
            "specificity": np.divide(tn, tn + fp),
            "precision": np.divide(tp, tp + fp),
            "npv": np.divide(tn, tn + fn),
        }


def sweep_thresholds(is_mel: np.ndarray, p_mel: np.ndarray) -> pd.DataFrame:
    """One row per distinct score t (highest first): counts and rates of the rule P(mel) >= t.

    Columns: threshold, tp, fp, tn, fn, flagged, sensitivity, specificity, precision, npv. Rates
    with a zero denominator are NaN (e.g. sensitivity when there is no melanoma). Same points as
    sklearn's roc_curve(drop_intermediate=False) without its "flag nothing" first row, computed by
    cumulative counts so the no-melanoma / only-melanoma cases need no special path.

    Example:
        >>> sweep_thresholds(np.array([0, 1]), np.array([0.2, 0.7]))["sensitivity"].tolist()
        [1.0, 1.0]
    """
    is_mel, p_mel = _check_binary(is_mel, p_mel)
    order = np.argsort(-p_mel, kind="stable")
    scores, positives = p_mel[order], is_mel[order]
    # The last row of each run of equal scores: flagging at that score flags the whole run.
    last_of_run = np.r_[scores[1:] != scores[:-1], True]
    tp = np.cumsum(positives)[last_of_run]
    fp = np.cumsum(~positives)[last_of_run]
    n_pos, n_neg = int(is_mel.sum()), int((~is_mel).sum())
    sweep = pd.DataFrame(
        {
            "threshold": scores[last_of_run],
            "tp": tp,
            "fp": fp,
            "tn": n_neg - fp,
            "fn": n_pos - tp,
            "flagged": tp + fp,
        }
    )
    for name, values in _rates(sweep.tp, sweep.fp, sweep.tn, sweep.fn).items():
        sweep[name] = values.astype(float)
    return sweep


def choose_operating_point(
    is_mel: np.ndarray, p_mel: np.ndarray, min_sensitivity: float = TARGET_SENSITIVITY
) -> OperatingPoint:
    """Max specificity (ties: precision, then sensitivity) with sensitivity >= min_sensitivity.

    Needs melanoma and non-melanoma in the data. Thresholds with specificity 0 are skipped; when
    none of the others reaches the target, returns the highest-sensitivity one with reached=False.

    Example:
        >>> choose_operating_point([1, 1, 0, 0], [0.9, 0.6, 0.5, 0.1], 0.85).threshold
        0.6
    """
    if not 0 < min_sensitivity <= 1:
        raise ValueError(f"min_sensitivity must be in (0, 1], got {min_sensitivity}")
    sweep = sweep_thresholds(is_mel, p_mel)
    n_pos = int(sweep["tp"].iloc[-1] + sweep["fn"].iloc[-1])
    n_neg = int(sweep["fp"].iloc[-1] + sweep["tn"].iloc[-1])
    if n_pos == 0 or n_neg == 0:
        raise ValueError(
            f"choosing a melanoma threshold needs both melanoma and other images; got {n_pos} "
            f"melanoma and {n_neg} others: use a split that has both"
        )
    candidates, meets = _reaching_target(sweep, min_sensitivity)
    if candidates.empty:
        raise ValueError(
            "every threshold flags all non-melanoma images (the scores do not separate the "
            "classes at all), so there is no operating point to choose"
        )
    if not meets.empty:
        # Precision cannot separate points with no false positive (it is 1 for all of them), so
        # sensitivity breaks the remaining ties: the lower of such thresholds finds more melanoma
        # at no cost.
        best = meets.sort_values(
            ["specificity", "precision", "sensitivity"], ascending=False, kind="stable"
        ).iloc[0]
        note = (
            f"{len(meets)} of {len(candidates)} candidate thresholds reach sensitivity "
            f">= {min_sensitivity:g}; this one has the highest specificity among them"
        )
        reached = True
    else:
        best = candidates.sort_values(
            ["sensitivity", "specificity", "precision"], ascending=False, kind="stable"
        ).iloc[0]
        note = (
            f"no threshold reaches sensitivity {min_sensitivity:g} without flagging every "
            f"non-melanoma; fell back to the highest-sensitivity threshold "
            f"(sensitivity {best['sensitivity']:.3f})"
        )
        reached = False
    return OperatingPoint(
        threshold=float(best["threshold"]),
        target_sensitivity=float(min_sensitivity),
        reached=reached,
        **{name: float(best[name]) for name in _RATES},
        **{name: int(best[name]) for name in ("tp", "fp", "tn", "fn")},
        note=note,
    )


def specificity_at_target(
    is_mel: np.ndarray, p_mel: np.ndarray, min_sensitivity: float = TARGET_SENSITIVITY
) -> float:
    """The specificity of the operating point `choose_operating_point` would pick: 0.0 when no
    threshold reaches the target, NaN without both melanoma and other images.

    As a checkpoint score (`val_mel_spec_at_sens85`) it asks of each epoch what the threshold
    step will ask of the kept one: how few false alarms at the sensitivity we will demand.
    Melanoma recall at the argmax rewards an epoch for calling many lesions melanoma instead.

    Example:
        >>> specificity_at_target(np.array([1, 1, 0, 0]), np.array([0.9, 0.6, 0.5, 0.1]))
        1.0
    """
    is_mel, p_mel = _check_binary(is_mel, p_mel)
    if is_mel.all() or not is_mel.any():
        return math.nan
    _, meets = _reaching_target(sweep_thresholds(is_mel, p_mel), min_sensitivity)
    return float(meets["specificity"].max()) if not meets.empty else 0.0


def _reaching_target(
    sweep: pd.DataFrame, min_sensitivity: float
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """The candidate thresholds (specificity > 0: one that flags every other lesion ignores the
    model) and those of them whose sensitivity reaches min_sensitivity."""
    candidates = sweep[sweep["specificity"] > 0]
    return candidates, candidates[candidates["sensitivity"] >= min_sensitivity - 1e-12]


def binary_metrics_at(is_mel: np.ndarray, p_mel: np.ndarray, t: float) -> dict[str, Any]:
    """Counts and rates of "melanoma if P(mel) >= t", plus nnb = 1 / precision.

    nnb (number needed to biopsy) is how many flagged lesions per melanoma found: NaN when nothing
    is flagged, inf when no flagged lesion is melanoma.

    Example:
        >>> binary_metrics_at(np.array([1, 0, 0]), np.array([0.9, 0.8, 0.1]), 0.5)["nnb"]
        2.0
    """
    is_mel, p_mel = _check_binary(is_mel, p_mel)
    counts = _counts_at(is_mel, p_mel, t)
    rates = {name: float(value) for name, value in _rates(*counts).items()}
    return {
        **rates,
        "nnb": _inverse(rates["precision"]),
        **{name: int(c) for name, c in zip(("tp", "fp", "tn", "fn"), counts, strict=True)},
        "flagged": int(np.sum(p_mel >= t)),
    }


def _counts_at(is_mel: np.ndarray, p_mel: np.ndarray, t: float) -> tuple[np.float64, ...]:
    """(tp, fp, tn, fn) of "P(mel) >= t" as floats, so rates divide without integer surprises."""
    flagged = p_mel >= t
    tp, fp = np.sum(flagged & is_mel), np.sum(flagged & ~is_mel)
    return tuple(np.float64(c) for c in (tp, fp, np.sum(~is_mel) - fp, np.sum(is_mel) - tp))


def _inverse(value: float) -> float:
    if math.isnan(value):
        return math.nan
    return math.inf if value == 0 else 1.0 / value


def decide_with_threshold(probs: np.ndarray, t: float) -> np.ndarray:
    """7-class labels under "mel if P(mel) >= t, else the argmax of the other six classes".

    Example:
        >>> p = np.array([[0.1, 0, 0, 0, 0.3, 0.6, 0]])
        >>> decide_with_threshold(p, 0.25).tolist(), decide_with_threshold(p, 0.5).tolist()
        ([4], [5])
    """
    probs = np.asarray(probs, dtype=float)
    if probs.ndim != 2 or probs.shape[1] != len(CLASSES):
        raise ValueError(f"probs must have shape (n, {len(CLASSES)}), got {probs.shape}")
    others = probs.copy()
    others[:, MEL_INDEX] = -np.inf
    return np.where(probs[:, MEL_INDEX] >= t, MEL_INDEX, others.argmax(axis=1))


def label_metrics(y_true: np.ndarray, y_pred: np.ndarray) -> dict[str, float]:
    """7-class accuracy, macro-F1, balanced accuracy and melanoma sensitivity/specificity."""
    is_mel, called_mel = y_true == MEL_INDEX, y_pred == MEL_INDEX
    return {
        "accuracy": float(accuracy_score(y_true, y_pred)),
        "macro_f1": float(
            f1_score(y_true, y_pred, labels=range(len(CLASSES)), average="macro", zero_division=0)
        ),
        "balanced_accuracy": balanced_accuracy(y_true, y_pred),
        "mel_sensitivity": float(np.mean(called_mel[is_mel])) if is_mel.any() else math.nan,
        "mel_specificity": float(np.mean(~called_mel[~is_mel])) if (~is_mel).any() else math.nan,
    }


def binary_stat_fns(t: float) -> dict[str, Any]:
    """Statistics of the rule P(mel) >= t as `bootstrap_ci` callables taking (is_mel, p_mel)."""

    def rate(name: str):
        def fn(is_mel: np.ndarray, p_mel: np.ndarray) -> float:
            return float(_rates(*_counts_at(is_mel, p_mel, t))[name])

        return fn

    return {name: rate(name) for name in _RATES}


def threshold_run(
    run_dir: str | Path,
    min_sensitivity: float = TARGET_SENSITIVITY,
    results_dir: Path = Path("results"),
    n_boot: int = 1000,
    seed: int = 0,
) -> dict[str, Any]:
    """Choose the melanoma threshold on a run's validation predictions and report it on test.

    Uses temperature-scaled probabilities when `<run_dir>/temperature.json` exists. Writes
    `<run_dir>/operating_point.json`, `<results_dir>/mel_threshold_<run>.md` and two figures in
    `<results_dir>/figures/`, with a warning when that folder holds another run of the same name;
    returns the JSON content plus the output paths.

    Example:
        >>> threshold_run("runs/b0_smoke")["test"]["sensitivity"]  # doctest: +SKIP
    """
    run_dir, results_dir = Path(run_dir), Path(results_dir)
    run_name = run_name_of(run_dir)
    temperature = read_temperature(run_dir)
    frames = {split: read_predictions(run_dir, split) for split in ("val", "test")}
    if temperature is not None:
        frames = {split: calibrated_frame(f, temperature) for split, f in frames.items()}
    arrays = {split: frame_arrays(f) for split, f in frames.items()}
    binary = {
        split: (y == MEL_INDEX, probs[:, MEL_INDEX]) for split, (y, probs, _) in arrays.items()
    }

    point = choose_operating_point(*binary["val"], min_sensitivity=min_sensitivity)
    t = point.threshold
    measured = {split: binary_metrics_at(*binary[split], t) for split in ("val", "test")}
    test_lesions = arrays["test"][2]
    ci = bootstrap_ci(*binary["test"], test_lesions, binary_stat_fns(t), n_boot=n_boot, seed=seed)
    lo_ppv, hi_ppv = ci["precision"]
    ci["nnb"] = (_inverse(hi_ppv), _inverse(lo_ppv))  # 1/x is decreasing: the ends swap
    measured["test"]["ci"] = ci

    seven_class = {}
    for split, (y, probs, _) in arrays.items():
        seven_class[split] = {
            "argmax": label_metrics(y, probs.argmax(axis=1)),
            "threshold_rule": label_metrics(y, decide_with_threshold(probs, t)),
        }
    test_point = choose_operating_point(*binary["test"], min_sensitivity=min_sensitivity)
    result: dict[str, Any] = {
        "threshold": t,
        "target_sensitivity": float(min_sensitivity),
        "calibrated": temperature is not None,
        "temperature": temperature,
        "reached": point.reached,
        "note": point.note,
        "chosen_on": "val",
        "val": measured["val"],
        "test": measured["test"],
        "decision_rule": DECISION_RULE,
        "seven_class": seven_class,
        "curves": {
            split: {
                "roc_auc": float(roc_auc_score(*binary[split])),
                "average_precision": float(average_precision_score(*binary[split])),
            }
            for split in ("val", "test")
        },
        "test_chosen_reference": {
            "warning": "chosen on test itself: optimistic, for comparison only, never for use",
            **test_point.to_dict(),
        },
        "bootstrap": {"n_boot": n_boot, "seed": seed, "over": "lesions", "interval": 0.95},
    }
    write_json(run_dir / OPERATING_POINT_FILE, result)

    caption = run_caption(
        run_dir,
        "skin_tf.evaluation.threshold.threshold_run "
        f"({'temperature-scaled' if temperature else 'raw'} "
        "probabilities; threshold chosen on val)",
    )
    sweeps = {split: sweep_thresholds(*binary[split]) for split in ("val", "test")}
    warn_if_replacing(run_dir, results_dir)
    paths = threshold_figures(result, sweeps, run_name, results_dir, caption)
    report_path = results_dir / f"mel_threshold_{run_name}.md"
    report_path.parent.mkdir(parents=True, exist_ok=True)
    grid = sorted({*TABLE_THRESHOLDS, t, test_point.threshold})
    grid_rows = [
        (g, binary_metrics_at(*binary["val"], g), binary_metrics_at(*binary["test"], g))
        for g in grid
    ]
    report_path.write_text(
        threshold_markdown(result, grid_rows, run_name, caption, paths, results_dir)
    )
    return {**result, "report": str(report_path), "figures": [str(p) for p in paths]}
