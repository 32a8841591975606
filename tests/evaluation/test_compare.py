"""Paired lesion-bootstrap comparison of two runs (skin_tf.evaluation.compare), and the test
predictions `skin-tf evaluate` keeps in results/ so that comparisons outlive the run folders."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skin_tf.data.ham10000 import CLASSES
from skin_tf.evaluation.compare import paired_difference
from skin_tf.evaluation.metrics import PROB_COLUMNS, SPLIT_STATS, read_predictions
from skin_tf.evaluation.report import (
    committed_predictions_path,
    read_committed_predictions,
    read_run_records,
)


def predictions(labels, probs, lesions=None) -> pd.DataFrame:
    frame = pd.DataFrame(np.asarray(probs, dtype=float), columns=list(PROB_COLUMNS))
    frame.insert(0, "image_id", [f"ISIC_{i:07d}" for i in range(len(labels))])
    frame.insert(1, "lesion_id", lesions if lesions is not None else frame["image_id"])
    frame.insert(2, "label", labels)
    return frame


@pytest.fixture()
def pair():
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(7), 30)
    weak = rng.dirichlet(np.ones(7), size=len(labels))
    strong = 0.5 * weak + 0.5 * np.eye(7)[labels]  # the same noise, plus the right answer
    lesions = [f"L{i // 2}" for i in range(len(labels))]  # two images per lesion
    return predictions(labels, weak, lesions), predictions(labels, strong, lesions)


def test_difference_is_b_minus_a_with_an_interval_around_it(pair):
    weak, strong = pair
    diff = paired_difference(weak, strong, n_boot=200)
    for name, (point, low, high) in diff.items():
        expected = SPLIT_STATS[name](
            strong["label"].to_numpy(), strong[list(PROB_COLUMNS)].to_numpy()
        )
        expected -= SPLIT_STATS[name](weak["label"].to_numpy(), weak[list(PROB_COLUMNS)].to_numpy())
        assert point == pytest.approx(expected), name
        assert low <= point <= high, name
    assert diff["balanced_accuracy"][1] > 0  # the strong run is measurably better
    reverse = paired_difference(strong, weak, ["balanced_accuracy"], n_boot=200)
    assert reverse["balanced_accuracy"][0] == pytest.approx(-diff["balanced_accuracy"][0])
    assert reverse["balanced_accuracy"][2] < 0


def test_pairing_follows_image_ids_not_row_order(pair):
    weak, strong = pair
    shuffled = strong.sample(frac=1.0, random_state=1)
    assert paired_difference(weak, shuffled, n_boot=50) == paired_difference(
        weak, strong, n_boot=50
    )


def test_no_resamples_gives_the_differences_without_intervals(pair):
    weak, strong = pair
    bare = paired_difference(weak, strong, n_boot=0)  # a config with `bootstrap: 0`
    for name, (point, low, high) in bare.items():
        assert point == paired_difference(weak, strong, n_boot=20)[name][0]
        assert np.isnan(low) and np.isnan(high)


def test_a_run_compared_with_itself_differs_by_exactly_zero(pair):
    weak, _ = pair
    for point, low, high in paired_difference(weak, weak, n_boot=50).values():
        assert point == low == high == 0.0


def test_different_images_labels_or_columns_are_refused(pair):
    weak, strong = pair
    with pytest.raises(ValueError, match="different images .*1 only in A"):
        paired_difference(weak, strong.iloc[1:], n_boot=10)
    relabelled = strong.assign(label=np.roll(strong["label"].to_numpy(), 1))
    with pytest.raises(ValueError, match="different labels"):
        paired_difference(weak, relabelled, n_boot=10)
    with pytest.raises(ValueError, match=r"lack columns \['lesion_id'\]"):
        paired_difference(weak.drop(columns="lesion_id"), strong, n_boot=10)
    with pytest.raises(ValueError, match="unknown metric 'auroc'; choose from .* recall_akiec"):
        paired_difference(weak, strong, ["auroc"], n_boot=10)


def test_class_recalls_are_paired_like_the_headline_metrics(pair):
    weak, strong = pair
    diffs = paired_difference(weak, strong, ["recall_mel", "balanced_accuracy"], n_boot=200)
    labels = weak["label"].to_numpy()
    is_mel = labels == CLASSES.index("mel")
    recall = {
        name: (frame[list(PROB_COLUMNS)].to_numpy()[is_mel].argmax(axis=1) == 4).mean()
        for name, frame in (("weak", weak), ("strong", strong))
    }
    change, low, high = diffs["recall_mel"]
    assert change == pytest.approx(recall["strong"] - recall["weak"]) and low <= change <= high
    # Balanced accuracy is the mean of the seven recalls, paired or not.
    recalls = [paired_difference(weak, strong, [f"recall_{c}"], n_boot=0) for c in CLASSES]
    mean_change = np.mean([r[f"recall_{c}"][0] for r, c in zip(recalls, CLASSES, strict=True)])
    assert diffs["balanced_accuracy"][0] == pytest.approx(mean_change)


def test_evaluate_keeps_the_test_predictions_beside_the_record(two_runs):
    results, run = two_runs["results"], two_runs["newer"]
    kept = read_committed_predictions(results, "b0-newer")
    original = read_predictions(run, "test")
    assert list(kept.columns) == ["image_id", "lesion_id", "dx", "label", *PROB_COLUMNS]
    assert kept["image_id"].tolist() == original["image_id"].tolist()
    assert kept["lesion_id"].tolist() == original["lesion_id"].tolist()
    np.testing.assert_allclose(
        kept[list(PROB_COLUMNS)], original[list(PROB_COLUMNS)], atol=5e-7
    )  # 6 decimals
    record = next(r for r in read_run_records(results) if r["run_name"] == "b0-newer")
    assert record["test_predictions"] == "runs/b0-newer_test.csv"
    # the kept copy stands in for the run folder's predictions in a comparison
    diff = paired_difference(original, kept, n_boot=20)
    assert all(abs(v) < 1e-5 for point_and_interval in diff.values() for v in point_and_interval)


def test_a_run_without_kept_predictions_names_the_fix(tmp_path):
    with pytest.raises(FileNotFoundError, match="skin-tf evaluate RUN_DIR"):
        read_committed_predictions(tmp_path, "baseline-cpu")
    assert committed_predictions_path(tmp_path, "x") == tmp_path / "runs" / "x_test.csv"


def test_paired_mean_differences_keep_the_pairing_of_each_image():
    from skin_tf.evaluation.compare import paired_mean_differences

    rng = np.random.default_rng(0)
    hard = rng.uniform(0.1, 0.9, 120)  # how hard each image is, shared by both columns
    scores = pd.DataFrame({"ref": hard, "better": hard - 0.02 + rng.normal(0, 0.005, 120)})
    lesions = [f"L{i // 2}" for i in range(120)]
    table = paired_mean_differences(scores, "ref", lesions, n_boot=300, seed=1)
    row = table.loc["better"]
    assert row["diff"] == pytest.approx(scores["better"].mean() - scores["ref"].mean())
    assert row["diff_low"] <= row["diff"] <= row["diff_high"] < 0  # clearly below 0 …
    assert row["high"] > scores["ref"].mean()  # … though the two means' own intervals overlap
    assert table.loc["ref", "diff"] == 0.0 and table.loc["ref", "diff_high"] == 0.0
    points = paired_mean_differences(scores, "ref", lesions, n_boot=0)
    assert np.isnan(points.loc["better", "diff_low"])
    with pytest.raises(ValueError, match="reference"):
        paired_mean_differences(scores, "centre", lesions)
    with pytest.raises(ValueError, match="one per image"):
        paired_mean_differences(scores, "ref", lesions[:3])
