"""Temperature scaling fitted on validation, with ECE and NLL before/after on test.

Stored probabilities are enough: softmax is shift-invariant, so log(p) are the logits up to a
per-row constant, and softmax(log(p) / T) is exactly softmax(logits / T).

Example:
    >>> summary = calibrate_run("runs/b0_smoke")  # doctest: +SKIP
    >>> summary["temperature"], summary["test"]["ece_after"]  # doctest: +SKIP
"""

from __future__ import annotations

import json
import math
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from scipy.optimize import minimize_scalar
from scipy.special import log_softmax, softmax

from skin_tf.evaluation import plots
from skin_tf.evaluation.metrics import PROB_COLUMNS, frame_arrays, read_predictions
from skin_tf.evaluation.report import warn_if_replacing
from skin_tf.runs import run_caption, run_name_of, write_json

TEMPERATURE_FILE = "temperature.json"
# Bounds for the search on log T: T in [0.05, 20] covers every trained network we have seen; a fit
# that ends on a bound (a from-scratch twin did, at 20) means no temperature calibrates the model.
_LOG_T_BOUNDS = (math.log(0.05), math.log(20.0))
_EPS = 1e-12  # clip before log so a stored 0.0 does not become -inf


def log_probs(probs: np.ndarray) -> np.ndarray:
    """log(clip(p)): logits up to a per-row constant, usable wherever logits are."""
    return np.log(np.clip(np.asarray(probs, dtype=float), _EPS, 1.0))


def apply_temperature(probs: np.ndarray, temperature: float) -> np.ndarray:
    """softmax(log(p) / T): the probabilities the model gives with its logits divided by T.

    Example:
        >>> apply_temperature(np.array([[0.9, 0.1]]), 1.0).round(3).tolist()
        [[0.9, 0.1]]
    """
    if not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return softmax(log_probs(probs) / temperature, axis=1)


def negative_log_likelihood(probs: np.ndarray, y: np.ndarray) -> float:
    """Mean -log p(true class) (natural log), probabilities clipped at 1e-12."""
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y, dtype=int)
    return float(-np.mean(log_probs(probs[np.arange(len(y)), y])))


def fit_temperature(logits: np.ndarray, y: np.ndarray) -> float:
    """The T > 0 minimising the NLL of softmax(logits / T) on (logits, y); log-probs work too.

    The search is over log T (bounded to T in [0.05, 20]) with scipy's bounded Brent method; a
    fit that ends on a bound warns, since the NLL was still falling there.

    Example:
        >>> T = fit_temperature(np.log(val_probs), val_labels)  # doctest: +SKIP
    """
    logits = np.asarray(logits, dtype=float)
    y = np.asarray(y, dtype=int)
    if logits.ndim != 2 or len(logits) != len(y) or len(y) == 0:
        raise ValueError(
            f"need logits of shape (n, classes) and n labels, got {logits.shape} and {y.shape}"
        )
    if not np.isfinite(logits).all():
        raise ValueError("logits contain inf/NaN: pass log(clip(p)) for probabilities")
    rows = np.arange(len(y))

    def nll(log_t: float) -> float:
        return float(-np.mean(log_softmax(logits / math.exp(log_t), axis=1)[rows, y]))

    result = minimize_scalar(nll, bounds=_LOG_T_BOUNDS, method="bounded", options={"xatol": 1e-6})
    temperature = float(math.exp(result.x))
    if min(abs(result.x - bound) for bound in _LOG_T_BOUNDS) < 1e-3:
        warnings.warn(
            f"the fitted temperature {temperature:.3g} is at the end of the search range "
            "[0.05, 20]: no single temperature calibrates these predictions (at 20 they are "
            "nearly uniform, at 0.05 nearly one-hot); check the model before trusting them",
            stacklevel=2,
        )
    return temperature


