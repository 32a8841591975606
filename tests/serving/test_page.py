"""What the page writes, as a real-browser pass found it wanting (issue 17, item 4): the melanoma
box quotes the threshold's test figures and does not read as an all-clear; the "All predictions"
table and its CSV; short model- and engine-picker labels. The older page-helper tests, and the
page under AppTest, are in test_app.py."""

from __future__ import annotations

import io
import json

import numpy as np
import pandas as pd
import pytest

from skin_tf.serving import page as support
from skin_tf.serving import upload as analysis
from tests.serving.test_app import METADATA, fake_export, mel_probs

# ---------------------------------------------------------------- the melanoma box

# An int8 engine's own threshold, re-chosen on validation at export: it has no test figures.
INT8_POINT = {
    "value": 0.2968,
    "chosen_on": "val (re-chosen for this model)",
    "val_sensitivity": 0.857,
    "val_specificity": 0.696,
}


def test_below_the_threshold_says_what_the_threshold_misses_on_test():
    text = support.mel_flag_text(mel_probs(0.1), METADATA["mel_threshold"])
    assert text.startswith(
        "**Below the melanoma threshold**, which is not an all-clear: "
        "P(mel) = 0.100 < threshold 0.300."
    )
    # test sensitivity 0.800: 20 in 100 melanomas were below this threshold on the test split
    assert (
        "At this threshold the model missed about 20 in 100 melanomas on the test split (test "
        "sensitivity 0.800, specificity 0.710; validation sensitivity 0.861, specificity 0.702)."
    ) in text
    assert "Not a diagnosis" in text
    assert "No melanoma flag" not in text


def test_a_raised_flag_quotes_the_test_figures_too():
    text = support.mel_flag_text(mel_probs(0.5), METADATA["mel_threshold"])
    assert text.startswith("**Melanoma flag raised**: P(mel) = 0.500 ≥ threshold 0.300 (")
    assert "test sensitivity 0.800, specificity 0.710" in text and "Not a diagnosis" in text


def test_an_engine_threshold_without_test_figures_quotes_the_run_s_and_says_so():
    text = support.mel_flag_text(mel_probs(0.1), INT8_POINT, METADATA["mel_threshold"])
    assert "threshold 0.297. The model missed about 20 in 100 melanomas on the test split" in text
    assert (
        "(test sensitivity 0.800, specificity 0.710 at the run's threshold 0.300; validation "
        "sensitivity 0.857, specificity 0.696)"
    ) in text


def test_without_any_test_figures_the_validation_miss_rate_is_named_as_such():
    text = support.mel_flag_text(mel_probs(0.1), INT8_POINT)
    assert "At this threshold the model missed about 14 in 100 melanomas on the validation" in text
    assert "(not measured on the test split; validation sensitivity 0.857" in text
    perfect = {**METADATA["mel_threshold"], "test": {"sensitivity": 1.0, "specificity": 0.5}}
    assert "missed none of the melanomas of the test split" in support.mel_flag_text(
        mel_probs(0.1), perfect
    )


# ---------------------------------------------------------------- the table and its CSV


@pytest.fixture()
def table() -> pd.DataFrame:
    good = analysis.UploadResult(
        "a.jpg",
        probs=np.array([0.11190250659047866, 1e-06, 0.2, 0.0, 0.38809149340952134, 0.3, 5e-6]),
        notes=("greyscale image: converted to RGB (three equal channels). The model was trained "
               "on colour photographs, so treat its output with extra caution.",),
    )  # fmt: skip
    bad = analysis.UploadResult("c.jpg", error="truncated or damaged JPEG file: re-export it")
    return support.predictions_frame([good, bad], 0.16804608879589114, "demo", "tflite-int8")


def test_a_failed_upload_gets_no_threshold_and_no_flag(table):
    assert table["mel_threshold"][0] == pytest.approx(0.16804608879589114)
    assert table[["mel_threshold", "mel_flag", "p_mel", "top_class"]].iloc[1].isna().all()
    assert table["error"][1].startswith("truncated or damaged")


def test_the_csv_writes_every_number_with_four_decimals(table):
    text = support.predictions_csv(table).decode()
    assert "e-0" not in text and "0.11190250659047866" not in text
    back = pd.read_csv(io.StringIO(text), dtype=str, keep_default_na=False)
    assert back.loc[0, ["p_akiec", "p_bcc", "p_df", "p_mel", "p_vasc"]].tolist() == [
        "0.1119", "0.0000", "0.0000", "0.3881", "0.0000",
    ]  # fmt: skip
    assert back.loc[0, "mel_threshold"] == "0.1680"
    failed = back.iloc[1]
    assert (failed[[c for c in back.columns if c.startswith("p_")]] == "").all()
    assert failed["mel_threshold"] == failed["mel_flag"] == failed["notes"] == ""  # not "None"


