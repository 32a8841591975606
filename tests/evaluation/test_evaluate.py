"""evaluate_run: metrics.json against scikit-learn, intervals, figures, summary, TTA."""

from __future__ import annotations

import json
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
    recall_score,
    roc_auc_score,
)

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.evaluation.evaluate import (
    TTA_VIEWS,
    dihedral_views,
    evaluate_run,
    predict_tta,
    tta_predictions_path,
    tta_views,
)
from skin_tf.evaluation.metrics import PROB_COLUMNS
from skin_tf.runs import provenance

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"
CI_KEYS = (
    "accuracy",
    "macro_f1",
    "balanced_accuracy",
    "mel_sensitivity",
    "mel_specificity",
    "mel_roc_auc",
)


def noisy_probs(labels: np.ndarray, rng: np.random.Generator, signal: float = 1.5) -> np.ndarray:
    logits = rng.normal(size=(len(labels), len(CLASSES)))
    logits[np.arange(len(labels)), labels] += signal
    exp = np.exp(logits - logits.max(axis=1, keepdims=True))
    return exp / exp.sum(axis=1, keepdims=True)


def fake_split(n: int, seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Labels with every class, probabilities that lean to the truth, two images per lesion."""
    rng = np.random.default_rng(seed)
    labels = np.concatenate([np.arange(len(CLASSES)), rng.integers(0, len(CLASSES), n - 7)])
    return labels, noisy_probs(labels, rng), np.arange(n) // 2


def write_fake_run(
    runs: Path, name: str, n: int = 240, seed: int = 0, created: str = "2025-01-01T00:00:00Z"
) -> tuple[Path, dict[str, tuple[np.ndarray, np.ndarray, np.ndarray]]]:
    """A run directory as train() leaves it, minus best.keras: known predictions per split."""
    run_dir = runs / f"20250101T000000Z__{name}"
    run_dir.mkdir(parents=True)
    splits = {"val": fake_split(n, seed), "test": fake_split(n, seed + 1)}
    rows = []
    for split, (labels, probs, lesions) in splits.items():
        ids = [f"ISIC_{split}{i:05d}" for i in range(n)]
        dx = [CLASSES[k] for k in labels]
        frame = pd.DataFrame({"image_id": ids, "dx": dx})
        frame[list(PROB_COLUMNS)] = probs
        frame.to_csv(run_dir / f"predictions_{split}.csv", index=False)
        rows.append(
            pd.DataFrame(
                {"image_id": ids, "lesion_id": [f"L_{split}{x}" for x in lesions], "dx": dx}
            ).assign(split=split)
        )
    pd.concat(rows).to_csv(run_dir / "splits.csv", index=False)
    meta = {
        "run_name": name,
        "config_name": "baseline",
        "profile": "cpu",
        "created_utc": created,
        "git_sha": "abc1234",
        "model": "efficientnet_b0",
        "weights": "none",
        "image_size": 112,
        "epochs": 4,
        "hardware": "CPU (2 cores)",
        "data": {"root": "/nowhere", "source_size": "200x150", "n_images": 2 * n},
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))
    config = {"name": "baseline", "image_size": 112, "select_metric": "val_loss", "bootstrap": 50}
    (run_dir / "config.json").write_text(json.dumps(config))
    pd.DataFrame(
        {
            "epoch": [0, 1, 2],
            "acc": [0.3, 0.5, 0.6],
            "loss": [1.9, 1.4, 1.2],
            "val_acc": [0.35, 0.5, 0.48],
            "val_loss": [1.8, 1.3, 1.35],
            "val_balanced_acc": [0.2, 0.3, 0.32],
        }
    ).to_csv(run_dir / "history.csv", index=False)
    return run_dir, splits


@pytest.fixture()
def fake_run(tmp_path):
    return write_fake_run(tmp_path / "runs", "unit-b0")


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One fake run evaluated once (200 resamples) for the read-only checks below."""
    tmp_path = tmp_path_factory.mktemp("evaluated")
    run_dir, splits = write_fake_run(tmp_path / "runs", "unit-b0")
    results = tmp_path / "results"
    result = evaluate_run(run_dir, results_dir=results, n_boot=200)
    return run_dir, splits, results, result


def test_metrics_json_matches_scikit_learn(evaluated):
    run_dir, splits, _, _ = evaluated
    stored = json.loads((run_dir / "metrics.json").read_text())
    for split, (y, probs, _) in splits.items():
        m, pred = stored[split], probs.argmax(axis=1)
        assert m["accuracy"] == pytest.approx(accuracy_score(y, pred))
        assert m["macro_f1"] == pytest.approx(f1_score(y, pred, average="macro"))
        assert m["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(y, pred))
        precision, recall, f1, support = precision_recall_fscore_support(y, pred)
        for i, code in enumerate(CLASSES):
            assert m["per_class"][code]["precision"] == pytest.approx(precision[i])
            assert m["per_class"][code]["recall"] == pytest.approx(recall[i])
            assert m["per_class"][code]["f1"] == pytest.approx(f1[i])
            assert m["per_class"][code]["support"] == support[i]
        is_mel, called = y == MEL_INDEX, pred == MEL_INDEX
        assert m["mel_sensitivity"] == pytest.approx(recall_score(is_mel, called))
        assert m["mel_specificity"] == pytest.approx(recall_score(~is_mel, ~called))
        assert m["mel_roc_auc"] == pytest.approx(roc_auc_score(is_mel, probs[:, MEL_INDEX]))
        assert m["mel_average_precision"] == pytest.approx(
            average_precision_score(is_mel, probs[:, MEL_INDEX])
        )
        assert m["confusion_matrix"] == confusion_matrix(y, pred).tolist()
        assert m["n_images"] == len(y) and m["n_lesions"] == len(y) // 2
    assert stored["evaluation"]["n_boot"] == 200 and "tta" not in stored


def test_every_headline_number_has_an_interval_around_it(evaluated):
    metrics = evaluated[3]["metrics"]
    for split in ("val", "test"):
        m = metrics[split]
        assert "lesions" in m["ci_method"]
        for key in CI_KEYS:
            lo, hi = m["ci"][key]
            assert lo <= m[key] <= hi, (split, key)
            assert lo < hi, (split, key)
        for code in CLASSES:
            lo, hi = m["ci_per_class_recall"][code]
            assert lo <= m["per_class"][code]["recall"] <= hi, (split, code)


def test_bootstrap_count_defaults_to_the_run_config_and_zero_means_none(fake_run, tmp_path):
    run_dir, _ = fake_run
    default = evaluate_run(run_dir, results_dir=tmp_path / "r")["metrics"]
    assert default["evaluation"]["n_boot"] == 50  # the config's "bootstrap"
    metrics = evaluate_run(run_dir, results_dir=tmp_path / "r", n_boot=0)["metrics"]
    assert metrics["test"]["ci"] == {} and metrics["test"]["accuracy"] > 0
    summary = (tmp_path / "r" / "summary_unit-b0.md").read_text()
    assert "[" not in summary.split("## Headline")[1].split("## Per class")[0]  # no intervals


def test_figures_are_written_as_pngs(evaluated):
    _, _, results, result = evaluated
    figures = result["figures"]
    assert set(figures) == {"confusion", "curves", "recall"}
    for key, path in figures.items():
        assert path == results / "figures" / f"unit-b0_{key}.png"
        data = path.read_bytes()
        assert data.startswith(PNG_MAGIC) and len(data) > 10_000, key


def test_no_history_means_no_curves_figure(fake_run, tmp_path):
    run_dir, _ = fake_run
    (run_dir / "history.csv").unlink()
    figures = evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=20)["figures"]
    assert set(figures) == {"confusion", "recall"}


def test_summary_says_what_produced_it_and_holds_the_tables(evaluated):
    run_dir, _, results, result = evaluated
    metrics = result["metrics"]
    text = (results / "summary_unit-b0.md").read_text()
    assert provenance(run_dir) in text
    assert "HAM10000 200x150 copy" in text and "weights: none" in text
    assert "not a medical device" in text
    assert "chosen on val by val_loss" in text
    test = metrics["test"]
    lo, hi = test["ci"]["balanced_accuracy"]
    row = f"| {test['balanced_accuracy']:.3f} [{lo:.3f}, {hi:.3f}] |"
    assert "| balanced accuracy (ISIC 2018 metric) |" in text and row in text
    for code in CLASSES:
        assert f"| {code} |" in text
    for name in ("confusion", "curves", "recall"):
        assert f"(figures/unit-b0_{name}.png)" in text
    assert "No melanoma operating point yet" in text
    assert "No temperature scaling" in text


def test_summary_and_record_show_the_operating_point_and_temperature(fake_run, tmp_path):
    from skin_tf.evaluation.calibration import calibrate_run
    from skin_tf.evaluation.threshold import threshold_run

    run_dir, _ = fake_run
    results = tmp_path / "results"
    calibration = calibrate_run(run_dir, results_dir=results)
    point = threshold_run(run_dir, results_dir=results, n_boot=20)
    evaluate_run(run_dir, results_dir=results, n_boot=20)
    text = (results / "summary_unit-b0.md").read_text()
    assert f"P(mel) >= **{point['threshold']:.4f}**" in text
    assert f"{point['test']['sensitivity']:.3f} [" in text
    assert f"T = {calibration['temperature']:.3f}" in text
    assert "(mel_threshold_unit-b0.md)" in text
    record = json.loads((results / "runs" / "unit-b0.json").read_text())
    assert record["operating_point"]["threshold"] == pytest.approx(point["threshold"])
    assert record["operating_point"]["val"]["sensitivity"] == pytest.approx(
        point["val"]["sensitivity"]
    )
    assert record["temperature"]["value"] == pytest.approx(calibration["temperature"])


def test_existing_tta_predictions_give_a_separate_block(fake_run, tmp_path):
    run_dir, splits = fake_run
    rng = np.random.default_rng(7)
    tta_probs = {}
    for split, (labels, _, _) in splits.items():
        frame = pd.read_csv(run_dir / f"predictions_{split}.csv")
        tta_probs[split] = noisy_probs(labels, rng, signal=3.0)
        frame[list(PROB_COLUMNS)] = tta_probs[split]
        frame.iloc[::-1].to_csv(tta_predictions_path(run_dir, split), index=False)  # any order
    metrics = evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=20)["metrics"]
    plain_y, plain_probs, _ = splits["test"]
    assert metrics["test"]["accuracy"] == pytest.approx(
        accuracy_score(plain_y, plain_probs.argmax(axis=1))
    )
    assert metrics["tta"]["test"]["accuracy"] == pytest.approx(
        accuracy_score(plain_y, tta_probs["test"].argmax(axis=1))
    )
    assert metrics["tta"]["views"] == list(TTA_VIEWS)
    assert "ci" in metrics["tta"]["val"]
    # The paired change is TTA minus plain on the same images, per split.
    for split, (labels, probs, _) in splits.items():
        change, low, high = metrics["tta"]["gain"][split]["balanced_accuracy"]
        expected = balanced_accuracy_score(labels, tta_probs[split].argmax(1)) - (
            balanced_accuracy_score(labels, probs.argmax(1))
        )
        assert change == pytest.approx(expected) and low <= change <= high
    summary = (tmp_path / "results/summary_unit-b0.md").read_text()
    assert "With test-time augmentation" in summary
    assert "| balanced accuracy (ISIC 2018 metric) | " in summary.split("TTA minus the plain")[1]


