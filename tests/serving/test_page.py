"""What the page writes, as a real-browser pass found it wanting (issue 17, item 4): the melanoma
box quotes the threshold's test figures and does not read as an all-clear; the "All predictions"
table and its CSV; short model- and engine-picker labels. The older page-helper tests, and the
page under AppTest, are in test_app.py."""

from __future__ import annotations

import json

from skin_tf.serving import page as support
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


def test_an_image_the_guard_rejected_gets_no_flag_whatever_its_p_mel():
    point = METADATA["mel_threshold"]
    text = support.mel_flag_text(mel_probs(0.9), point, in_distribution=False)
    assert text.startswith("**No melanoma flag**: this picture is out of distribution")
    assert "raised" not in text
    assert support.mel_flag_text(mel_probs(0.9), point, in_distribution=True).startswith(
        "**Melanoma flag raised**"
    )


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


def test_a_checked_map_that_is_no_explanation_gets_the_checks_sentence_instead():
    headline = "No heatmap method beat a centred blob on this model: the best … (+0.030)"
    explain = {"checked": True, "explanation": False, "headline": headline}
    note = support.explanation_note({"explain": explain})
    assert note == f"{headline}. The map is shown below only on request."
    assert support.explanation_note({"explain": {**explain, "explanation": True}}) is None
    # Not checked (an older export, or no `skin-tf explain-check`): shown, its caption says so.
    assert support.explanation_note({"explain": {"checked": False}}) is None
    assert support.explanation_note({}) is None
