"""Melanoma threshold: sweeps and choices with known answers, the run report, a real-data run."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
from sklearn.metrics import precision_recall_curve, roc_curve

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.evaluation.metrics import PROB_COLUMNS, bootstrap_ci
from skin_tf.evaluation.threshold import (
    binary_metrics_at,
    binary_stat_fns,
    choose_operating_point,
    decide_with_threshold,
    specificity_at_target,
    sweep_thresholds,
    threshold_run,
)
from tests.evaluation.test_metrics import noisy_predictions, write_run_dir

# ---------------------------------------------------------------- sweep


def test_sweep_matches_sklearn_curves():
    rng = np.random.default_rng(0)
    is_mel = rng.random(300) < 0.2
    scores = np.round(rng.random(300) * 0.6 + 0.4 * is_mel, 2)  # rounding makes ties
    sweep = sweep_thresholds(is_mel, scores)
    fpr, tpr, thresholds = roc_curve(is_mel, scores, drop_intermediate=False)
    assert np.allclose(sweep["threshold"], thresholds[1:])  # sklearn's first row flags nothing
    assert np.allclose(sweep["sensitivity"], tpr[1:])
    assert np.allclose(1 - sweep["specificity"], fpr[1:])
    precision, recall, pr_thresholds = precision_recall_curve(is_mel, scores)
    by_threshold = dict(zip(pr_thresholds, precision[:-1], strict=True))
    assert np.allclose(sweep["precision"], [by_threshold[t] for t in sweep["threshold"]])
    assert len(sweep) == len(np.unique(scores))


def test_sweep_of_one_class_gives_nan_for_the_undefined_rate():
    only_benign = sweep_thresholds(np.zeros(4, bool), np.array([0.1, 0.2, 0.2, 0.9]))
    assert only_benign["sensitivity"].isna().all()
    assert only_benign["specificity"].tolist() == [0.75, 0.25, 0.0]
    only_mel = sweep_thresholds(np.ones(3, bool), np.array([0.3, 0.6, 0.9]))
    assert only_mel["specificity"].isna().all()
    assert only_mel["sensitivity"].tolist() == pytest.approx([1 / 3, 2 / 3, 1.0])


# ---------------------------------------------------------------- choosing the point


def test_perfectly_separable_scores_give_the_lowest_melanoma_score():
    is_mel = np.array([0, 0, 0, 1, 1, 1], bool)
    scores = np.array([0.05, 0.2, 0.3, 0.6, 0.7, 0.95])
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.85)
    assert point.reached
    assert point.threshold == 0.6
    assert (point.sensitivity, point.specificity, point.precision, point.npv) == (1, 1, 1, 1)


def test_one_class_data_cannot_choose_a_threshold():
    with pytest.raises(ValueError, match="both melanoma and other"):
        choose_operating_point(np.zeros(5, bool), np.linspace(0, 1, 5))
    with pytest.raises(ValueError, match="both melanoma and other"):
        choose_operating_point(np.ones(5, bool), np.linspace(0, 1, 5))


def test_tied_scores_are_flagged_together():
    # Two melanomas and one benign share the score 0.5: no threshold separates them.
    is_mel = np.array([1, 1, 0, 1, 0, 0], bool)
    scores = np.array([0.5, 0.5, 0.5, 0.9, 0.2, 0.1])
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.5)
    assert point.threshold == 0.5
    assert (point.tp, point.fp, point.fn) == (3, 1, 0)
    assert point.specificity == pytest.approx(2 / 3)


def test_equal_specificity_is_broken_by_precision():
    # Sensitivity >= 0.6 needs t <= 0.7; t = 0.7 and t = 0.6 both have one false positive
    # (specificity 0.5), and t = 0.6 has the higher precision (3/4 against 2/3).
    is_mel = np.array([1, 0, 1, 1, 0], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.6, 0.1])
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.6)
    assert point.threshold == 0.6
    assert (point.specificity, point.precision) == (0.5, 0.75)


def test_without_false_positives_sensitivity_breaks_the_tie():
    # t = 0.8 and t = 0.7 both have specificity 1 and precision 1; t = 0.7 finds one more melanoma.
    is_mel = np.array([1, 1, 0, 1, 0], bool)
    scores = np.array([0.8, 0.7, 0.6, 0.3, 0.1])
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.3)
    assert point.threshold == 0.7
    assert point.sensitivity == pytest.approx(2 / 3)


def test_unreachable_target_falls_back_to_the_highest_sensitivity_point():
    # Reaching sensitivity 1 needs t = 0.05, which flags every benign lesion (specificity 0).
    is_mel = np.array([1, 1, 1, 0, 0, 1], bool)
    scores = np.array([0.9, 0.8, 0.7, 0.4, 0.3, 0.05])
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.85)
    assert not point.reached
    # 0.7, 0.4 and 0.3 all reach 3/4; 0.3 flags both benign lesions, 0.7 neither.
    assert point.threshold == 0.7
    assert (point.sensitivity, point.specificity) == (0.75, 1.0)
    assert "no threshold reaches" in point.note


def test_scores_that_separate_nothing_are_refused():
    with pytest.raises(ValueError, match="do not separate"):
        choose_operating_point(np.array([1, 0, 0], bool), np.full(3, 0.4))


def test_specificity_at_target_is_the_chosen_points_specificity():
    rng = np.random.default_rng(3)
    is_mel = rng.random(400) < 0.15
    scores = np.clip(rng.normal(0.3 + 0.3 * is_mel, 0.15), 0, 1)
    point = choose_operating_point(is_mel, scores, min_sensitivity=0.85)
    assert point.reached and 0 < point.specificity < 1
    assert specificity_at_target(is_mel, scores, 0.85) == point.specificity


def test_specificity_at_target_prefers_ranking_over_calling_everything_melanoma():
    # An epoch that calls every lesion melanoma has argmax recall 1 but nothing to offer at the
    # operating point; one that ranks melanoma first scores 1.
    is_mel = np.array([1, 1, 0, 0, 0], bool)
    assert specificity_at_target(is_mel, np.full(5, 0.9)) == 0.0
    assert specificity_at_target(is_mel, np.array([0.4, 0.3, 0.2, 0.1, 0.1])) == 1.0
    # Sensitivity 0.85 needs both melanomas: the best threshold flags one benign lesion of three.
    assert specificity_at_target(is_mel, np.array([0.9, 0.5, 0.6, 0.1, 0.2])) == pytest.approx(
        2 / 3
    )


def test_specificity_at_target_without_both_classes_is_nan():
    assert np.isnan(specificity_at_target(np.zeros(4, bool), np.linspace(0, 1, 4)))
    assert np.isnan(specificity_at_target(np.ones(4, bool), np.linspace(0, 1, 4)))


def test_binary_metrics_at_counts_and_nnb():
    is_mel = np.array([1, 1, 0, 0, 0, 1], bool)
    scores = np.array([0.9, 0.6, 0.7, 0.2, 0.5, 0.1])
    metrics = binary_metrics_at(is_mel, scores, 0.5)
    assert (metrics["tp"], metrics["fp"], metrics["tn"], metrics["fn"]) == (2, 2, 1, 1)
    assert metrics["sensitivity"] == pytest.approx(2 / 3)
    assert metrics["specificity"] == pytest.approx(1 / 3)
    assert metrics["precision"] == 0.5 and metrics["nnb"] == 2.0
    assert metrics["npv"] == 0.5
    assert math.isnan(binary_metrics_at(is_mel, scores, 0.95)["nnb"])  # nothing flagged


def test_decide_with_threshold_overrides_argmax_only_for_melanoma():
    probs = np.array(
        [
            [0.1, 0.0, 0.0, 0.0, 0.3, 0.6, 0.0],  # nv by argmax, mel at t = 0.25
            [0.0, 0.0, 0.0, 0.0, 0.55, 0.0, 0.45],  # mel by argmax, vasc at t = 0.6
            [0.7, 0.0, 0.0, 0.0, 0.1, 0.2, 0.0],  # akiec either way
        ]
    )
    assert decide_with_threshold(probs, 0.25).tolist() == [MEL_INDEX, MEL_INDEX, 0]
    assert decide_with_threshold(probs, 0.6).tolist() == [5, 6, 0]


# ---------------------------------------------------------------- threshold_run


def synthetic_split(n: int, seed: int, signal: float = 1.5):
    rng = np.random.default_rng(seed)
    labels = rng.choice(len(CLASSES), size=n, p=[0.04, 0.05, 0.11, 0.01, 0.15, 0.6, 0.04])
    return labels, noisy_predictions(labels, rng, signal), np.arange(n) // 2


def make_run(tmp_path: Path, name: str = "thr-unit") -> Path:
    splits = {"val": synthetic_split(400, seed=1), "test": synthetic_split(400, seed=2)}
    return write_run_dir(tmp_path / name, splits, run_name=name)


def test_threshold_run_writes_json_report_and_figures(tmp_path):
    run = make_run(tmp_path)
    results = tmp_path / "results"
    out = threshold_run(run, min_sensitivity=0.85, results_dir=results, n_boot=100, seed=0)

    stored = json.loads((run / "operating_point.json").read_text())
    assert stored["calibrated"] is False and stored["target_sensitivity"] == 0.85
    assert stored["threshold"] == out["threshold"]
    for split in ("val", "test"):
        assert set(stored[split]) >= {"sensitivity", "specificity", "precision", "npv"}
    assert stored["val"]["sensitivity"] >= 0.85
    for name in ("sensitivity", "specificity", "precision", "npv", "nnb"):
        lo, hi = stored["test"]["ci"][name]
        assert lo <= stored["test"][name] <= hi, name
    rule = stored["seven_class"]["test"]["threshold_rule"]
    assert rule["mel_sensitivity"] == pytest.approx(stored["test"]["sensitivity"])
    assert set(rule) >= {"accuracy", "macro_f1", "balanced_accuracy"}

    report = (results / "mel_threshold_thr-unit.md").read_text()
    assert f"t = {stored['threshold']:.4f}" in report
    test_chosen = stored["test_chosen_reference"]["threshold"]
    assert "optimistic" in report and f"t = {test_chosen:.4f}" in report
    assert "raw (uncalibrated)" in report
    for path in out["figures"]:
        assert Path(path).stat().st_size > 10_000
        assert f"({Path(path).relative_to(results).as_posix()})" in report


def test_threshold_run_uses_the_temperature_when_present(tmp_path):
    run = make_run(tmp_path)
    raw = threshold_run(run, results_dir=tmp_path / "r1", n_boot=20)
    (run / "temperature.json").write_text(json.dumps({"temperature": 2.0, "fitted_on": "val"}))
    scaled = threshold_run(run, results_dir=tmp_path / "r2", n_boot=20)
    assert scaled["calibrated"] and scaled["temperature"] == 2.0
    assert not raw["calibrated"]
    assert scaled["threshold"] != raw["threshold"]  # probabilities changed, so did the cut
    assert "T = 2.000" in (tmp_path / "r2" / "mel_threshold_thr-unit.md").read_text()


def test_threshold_intervals_are_reproducible_for_a_seed():
    labels, probs, lesions = synthetic_split(400, seed=3)
    binary = (labels == MEL_INDEX, probs[:, MEL_INDEX])
    stats = binary_stat_fns(0.3)
    first = bootstrap_ci(*binary, lesions, stats, n_boot=300, seed=3)
    again = bootstrap_ci(*binary, lesions, stats, n_boot=300, seed=3)
    other = bootstrap_ci(*binary, lesions, stats, n_boot=300, seed=4)
    assert first == again
    assert first != other
    point = binary_metrics_at(*binary, 0.3)
    for name, (lo, hi) in first.items():
        assert lo <= point[name] <= hi, name


# ---------------------------------------------------------------- a run on real images


def colour_features(paths: list[str]) -> np.ndarray:
    """Per-channel mean, std, 10th and 90th percentile of each image (12 numbers)."""
    from PIL import Image

    rows = []
    for path in paths:
        pixels = np.asarray(Image.open(path).convert("RGB"), dtype=np.float32).reshape(-1, 3)
        rows.append(
            np.concatenate(
                [pixels.mean(0), pixels.std(0), *np.percentile(pixels, [10, 90], axis=0)]
            )
        )
    return np.array(rows)


@pytest.mark.slow
def test_real_run_threshold_chosen_on_val_differs_from_test(real_frame, tmp_path):
    """Stand-in for a trained network: logistic regression on colour statistics of real images."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    from skin_tf.data.splits import lesion_subset, split_by_lesion

    frame = split_by_lesion(lesion_subset(real_frame, per_class=90, seed=0), (0.5, 0.25, 0.25))
    features = colour_features(frame["path"].tolist())
    train = (frame["split"] == "train").to_numpy()
    model = make_pipeline(StandardScaler(), LogisticRegression(max_iter=2000))
    model.fit(features[train], frame.loc[train, "label"])
    assert list(model.classes_) == list(range(len(CLASSES)))

    # The run directory a training run would leave, with the real image and lesion ids.
    run = write_run_dir(tmp_path / "colour-logreg", {}, run_name="colour-logreg")
    for split in ("val", "test"):
        rows = (frame["split"] == split).to_numpy()
        predictions = frame.loc[rows, ["image_id", "dx"]].reset_index(drop=True)
        predictions[list(PROB_COLUMNS)] = model.predict_proba(features[rows])
        predictions.to_csv(run / f"predictions_{split}.csv", index=False)
    frame[["image_id", "lesion_id", "dx", "split"]].to_csv(run / "splits.csv", index=False)
    meta = json.loads((run / "meta.json").read_text())
    meta.update(model="logistic regression on colour statistics", image_size="200x150")
    (run / "meta.json").write_text(json.dumps(meta))

    results = tmp_path / "results"
    out = threshold_run(run, min_sensitivity=0.85, results_dir=results, n_boot=300, seed=0)
    val_chosen = out["threshold"]
    test_chosen = out["test_chosen_reference"]["threshold"]
    assert val_chosen != test_chosen
    report = (results / "mel_threshold_colour-logreg.md").read_text()
    assert f"t = {val_chosen:.4f}" in report and f"t = {test_chosen:.4f}" in report
    assert 0.6 < out["curves"]["test"]["roc_auc"] < 1.0  # colour carries real melanoma signal