def test_tta_predictions_without_resamples_give_bare_changes(fake_run, tmp_path):
    run_dir, _ = fake_run
    for split in ("val", "test"):
        pd.read_csv(run_dir / f"predictions_{split}.csv").to_csv(
            tta_predictions_path(run_dir, split), index=False
        )
    metrics = evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=0)["metrics"]
    assert metrics["tta"]["gain"]["test"]["balanced_accuracy"] == [0.0, None, None]
    summary = (tmp_path / "results/summary_unit-b0.md").read_text()
    assert "| balanced accuracy (ISIC 2018 metric) | +0.000 | +0.000 |" in summary


def test_tta_predictions_of_other_images_are_refused(fake_run, tmp_path):
    run_dir, _ = fake_run
    for split in ("val", "test"):
        frame = pd.read_csv(run_dir / f"predictions_{split}.csv")
        frame.iloc[1:].to_csv(tta_predictions_path(run_dir, split), index=False)
    with pytest.raises(ValueError, match="same images"):
        evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=20)


def test_missing_run_dir_and_missing_predictions_are_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="not found"):
        evaluate_run(tmp_path / "nope", results_dir=tmp_path / "results")
    run_dir, _ = write_fake_run(tmp_path / "runs", "partial")
    (run_dir / "predictions_test.csv").unlink()
    with pytest.raises(ValueError, match="predictions_test.csv not found"):
        evaluate_run(run_dir, results_dir=tmp_path / "results")