def reliability_table(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> pd.DataFrame:
    """Top-label confidence binned into `n_bins` equal-width bins over (0, 1].

    Columns: lower, upper, count, confidence (mean top probability), accuracy (share correct).
    Bin i holds confidences in (i/n, (i+1)/n]; empty bins have count 0 and NaN means.
    """
    probs = np.asarray(probs, dtype=float)
    y = np.asarray(y, dtype=int)
    confidence = probs.max(axis=1)
    correct = probs.argmax(axis=1) == y
    edges = np.linspace(0.0, 1.0, n_bins + 1)
    bins = np.clip(np.searchsorted(edges, confidence, side="left") - 1, 0, n_bins - 1)
    counts = np.bincount(bins, minlength=n_bins)
    with np.errstate(invalid="ignore", divide="ignore"):
        mean_conf = np.bincount(bins, weights=confidence, minlength=n_bins) / counts
        mean_acc = np.bincount(bins, weights=correct, minlength=n_bins) / counts
    return pd.DataFrame(
        {
            "lower": edges[:-1],
            "upper": edges[1:],
            "count": counts,
            "confidence": mean_conf,
            "accuracy": mean_acc,
        }
    )


def expected_calibration_error(probs: np.ndarray, y: np.ndarray, n_bins: int = 15) -> float:
    """ECE = sum over bins of (count / n) * |accuracy - confidence| (top label, equal width).

    Example:
        >>> p = np.array([[0.8, 0.2]] * 5)
        >>> round(expected_calibration_error(p, np.array([0, 0, 0, 0, 1])), 6)
        0.0
    """
    table = reliability_table(probs, y, n_bins)
    filled = table[table["count"] > 0]
    gaps = (filled["accuracy"] - filled["confidence"]).abs()
    return float((filled["count"] * gaps).sum() / filled["count"].sum())


def calibrate_run(run_dir: str | Path, results_dir: Path = Path("results")) -> dict[str, Any]:
    """Fit T on the run's validation predictions, report NLL/ECE before/after on val and test.

    Writes `<run_dir>/temperature.json` (re-running rewrites it with the same deterministic fit) and
    `<results_dir>/figures/reliability_<run_name>.png`, with a warning when that folder holds
    another run of the same name; returns the JSON content plus `figure`.

    Example:
        >>> calibrate_run("runs/b0_smoke")["temperature"]  # doctest: +SKIP
        1.41
    """
    run_dir = Path(run_dir)
    run_name = run_name_of(run_dir)
    frames = {split: read_predictions(run_dir, split) for split in ("val", "test")}
    val_labels, val_probs, _ = frame_arrays(frames["val"])
    temperature = fit_temperature(log_probs(val_probs), val_labels)

    summary: dict[str, Any] = {
        "temperature": temperature,
        "fitted_on": "val",
        "method": "temperature scaling, NLL minimised over log T (scipy bounded Brent)",
        "ece_bins": 15,
    }
    tables = {}
    for split, frame in frames.items():
        labels, probs, _ = frame_arrays(frame)
        scaled = apply_temperature(probs, temperature)
        summary[split] = {
            "n_images": int(len(labels)),
            "nll_before": negative_log_likelihood(probs, labels),
            "nll_after": negative_log_likelihood(scaled, labels),
            "ece_before": expected_calibration_error(probs, labels),
            "ece_after": expected_calibration_error(scaled, labels),
        }
        tables[split] = (reliability_table(probs, labels), reliability_table(scaled, labels))
    write_json(run_dir / TEMPERATURE_FILE, summary)

    test = summary["test"]
    figure = plots.reliability_diagram(
        before=tables["test"][0],
        after=tables["test"][1],
        label_before=f"before (ECE {test['ece_before']:.3f}, NLL {test['nll_before']:.3f})",
        label_after=(
            f"after T = {temperature:.2f} (ECE {test['ece_after']:.3f}, "
            f"NLL {test['nll_after']:.3f})"
        ),
        title=f"Reliability on test, temperature fitted on val: {run_name}",
        caption=run_caption(run_dir, "skin_tf.evaluation.calibration.calibrate_run, test split"),
    )
    figure_path = results_dir / "figures" / f"reliability_{run_name}.png"
    warn_if_replacing(run_dir, results_dir)
    plots.save_figure(figure, figure_path)
    return {**summary, "figure": str(figure_path)}


def read_temperature(run_dir: str | Path) -> float | None:
    """The temperature stored in `<run_dir>/temperature.json`, or None when the run has none."""
    path = Path(run_dir) / TEMPERATURE_FILE
    if not path.is_file():
        return None
    stored = json.loads(path.read_text())
    temperature = stored.get("temperature")
    if not isinstance(temperature, int | float) or not temperature > 0:
        raise ValueError(f"{path} has no positive 'temperature'; re-run calibrate_run")
    return float(temperature)


def calibrated_frame(frame: pd.DataFrame, temperature: float) -> pd.DataFrame:
    """Copy of a predictions frame with its p_* columns temperature-scaled."""
    scaled = frame.copy()
    scaled[list(PROB_COLUMNS)] = apply_temperature(
        frame[list(PROB_COLUMNS)].to_numpy(float), temperature
    )
    return scaled
