"""The cVAE study: recognisability, the paired comparison, and what the report says."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest

from skin_tf.cvae.quality import (
    compare_runs,
    cvae_report,
    recognisability,
    verdict,
    wilson_interval,
)
from skin_tf.cvae.synth import synth_to_folder
from skin_tf.data.ham10000 import CLASSES

# ------------------------------------------------------------------------------ quality checks


def _always(dx: str, size: int = 32) -> keras.Model:
    """A classifier that gives every image to class `dx` (P = 0.9)."""
    bias = np.full(len(CLASSES), np.log(0.1 / (len(CLASSES) - 1)), "float32")
    bias[CLASSES.index(dx)] = np.log(0.9)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))  # fmt: skip
    return keras.Model(inputs, dense(pooled))


def test_recognisability_counts_what_the_classifier_says(tiny_run, tmp_path):
    out = tmp_path / "synth"
    synth_to_folder(tiny_run, per_class=4, out=out, classes=["mel", "nv"])
    table = recognisability(_always("mel", size=48), out).set_index("dx")
    assert list(table.index) == ["mel", "nv"]
    assert table.loc["mel", "recognised"] == 1.0 and table.loc["nv", "recognised"] == 0.0
    assert table.loc["nv", "top_other"] == "mel"
    np.testing.assert_allclose(table["mean_p_dx"], [0.9, 0.1 / 6], rtol=1e-5)
    assert table.loc["mel", "ci_low"] < 1.0 == table.loc["mel", "ci_high"]
    assert table["real_val_recall"].isna().all()  # a bare model has no run to compare with


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert all(np.isnan(wilson_interval(0, 0)))


def _classifier_run(folder: Path, probs: np.ndarray, labels: np.ndarray, synthetic_dir=None):
    """A minimal evaluated classifier run: config, meta, splits, test predictions, metrics."""
    from skin_tf.evaluation.metrics import PROB_COLUMNS, evaluate_split, read_predictions
    from skin_tf.runs import json_ready

    folder.mkdir(parents=True)
    ids = [f"ISIC_{i:07d}" for i in range(len(labels))]
    dx = [CLASSES[i] for i in labels]
    lesions = [f"L{i // 2}" for i in range(len(ids))]
    splits = pd.DataFrame({"image_id": ids, "lesion_id": lesions, "dx": dx, "split": "test"})
    splits.to_csv(folder / "splits.csv", index=False)
    frame = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    frame.insert(0, "dx", dx)
    frame.insert(0, "image_id", ids)
    frame.to_csv(folder / "predictions_test.csv", index=False)
    config = {"name": folder.name, "epochs": 3, "synthetic_dir": synthetic_dir}
    (folder / "config.json").write_text(json.dumps(config))
    meta = {"run_name": folder.name, "model": "efficientnet_b0", "weights": "none",
            "image_size": 32, "epochs": 3, "hardware": "CPU (2 cores)",
            "data": {"source_size": "200x150"}}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    metrics = {"test": json_ready(evaluate_split(read_predictions(folder, "test"), n_boot=50))}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_runs_and_report(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    noise = rng.dirichlet(np.ones(len(CLASSES)), len(labels))
    good = 0.5 * np.eye(len(CLASSES))[labels] + 0.5 * noise
    base = _classifier_run(tmp_path / "base", noise, labels)
    with_synth = _classifier_run(tmp_path / "synth", good, labels, synthetic_dir="artifacts/s")
    result = compare_runs(base, with_synth, n_boot=200)
    value, low, high = result["diff"]["balanced_accuracy"]
    expected = result["metrics"]["with_synth"]["balanced_accuracy"]
    assert value == pytest.approx(expected - result["metrics"]["baseline"]["balanced_accuracy"])
    assert 0 < low <= value <= high
    assert verdict(result).startswith("Synthetic images improved")
    assert verdict({"diff": {"balanced_accuracy": (0.01, -0.02, 0.04)}}).startswith(
        "No measurable benefit"
    )
    assert verdict({"diff": {"balanced_accuracy": (-0.05, -0.08, -0.01)}}).startswith(
        "Synthetic images made test balanced accuracy worse"
    )
    assert result["config_differences"] == []
    with pytest.raises(ValueError, match="synthetic_dir=null"):
        compare_runs(base, base)
    stored = json.loads((with_synth / "config.json").read_text())
    stored["strategy"] = "auto"  # written out by a newer version: the default, no difference
    (with_synth / "config.json").write_text(json.dumps(stored))
    assert compare_runs(base, with_synth, n_boot=20)["config_differences"] == []
    stored["epochs"] = 4
    (with_synth / "config.json").write_text(json.dumps(stored))
    assert compare_runs(base, with_synth, n_boot=20)["config_differences"] == ["epochs"]

    path = cvae_report(tiny_run, tmp_path / "results", baseline_run=base, synth_run=with_synth,
                       n_boot=50, figures=False)  # fmt: skip
    text = path.read_text()
    assert path.name == "summary_cvae.md"
    assert "| balanced_accuracy |" in text and "**Verdict:** Synthetic images improved" in text
    assert "Recognisability" in text and "Not measured yet" in text  # no classifier given
    assert tiny_run.name in text and "200x150" in text  # provenance


def test_report_says_plainly_what_is_not_measured(tiny_run, tmp_path):
    text = cvae_report(tiny_run, tmp_path, n_boot=20, figures=False).read_text()
    assert "have not been done, so there is no evidence either way" in text
    assert "| all |" in text  # the reconstruction table is always measured