def test_tta_without_a_model_says_so(fake_run, tmp_path):
    run_dir, _ = fake_run
    with pytest.raises(FileNotFoundError, match="best.keras"):
        evaluate_run(run_dir, tta=True, results_dir=tmp_path / "results", n_boot=0)


def test_dihedral_views_are_the_eight_flips_and_rotations():
    image = np.arange(2 * 4 * 4 * 1, dtype=np.float32).reshape(2, 4, 4, 1)
    views = dihedral_views(image).numpy().reshape(8, 2, 4, 4, 1)
    expected = []
    for k in range(4):
        turned = np.rot90(image, k, axes=(1, 2))
        expected += [turned, turned[:, :, ::-1]]
    np.testing.assert_array_equal(views, np.stack(expected))
    assert len({v[0].tobytes() for v in views}) == 8  # an asymmetric image: 8 distinct views


def test_a_non_square_image_gets_the_four_views_that_keep_its_shape():
    image = np.arange(2 * 3 * 5 * 1, dtype=np.float32).reshape(2, 3, 5, 1)
    assert tta_views(image.shape[1:3]) == ("identity", "flip", "rot180", "rot180+flip")
    views = dihedral_views(image).numpy().reshape(4, 2, 3, 5, 1)
    turned = np.rot90(image, 2, axes=(1, 2))
    expected = [image, image[:, :, ::-1], turned, turned[:, :, ::-1]]
    np.testing.assert_array_equal(views, np.stack(expected))


