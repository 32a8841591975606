"""The "All predictions" table and its CSV download (skin_tf.serving.table): failed uploads keep
their row and reason and get no threshold or flag; numbers have four decimals everywhere; whole
notes and errors are shown; the guard's verdict is on every row."""

from __future__ import annotations

import io

import numpy as np
import pandas as pd
import pytest

from skin_tf.data.ham10000 import CLASSES
from skin_tf.serving import table as predictions
from skin_tf.serving import upload as analysis
from skin_tf.serving.verdict import REJECTED_REASON
from tests.serving.test_app import mel_probs


@pytest.fixture()
def table() -> pd.DataFrame:
    good = analysis.UploadResult(
        "a.jpg",
        probs=np.array([0.11190250659047866, 1e-06, 0.2, 0.0, 0.38809149340952134, 0.3, 5e-6]),
        notes=("greyscale image: converted to RGB (three equal channels). The model was trained "
               "on colour photographs, so treat its output with extra caution.",),
    )  # fmt: skip
    bad = analysis.UploadResult("c.jpg", error="truncated or damaged JPEG file: re-export it")
    return predictions.predictions_frame([good, bad], 0.16804608879589114, "demo", "tflite-int8")


def test_a_failed_upload_gets_no_threshold_and_no_flag(table):
    assert table["mel_threshold"][0] == pytest.approx(0.16804608879589114)
    assert table[["mel_threshold", "mel_flag", "p_mel", "top_class"]].iloc[1].isna().all()
    assert table["error"][1].startswith("truncated or damaged")


def test_the_csv_writes_every_number_with_four_decimals(table):
    text = predictions.predictions_csv(table).decode()
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
    config = predictions.table_column_config(table)
    assert config["p_mel"]["type_config"]["format"] == "%.4f"
    assert config["mel_threshold"]["type_config"]["format"] == "%.4f"
    for column in ("notes", "error"):
        longest = table[column].dropna().str.len().max()
        assert config[column]["width"] >= 7 * longest  # the grid's text: ~7 px a character


def test_the_table_shows_the_answer_first_then_a_failure_s_reason_and_every_column(table):
    """Issue 34: a reason sized to its text right after the name pushed p_mel out of a 1440 px
    window; the answer comes first now (the browser test measures it)."""
    order = predictions.table_column_order(table)
    probabilities = [f"p_{c}" for c in CLASSES]
    assert order[:12] == ["image", *probabilities, "top_class", "mel_flag", "error", "notes"]
    assert sorted(order) == sorted(table.columns)


def test_columns_are_as_wide_as_their_text_and_a_long_name_cannot_push_the_numbers_away():
    long_name = "IMG_20261205_portrait_taken_by_my_phone_in_the_garden_before_lunch.jpg"
    frame = predictions.predictions_frame(
        [analysis.UploadResult(long_name, probs=mel_probs(0.5))], 0.3, "demo"
    )
    config = predictions.table_column_config(frame)
    assert config["image"]["width"] == predictions.IMAGE_COLUMN_MAX_PX
    assert config["error"]["width"] == predictions.text_column_width(pd.Series(name="error"))
    assert config["error"]["width"] < 80  # narrow when every row's error is empty


def test_a_rejected_upload_keeps_its_numbers_but_no_flag_and_says_why():
    """The guard's verdict in the table and its CSV: ood_score and in_distribution on every
    row; an upload it rejected has no melanoma threshold or flag, and a note saying why."""
    probs = np.array([0.05, 0.05, 0.1, 0.0, 0.7, 0.1, 0.0])
    kept = analysis.UploadResult("lesion.jpg", probs=probs, ood_score=1.2, in_distribution=True,
                                 ood_threshold=2.0)  # fmt: skip
    cat = analysis.UploadResult("cat.jpg", probs=probs, ood_score=41.7, in_distribution=False,
                                ood_threshold=2.0)  # fmt: skip
    frame = predictions.predictions_frame([kept, cat], 0.3, "demo", "tflite")
    assert frame["in_distribution"].tolist() == [True, False]
    assert frame["ood_score"].tolist() == [1.2, 41.7]
    assert frame["mel_flag"][0] is True and frame["mel_flag"][1] is None
    assert pd.isna(frame["mel_threshold"][1]) and frame["p_mel"][1] == 0.7  # numbers kept
    assert frame["top_class"][0] == "mel" and pd.isna(frame["top_class"][1])  # no answer, no class
    assert frame["notes"][1] == REJECTED_REASON + "." and pd.isna(frame["notes"][0])
    back = pd.read_csv(io.StringIO(predictions.predictions_csv(frame).decode()), dtype=str,
                       keep_default_na=False)  # fmt: skip
    assert back["ood_score"].tolist() == ["1.2000", "41.7000"]
    assert back["in_distribution"].tolist() == ["True", "False"]
    assert predictions.table_column_config(frame)["ood_score"]["type_config"]["format"] == "%.4f"
    unguarded = predictions.predictions_frame(
        [analysis.UploadResult("a.jpg", probs=probs)], 0.3, "x"
    )
    assert unguarded[["ood_score", "in_distribution"]].iloc[0].isna().all()


def test_text_column_width_counts_the_header_and_skips_empty_cells():
    assert predictions.text_column_width(pd.Series([None, None], name="error")) == 32 + 38
    assert predictions.text_column_width(pd.Series(["x" * 100, None], name="notes")) == 32 + 750


def test_predictions_frame_keeps_failed_uploads_with_their_reason():
    good = analysis.UploadResult("a.jpg", probs=mel_probs(0.5), notes=("greyscale image",))
    low = analysis.UploadResult("b.png", probs=mel_probs(0.1))
    bad = analysis.UploadResult("c.jpg", error="not an image (no known image format)")
    table = predictions.predictions_frame([good, low, bad], 0.3, "b0", "tflite-int8")
    assert table.columns.tolist() == [
        "image",
        "model",
        "engine",
        *[f"p_{c}" for c in CLASSES],
        "top_class",
        "mel_threshold",
        "mel_flag",
        "ood_score",
        "in_distribution",
        "notes",
        "error",
    ]
    back = pd.read_csv(io.StringIO(table.to_csv(index=False)))
    assert back["image"].tolist() == ["a.jpg", "b.png", "c.jpg"]
    assert back["mel_flag"].tolist()[:2] == [True, False] and pd.isna(back["mel_flag"][2])
    assert back["p_mel"].tolist()[:2] == [0.5, 0.1] and pd.isna(back["p_mel"][2])
    assert back["top_class"].tolist()[:2] == ["mel", "akiec"]
    assert back["error"].tolist()[2].startswith("not an image")
    assert back["notes"][0] == "greyscale image"
    assert back["engine"].tolist() == ["tflite-int8"] * 3
