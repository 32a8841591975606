"""What the patient fields add (skin_tf.evaluation.meta_gain), on two real smoke runs."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.evaluation.compare import paired_difference
from skin_tf.evaluation.meta_gain import (
    CASES,
    GAIN_METRICS,
    predict_with_fields_withheld,
    write_metadata_gain,
)
from skin_tf.evaluation.metrics import PROB_COLUMNS, read_predictions

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def two_runs(real_data_root, tmp_path_factory):
    """An image-only smoke run and the same recipe with age, sex and site, on one split."""
    from skin_tf.training import load_config, train

    runs = tmp_path_factory.mktemp("runs")
    fields = 'metadata=["age","sex","localization"]'
    image_only = train(load_config("baseline", profile="smoke"), real_data_root, runs, "image")
    with_fields = train(
        load_config("baseline", profile="smoke", overrides=[fields]), real_data_root, runs, "fields"
    )
    return image_only, with_fields


def test_the_gain_is_paired_on_the_same_images_with_all_fields_and_with_none(two_runs, tmp_path):
    image_only, with_fields = two_runs
    path = write_metadata_gain(image_only, with_fields, tmp_path, n_boot=50)
    table = pd.read_csv(path.with_suffix(".csv"))
    assert table["case"].unique().tolist() == list(CASES)
    assert table[table["case"] == CASES[0]]["metric"].tolist() == list(GAIN_METRICS)
    diff = table["with_fields"] - table["image_only"]  # each written to 4 decimals
    np.testing.assert_allclose(table["difference"], diff, atol=2e-4)
    # "all given" is the two runs' own test predictions, paired.
    given = paired_difference(
        read_predictions(image_only, "test"), read_predictions(with_fields, "test"), n_boot=0
    )
    row = table.set_index(["case", "metric"]).loc[(CASES[0], "balanced_accuracy")]
    assert row["difference"] == pytest.approx(given["balanced_accuracy"][0], abs=1e-4)
    metrics = json.loads((image_only / "metrics.json").read_text())["test"]
    assert row["image_only"] == pytest.approx(metrics["balanced_accuracy"], abs=1e-4)
    assert (path.parent / "fields.png").is_file()
    text = path.read_text()
    assert "| none given | recall_mel |" in text and "(age, sex, localization)" in text
    assert "Kept checkpoints: epoch 1 of 1 by val_loss (image-only)" in text


def test_withheld_fields_are_the_blank_vector_beside_each_image(two_runs, real_data_root):
    import keras

    from skin_tf.data.meta_fields import META_FIELDS, blank_vector
    from skin_tf.data.pipeline import load_image

    _, with_fields = two_runs
    withheld = predict_with_fields_withheld(with_fields, "test")
    given = read_predictions(with_fields, "test")
    assert withheld["image_id"].tolist() == given["image_id"].tolist()
    assert not np.allclose(withheld[list(PROB_COLUMNS)], given[list(PROB_COLUMNS)])
    model = keras.saving.load_model(with_fields / "best.keras", compile=False)
    first = withheld.head(4)
    paths = [next(real_data_root.rglob(f"{image_id}.jpg")) for image_id in first["image_id"]]
    images = np.stack([load_image(p, 64) for p in paths]).astype("float32")
    blank = np.repeat(blank_vector(META_FIELDS)[None], len(paths), axis=0)
    expected = model.predict({"image": images, "metadata": blank}, verbose=0)
    np.testing.assert_allclose(first[list(PROB_COLUMNS)], expected, atol=1e-5)


def test_the_runs_must_be_image_only_then_with_fields(two_runs, tmp_path):
    image_only, with_fields = two_runs
    with pytest.raises(ValueError, match="takes patient fields .*give an image-only run first"):
        write_metadata_gain(with_fields, image_only, tmp_path, n_boot=10)
    with pytest.raises(ValueError, match="takes no patient fields"):
        predict_with_fields_withheld(image_only)


def test_the_command_prints_the_headline_changes_and_names_its_files(two_runs, tmp_path, capsys):
    from skin_tf.cli.main import main

    image_only, with_fields = two_runs
    argv = ["meta-gain", str(image_only), str(with_fields), "--results", str(tmp_path)]
    assert main([*argv, "--bootstrap", "20"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert [line.split()[:3] for line in lines[:4]] == [
        ["all", "given", "balanced_accuracy"], ["all", "given", "mel_roc_auc"],
        ["none", "given", "balanced_accuracy"], ["none", "given", "mel_roc_auc"],
    ]  # fmt: skip
    assert lines[-1].startswith(f"wrote {tmp_path / 'metadata' / 'fields.md'}")
    assert main(["meta-gain", str(with_fields), str(image_only), "--results", str(tmp_path)]) == 2
    assert "error: " in capsys.readouterr().err


def test_the_validation_comparison_is_its_own_report(two_runs, tmp_path):
    image_only, with_fields = two_runs
    test = write_metadata_gain(image_only, with_fields, tmp_path, n_boot=10)
    val = write_metadata_gain(image_only, with_fields, tmp_path, n_boot=10, split="val")
    assert val == tmp_path / "metadata" / "fields_val.md" and test.is_file()
    table = pd.read_csv(val.with_suffix(".csv")).set_index(["case", "metric"])
    metrics = json.loads((image_only / "metrics.json").read_text())["val"]
    expected = metrics["balanced_accuracy"]
    assert table.loc[(CASES[0], "balanced_accuracy"), "image_only"] == pytest.approx(
        expected, abs=1e-4
    )
    text = val.read_text()
    assert text.startswith("# What the patient fields add: fields (fields_val)")
    assert "val split" in text and "![per-class recall changes](fields_val.png)" in text


def test_a_run_with_fields_is_evaluated_with_tta_like_any_run(two_runs, tmp_path):
    from skin_tf.evaluation.evaluate import evaluate_run

    _, with_fields = two_runs
    result = evaluate_run(with_fields, tta=True, results_dir=tmp_path, n_boot=20)
    tta = pd.read_csv(with_fields / "predictions_test_tta.csv")
    plain = read_predictions(with_fields, "test")
    assert tta["image_id"].tolist() == plain["image_id"].tolist()
    assert 0 <= result["metrics"]["tta"]["test"]["balanced_accuracy"] <= 1


def test_explain_check_holds_each_images_recorded_fields(two_runs, tmp_path):
    import keras

    from skin_tf.data.meta_fields import blank_vector
    from skin_tf.data.pipeline import load_image
    from skin_tf.explain.checks import (
        CheckConfig,
        explain_check_run,
        held_out_images,
        pick_images,
        recorded_fields,
    )
    from skin_tf.explain.faithfulness import probability_function

    _, with_fields = two_runs
    config = CheckConfig(images=6, methods=("gradcam",), randomization_images=3, cascade_depth=2,
                         n_boot=20, steps=4)  # fmt: skip
    record = explain_check_run(with_fields, tmp_path / "checks", config)
    names = record["patient_fields"]
    assert names == ["age", "sex", "localization"]
    assert (
        "**Patient fields**: the model also takes age, sex, localization"
        in Path(record["report"]).read_text()
    )
    # Every curve starts from the model's answer given each image's recorded fields.
    picked = pick_images(held_out_images(with_fields), config.images, config.seed)
    fields = recorded_fields(picked, names)
    model = keras.models.load_model(with_fields / "best.keras", compile=False)
    hw = tuple(record["input_size"])
    images = np.stack([load_image(path, hw, "squash") for path in picked["path"]])
    predict = probability_function(model)
    given = predict(images, fields).max(axis=1).mean()
    blank = predict(images, np.repeat(blank_vector(names)[None], len(images), 0)).max(axis=1)
    start = record["mean_curves"]["centre"]["deletion"][0]
    assert start == pytest.approx(given, abs=1e-5)
    assert abs(blank.mean() - given) > 1e-4  # the smoke model reads the fields: held, not blank
    with pytest.raises(ValueError, match="give them"):
        predict(images)