def test_predict_tta_averages_the_model_over_the_views():
    import keras
    import tensorflow as tf

    keras.utils.set_random_seed(0)
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Flatten()(inputs)
    model = keras.Model(inputs, keras.layers.Dense(7, activation="softmax")(x))
    images = np.random.default_rng(0).uniform(0, 255, (5, 8, 8, 3)).astype(np.float32)
    dataset = tf.data.Dataset.from_tensor_slices((images, np.zeros(5, np.int32))).batch(2)
    views = dihedral_views(images).numpy().reshape(8, 5, 8, 8, 3)
    expected = np.mean([model.predict(v, verbose=0) for v in views], axis=0)
    np.testing.assert_allclose(predict_tta(model, dataset), expected, atol=1e-5)


@pytest.mark.slow
def test_tta_on_a_tiny_real_model(real_frame, real_data_root, tmp_path):
    """best.keras of a 32-px B0 (random weights) on real images: TTA gets its own block."""
    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    one_per_lesion = real_frame.drop_duplicates("lesion_id")
    chosen = one_per_lesion.groupby("dx", group_keys=False).head(2)  # 14 images, every class
    run_dir = tmp_path / "runs" / "20250101T000000Z__tta-tiny"
    run_dir.mkdir(parents=True)
    splits = chosen[["image_id", "lesion_id", "dx"]].assign(
        split=np.where(np.arange(len(chosen)) % 2 == 0, "val", "test")
    )
    splits.to_csv(run_dir / "splits.csv", index=False)
    model = build_classifier("efficientnet_b0", image_size=32, weights=None)
    # At initialisation the pooled features are ~1e-6 (BatchNorm moving statistics), so the
    # softmax is flat whatever the image; a large head makes the output depend on the image.
    head = model.get_layer("predictions")
    kernel = np.random.default_rng(0).normal(0, 1e5, head.kernel.shape)
    head.kernel.assign(kernel.astype("float32"))
    model.save(run_dir / "best.keras")
    for split in ("val", "test"):
        frame = chosen[splits["split"].to_numpy() == split]
        probs = model.predict(make_dataset(frame, 32, training=False, batch_size=8), verbose=0)
        out = frame[["image_id", "dx"]].copy()
        out[list(PROB_COLUMNS)] = probs / probs.sum(axis=1, keepdims=True)
        out.to_csv(run_dir / f"predictions_{split}.csv", index=False)
    (run_dir / "config.json").write_text(json.dumps({"image_size": 32, "resize": "squash"}))
    meta = {
        "run_name": "tta-tiny",
        "model": "efficientnet_b0",
        "weights": "none",
        "image_size": 32,
        "epochs": 1,
        "hardware": "CPU",
        "data": {"root": str(real_data_root), "source_size": "200x150", "n_images": 14},
    }
    (run_dir / "meta.json").write_text(json.dumps(meta))

    metrics = evaluate_run(run_dir, tta=True, results_dir=tmp_path / "results", n_boot=10)[
        "metrics"
    ]
    for split in ("val", "test"):
        tta = pd.read_csv(tta_predictions_path(run_dir, split))
        plain = pd.read_csv(run_dir / f"predictions_{split}.csv")
        assert tta["image_id"].tolist() == plain["image_id"].tolist()
        np.testing.assert_allclose(tta[list(PROB_COLUMNS)].sum(axis=1), 1.0, atol=1e-4)
        # Random weights are not rotation invariant: averaging 8 views changes the probabilities.
        assert not np.allclose(tta[list(PROB_COLUMNS)], plain[list(PROB_COLUMNS)], atol=1e-4)
        assert metrics["tta"][split]["n_images"] == 7
    stored = json.loads((run_dir / "metrics.json").read_text())
    assert set(stored) >= {"val", "test", "tta", "evaluation"}


def test_what_training_recorded_in_metrics_json_is_kept(fake_run, tmp_path):
    run_dir, _ = fake_run
    stored = {"select_metric": "val_loss", "best_epoch": 3, "epochs_trained": 3, "test": {}}
    (run_dir / "metrics.json").write_text(json.dumps(stored))
    metrics = evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=0)["metrics"]
    assert metrics["best_epoch"] == 3 and metrics["epochs_trained"] == 3
    assert metrics["test"]["accuracy"] > 0  # the old (empty) block was recomputed
    assert "best.keras is epoch 3" in (tmp_path / "results/summary_unit-b0.md").read_text()


def test_without_training_record_the_kept_epoch_comes_from_history(fake_run, tmp_path):
    run_dir, _ = fake_run  # history.csv: val_loss is lowest at epoch index 1
    evaluate_run(run_dir, results_dir=tmp_path / "results", n_boot=0)
    assert "best.keras is epoch 2" in (tmp_path / "results/summary_unit-b0.md").read_text()