def test_the_table_shows_numbers_as_the_csv_and_whole_notes_and_errors(table):
    config = support.table_column_config(table)
    assert config["p_mel"]["type_config"]["format"] == "%.4f"
    assert config["mel_threshold"]["type_config"]["format"] == "%.4f"
    for column in ("notes", "error"):
        longest = table[column].dropna().str.len().max()
        assert config[column]["width"] >= 7 * longest  # the grid's text: ~7 px a character


def test_the_table_shows_a_failure_s_reason_next_to_its_name_and_every_column(table):
    order = support.table_column_order(table)
    assert order[:2] == ["image", "error"] and sorted(order) == sorted(table.columns)


def test_a_rejected_upload_keeps_its_numbers_but_no_flag_and_says_why():
    """The guard's verdict in the table and its CSV: ood_score and in_distribution on every
    row; an upload it rejected has no melanoma threshold or flag, and a note saying why."""
    probs = np.array([0.05, 0.05, 0.1, 0.0, 0.7, 0.1, 0.0])
    kept = analysis.UploadResult("lesion.jpg", probs=probs, ood_score=1.2, in_distribution=True,
                                 ood_threshold=2.0)  # fmt: skip
    cat = analysis.UploadResult("cat.jpg", probs=probs, ood_score=41.7, in_distribution=False,
                                ood_threshold=2.0)  # fmt: skip
    frame = support.predictions_frame([kept, cat], 0.3, "demo", "tflite")
    assert frame["in_distribution"].tolist() == [True, False]
    assert frame["ood_score"].tolist() == [1.2, 41.7]
    assert frame["mel_flag"][0] is True and frame["mel_flag"][1] is None
    assert pd.isna(frame["mel_threshold"][1]) and frame["p_mel"][1] == 0.7  # numbers kept
    assert frame["notes"][1] == support.OOD_ROW_NOTE and pd.isna(frame["notes"][0])
    back = pd.read_csv(io.StringIO(support.predictions_csv(frame).decode()), dtype=str,
                       keep_default_na=False)  # fmt: skip
    assert back["ood_score"].tolist() == ["1.2000", "41.7000"]
    assert back["in_distribution"].tolist() == ["True", "False"]
    assert support.table_column_config(frame)["ood_score"]["type_config"]["format"] == "%.4f"
    unguarded = support.predictions_frame([analysis.UploadResult("a.jpg", probs=probs)], 0.3, "x")
    assert unguarded[["ood_score", "in_distribution"]].iloc[0].isna().all()


def test_text_column_width_counts_the_header_and_skips_empty_cells():
    assert support.text_column_width(pd.Series([None, None], name="error")) == 32 + 38
    assert support.text_column_width(pd.Series(["x" * 100, None], name="notes")) == 32 + 750


# ---------------------------------------------------------------- the model and engine pickers


def test_model_labels_are_short_and_the_details_stay_in_the_sidebar(tmp_path):
    folder = fake_export(tmp_path / "demo", run="a-long-run-name-that-would-be-cut")
    metadata = json.loads((folder / "metadata.json").read_text())
    metadata.update(model="efficientnet_lite0", input_size=[96, 96])
    (folder / "metadata.json").write_text(json.dumps(metadata))
    assert support.model_label(folder) == "demo · Lite0 96 px"
    assert support.backbone_short_name("efficientnet_b0") == "B0"
    assert support.backbone_short_name("resnet50") == "resnet50"
    assert "a-long-run-name-that-would-be-cut" in support.provenance_markdown(metadata)


def test_engine_labels_are_short_and_the_details_are_in_the_help():
    metadata = {
        "engines": {
            "tflite-int8": {"bytes": 4.0e6, "validation": {"balanced_accuracy": 0.652}},
            "savedmodel": {"validation": {"balanced_accuracy": 0.661}},
        }
    }
    assert support.engine_label(metadata, "tflite-int8") == "tflite-int8 · 4.0 MB"
    assert support.engine_label(metadata, "savedmodel") == "savedmodel"
    text = support.engine_help(metadata, ["tflite-int8", "savedmodel"])
    assert "- `tflite-int8`: LiteRT int8, 4.0 MB, val balanced accuracy 0.652" in text
    assert "- `savedmodel`: SavedModel, val balanced accuracy 0.661" in text
