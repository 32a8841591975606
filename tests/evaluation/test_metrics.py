"""Metrics, lesion bootstrap and predictions reading, checked against scikit-learn."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
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
from skin_tf.evaluation.metrics import (
    PROB_COLUMNS,
    SPLIT_STATS,
    bootstrap_ci,
    classification_metrics,
    evaluate_split,
    fast_accuracy,
    read_predictions,
)
from skin_tf.runs import json_ready


def noisy_predictions(labels: np.ndarray, rng: np.random.Generator, signal: float = 2.0):
    """Probabilities that favour the true class by `signal` logits, plus Gaussian noise."""
    logits = rng.normal(size=(len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), labels] += signal
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def write_run_dir(
    run_dir: Path,
    splits: dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]],
    run_name: str = "unit",
) -> Path:
    """A minimal run directory: predictions_<split>.csv, splits.csv and meta.json.

    splits maps "val"/"test" to (labels, probs (n, 7), lesion ids); with no splits only meta.json
    is written.
    """
    run_dir.mkdir(parents=True, exist_ok=True)
    split_rows = []
    offset = 0
    for split, (labels, probs, lesions) in splits.items():
        ids = [f"ISIC_{offset + i:07d}" for i in range(len(labels))]
        offset += len(labels)
        dx = [CLASSES[int(label)] for label in labels]
        frame = pd.DataFrame({"image_id": ids, "dx": dx})
        frame[list(PROB_COLUMNS)] = probs
        frame.to_csv(run_dir / f"predictions_{split}.csv", index=False)
        split_rows.append(
            pd.DataFrame(
                {"image_id": ids, "lesion_id": [f"{split}_{x}" for x in lesions], "dx": dx}
            ).assign(split=split)
        )
    if split_rows:
        pd.concat(split_rows).to_csv(run_dir / "splits.csv", index=False)
    meta = {
        "run_name": run_name,
        "config_name": "unit-test",
        "profile": "test",
        "model": "synthetic",
        "weights": "none",
        "image_size": 32,
        "epochs": 1,
        "hardware": "CPU (2 cores)",
        "data": {"root": "synthetic", "source_size": "200x150", "n_images": offset},
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))
    return run_dir


def random_split(n: int, seed: int, signal: float = 2.0, per_lesion: int = 2):
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, len(CLASSES), n)
    return labels, noisy_predictions(labels, rng, signal), np.arange(n) // per_lesion


# ---------------------------------------------------------------- classification_metrics


def test_classification_metrics_match_sklearn_on_random_data():
    labels, probs, _ = random_split(500, seed=1, signal=1.0)
    pred = probs.argmax(axis=1)
    metrics = classification_metrics(labels, probs)
    assert metrics["accuracy"] == pytest.approx(accuracy_score(labels, pred))
    assert metrics["macro_f1"] == pytest.approx(f1_score(labels, pred, average="macro"))
    assert metrics["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(labels, pred))
    precision, recall, f1, support = precision_recall_fscore_support(labels, pred)
    for i, code in enumerate(CLASSES):
        assert metrics["per_class"][code]["precision"] == pytest.approx(precision[i])
        assert metrics["per_class"][code]["recall"] == pytest.approx(recall[i])
        assert metrics["per_class"][code]["f1"] == pytest.approx(f1[i])
        assert metrics["per_class"][code]["support"] == support[i]
    is_mel = labels == MEL_INDEX
    assert metrics["mel_sensitivity"] == pytest.approx(recall[MEL_INDEX])
    expected_spec = np.mean(pred[~is_mel] != MEL_INDEX)
    assert metrics["mel_specificity"] == pytest.approx(expected_spec)
    assert metrics["mel_roc_auc"] == pytest.approx(roc_auc_score(is_mel, probs[:, MEL_INDEX]))
    assert metrics["mel_average_precision"] == pytest.approx(
        average_precision_score(is_mel, probs[:, MEL_INDEX])
    )
    assert metrics["confusion_matrix"] == confusion_matrix(labels, pred).tolist()
    assert 0.2 < metrics["accuracy"] < 0.9  # the data is neither trivial nor random


def test_perfect_classifier_scores_one_everywhere():
    labels = np.repeat(np.arange(len(CLASSES)), 3)
    metrics = classification_metrics(labels, np.eye(len(CLASSES))[labels])
    for name in ("accuracy", "macro_f1", "balanced_accuracy", "mel_sensitivity"):
        assert metrics[name] == 1.0
    assert metrics["mel_specificity"] == 1.0
    assert metrics["mel_roc_auc"] == 1.0
    assert metrics["mel_average_precision"] == 1.0
    assert np.array_equal(np.array(metrics["confusion_matrix"]), 3 * np.eye(len(CLASSES)))


def test_absent_classes_do_not_crash_and_give_nan_melanoma_auc():
    labels = np.array([0, 0, 5, 5, 5])
    probs = np.eye(len(CLASSES))[[0, 5, 5, 5, 4]]  # one nv called mel, one akiec called nv
    metrics = classification_metrics(labels, probs)
    assert metrics["per_class"]["mel"]["support"] == 0
    assert metrics["per_class"]["df"] == {"precision": 0.0, "recall": 0.0, "f1": 0.0, "support": 0}
    # Balanced accuracy averages the recalls of the classes present: (1/2 + 2/3) / 2.
    assert metrics["balanced_accuracy"] == pytest.approx((0.5 + 2 / 3) / 2)
    assert math.isnan(metrics["mel_sensitivity"])
    assert metrics["mel_specificity"] == pytest.approx(4 / 5)
    assert math.isnan(metrics["mel_roc_auc"]) and math.isnan(metrics["mel_average_precision"])


def test_classification_metrics_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        classification_metrics(np.array([0, 1]), np.ones((2, 3)) / 3)
    with pytest.raises(ValueError, match="class indices"):
        classification_metrics(np.array([0, 9]), np.ones((2, 7)) / 7)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_fast_bootstrap_statistics_equal_sklearn(seed):
    labels, probs, _ = random_split(300, seed=seed, signal=1.0)
    labels[:5] = 2  # make sure some class is present; drop another entirely
    labels[labels == 3] = 6
    probs[::7, MEL_INDEX] = 0.3  # ties in the melanoma score
    reference = classification_metrics(labels, probs)
    for name, fn in SPLIT_STATS.items():
        assert fn(labels, probs) == pytest.approx(reference[name]), name


# ---------------------------------------------------------------- bootstrap


def test_bootstrap_is_reproducible_for_a_seed():
    labels, probs, lesions = random_split(200, seed=3)
    first = bootstrap_ci(labels, probs, lesions, SPLIT_STATS, n_boot=200, seed=7)
    again = bootstrap_ci(labels, probs, lesions, SPLIT_STATS, n_boot=200, seed=7)
    other = bootstrap_ci(labels, probs, lesions, SPLIT_STATS, n_boot=200, seed=8)
    assert first == again
    assert first != other
    for lo, hi in first.values():
        assert 0 <= lo <= hi <= 1


def test_bootstrap_resamples_lesions_not_images():
    # 60 lesions, each photographed 5 times with identical predictions: the information is that
    # of 60 cases, so lesion resampling must give wider intervals than pretending 300 images.
    labels, probs, _ = random_split(60, seed=4, signal=1.0)
    labels, probs = np.repeat(labels, 5), np.repeat(probs, 5, axis=0)
    lesions = np.repeat(np.arange(60), 5)
    stats = {"accuracy": fast_accuracy}
    by_lesion = bootstrap_ci(labels, probs, lesions, stats, n_boot=500, seed=0)["accuracy"]
    by_image = bootstrap_ci(labels, probs, np.arange(300), stats, n_boot=500, seed=0)["accuracy"]
    width_lesion, width_image = np.diff(by_lesion)[0], np.diff(by_image)[0]
    assert width_lesion > 1.6 * width_image  # sqrt(5) = 2.2 in theory


def test_bootstrap_keeps_every_image_of_a_drawn_lesion():
    # Lesion "a" has images with labels 0 and 1; a resample holding only one of them is impossible.
    labels = np.array([0, 1, 2])
    probs = np.eye(len(CLASSES))[[0, 0, 2]]
    seen = []

    def record(y, p):
        seen.append(sorted(y.tolist()))
        return float(len(y))

    bootstrap_ci(labels, probs, ["a", "a", "b"], {"n": record}, n_boot=50, seed=0)
    for sample in seen:
        assert sample.count(0) == sample.count(1)


def test_bootstrap_skips_undefined_resamples_and_checks_lengths():
    labels = np.array([MEL_INDEX, 0, 0, 0])
    probs = np.eye(len(CLASSES))[[MEL_INDEX, 0, 0, 0]]
    ci = bootstrap_ci(labels, probs, [0, 1, 2, 3], SPLIT_STATS, n_boot=100, seed=0)
    assert ci["mel_sensitivity"] == (1.0, 1.0)  # resamples without melanoma are left out
    with pytest.raises(ValueError, match="one row per image"):
        bootstrap_ci(labels, probs, [0, 1], SPLIT_STATS)


def test_bootstrap_of_1000_images_takes_seconds():
    labels, probs, lesions = random_split(1000, seed=5, per_lesion=1)
    lesions = lesions // 2 + (lesions % 7 == 0)  # ~500 lesions of one to three images
    start = time.perf_counter()
    bootstrap_ci(labels, probs, lesions, SPLIT_STATS, n_boot=1000, seed=0)
    elapsed = time.perf_counter() - start
    assert elapsed < 10, f"1000 resamples took {elapsed:.1f} s"


# ---------------------------------------------------------------- reading a run


def test_read_predictions_adds_labels_and_lesions(tmp_path):
    val = random_split(20, seed=0)
    run = write_run_dir(tmp_path / "run", {"val": val, "test": random_split(10, seed=1)})
    frame = read_predictions(run, "val")
    assert list(frame.columns[:4]) == ["image_id", "dx", "label", "lesion_id"]
    assert frame["label"].tolist() == val[0].tolist()
    assert frame["lesion_id"].tolist() == [f"val_{x}" for x in val[2]]
    assert np.allclose(frame[list(PROB_COLUMNS)].to_numpy(), val[1])


def test_read_predictions_names_the_problem(tmp_path):
    run = write_run_dir(tmp_path / "run", {"val": random_split(10, seed=0)})
    with pytest.raises(ValueError, match="predictions_test.csv not found"):
        read_predictions(run, "test")
    with pytest.raises(ValueError, match="split must be one of"):
        read_predictions(run, "validation")

    path = run / "predictions_val.csv"
    good = pd.read_csv(path)
    good.drop(columns="p_mel").to_csv(path, index=False)
    with pytest.raises(ValueError, match=r"lacks columns \['p_mel'\]"):
        read_predictions(run, "val")

    good.assign(image_id=good["image_id"].str.replace("ISIC", "OTHER")).to_csv(path, index=False)
    with pytest.raises(ValueError, match="not in the 'val' rows"):
        read_predictions(run, "val")

    good.assign(dx="vasc").to_csv(path, index=False)
    with pytest.raises(ValueError, match="dx disagrees"):
        read_predictions(run, "val")

    good.assign(p_nv=good["p_nv"] + 0.5).to_csv(path, index=False)
    with pytest.raises(ValueError, match="sum to 1"):
        read_predictions(run, "val")

    (run / "splits.csv").unlink()
    good.to_csv(path, index=False)
    with pytest.raises(ValueError, match="splits.csv not found"):
        read_predictions(run, "val")


def test_evaluate_split_reports_intervals_around_the_estimates(tmp_path):
    run = write_run_dir(tmp_path / "run", {"test": random_split(400, seed=2, signal=2.5)})
    report = evaluate_split(read_predictions(run, "test"), n_boot=300, seed=0)
    assert report["n_images"] == 400 and report["n_lesions"] == 200
    assert set(report["ci"]) == {
        "accuracy",
        "macro_f1",
        "balanced_accuracy",
        "mel_sensitivity",
        "mel_specificity",
        "mel_roc_auc",
    }
    for name, (lo, hi) in report["ci"].items():
        assert lo <= report[name] <= hi, name
        assert hi - lo < 0.3, name
    json.dumps(json_ready(report), allow_nan=False)
