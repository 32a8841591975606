"""What export records about each engine: faithfulness of the float model, the int8 gate, the
int8 model's own melanoma threshold (re-chosen with the project's threshold code), the default."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from skin_tf.data.ham10000 import MEL_INDEX
from skin_tf.evaluation.threshold import choose_operating_point
from skin_tf.serving.engines import (
    FLOAT_TOLERANCE,
    CheckImages,
    class_turns,
    default_engine,
    engine_report,
)

RUN_POINT = {"value": 0.3, "target_sensitivity": 0.85}


def fake_files(tmp_path: Path) -> dict[str, Path]:
    files = {"tflite": tmp_path / "model.tflite", "tflite-int8": tmp_path / "model_int8.tflite"}
    files["tflite"].write_bytes(b"x" * 1000)
    files["tflite-int8"].write_bytes(b"x" * 280)
    return files


def labelled(n: int = 70, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Labels (10 per class) and probabilities that get most of them right."""
    rng = np.random.default_rng(seed)
    labels = np.repeat(np.arange(7), n // 7)
    logits = rng.normal(0, 1, (len(labels), 7))
    logits[np.arange(len(labels)), labels] += 2.5
    probs = np.exp(logits)
    return labels, probs / probs.sum(axis=1, keepdims=True)


def report(tmp_path, float_probs, int8_probs, labels, base=None, point=RUN_POINT):
    check = CheckImages(np.zeros((len(labels), 4, 4, 3), np.uint8), labels, "val split (test)")
    probs = {
        "savedmodel": float_probs if base is None else base,
        "tflite": float_probs,
        "tflite-int8": int8_probs,
    }
    return engine_report(probs, check, fake_files(tmp_path), point)


def test_a_faithful_float_and_a_close_int8_make_int8_the_default(tmp_path):
    labels, probs = labelled()
    block = report(tmp_path, probs, probs + 1e-3, labels)
    assert block["tflite"]["faithful"] and block["tflite"]["agreement_with_savedmodel"][
        "max_abs_diff"
    ] == pytest.approx(0.0)
    gate = block["tflite-int8"]["gate"]
    assert gate["passed"] and gate["loss"] == pytest.approx(0.0)
    assert block["default"] == "tflite-int8"
    assert block["tflite-int8"]["size_vs_float"] == pytest.approx(0.28)
    assert block["tflite"]["validation"]["balanced_accuracy"] > 0.5
    json.dumps(block, allow_nan=False)  # goes into metadata.json as it is


def test_int8_losing_more_than_a_point_is_not_used(tmp_path):
    labels, probs = labelled()
    worse = probs.copy()
    wrong = np.flatnonzero(labels == 1)[:2]  # 2 of 10 bcc → balanced accuracy drops ~2.9 points
    worse[wrong] = np.eye(7)[0]
    block = report(tmp_path, probs, worse, labels)
    gate = block["tflite-int8"]["gate"]
    assert not gate["passed"] and gate["loss"] > 0.01 and "loses" in gate["why"]
    assert block["default"] == "tflite"


def test_float_model_off_by_more_than_the_tolerance_is_not_faithful(tmp_path):
    labels, probs = labelled()
    off = probs.copy()
    off[0, :2] += [2 * FLOAT_TOLERANCE, -2 * FLOAT_TOLERANCE]
    block = report(tmp_path, off, off, labels, base=probs)
    assert not block["tflite"]["faithful"]
    assert block["tflite-int8"]["gate"]["passed"]  # vs the float model: same numbers
    assert block["default"] == "tflite-int8"
    block["tflite-int8"]["gate"]["passed"] = False
    assert default_engine(block) == "savedmodel"


def test_int8_threshold_is_re_chosen_on_validation_with_the_threshold_code(tmp_path):
    labels, probs = labelled()
    int8 = probs * np.where(np.arange(7) == MEL_INDEX, 0.8, 1.0)
    int8 /= int8.sum(axis=1, keepdims=True)
    block = report(tmp_path, probs, int8, labels)
    point = block["tflite-int8"]["mel_threshold"]
    expected = choose_operating_point(labels == MEL_INDEX, int8[:, MEL_INDEX], 0.85)
    assert point["value"] == expected.threshold and point["target_sensitivity"] == 0.85
    assert point["val_sensitivity"] == expected.sensitivity
    assert "re-chosen" in point["chosen_on"]
    float_point = block["tflite"]["mel_threshold"]
    assert float_point["value"] == 0.3 and "val_sensitivity" in float_point  # the run's own


def test_without_a_run_threshold_none_is_chosen_and_the_gate_only_checks_accuracy(tmp_path):
    labels, probs = labelled()
    block = report(tmp_path, probs, probs, labels, point={"value": None})
    assert block["tflite-int8"]["mel_threshold"]["value"] is None
    assert block["tflite-int8"]["gate"]["passed"]


def test_without_labels_nothing_is_gated_and_skipped_engines_say_why(tmp_path):
    _, probs = labelled()
    check = CheckImages(np.zeros((len(probs), 4, 4, 3), np.uint8), None, "8 synthetic probes")
    files = fake_files(tmp_path)
    block = engine_report(
        {"savedmodel": probs, "tflite": probs}, check, {"tflite": files["tflite"]}, RUN_POINT,
        skipped={"tflite-int8": "no calibration images were given"},
    )  # fmt: skip
    assert block["tflite"]["validation"] is None and block["tflite"]["faithful"]
    assert block["tflite-int8"] == {"written": False, "reason": "no calibration images were given"}
    assert block["default"] == "tflite"


def test_calibration_images_come_from_every_class_in_turn():
    labels = np.array([0] * 50 + [4] * 3 + [5] * 200)
    picked = class_turns(labels, 9, seed=0)
    assert len(picked) == len(set(picked)) == 9
    assert sorted(np.bincount(labels[picked], minlength=7)[[0, 4, 5]]) == [3, 3, 3]
    assert (class_turns(labels, 9, seed=0) == picked).all()  # seeded


def test_a_threshold_that_cannot_be_chosen_keeps_int8_off_with_the_reason(tmp_path):
    labels, probs = labelled()
    flat = probs.copy()
    flat[:, MEL_INDEX] = 0.0
    flat *= 0.5 / flat.sum(axis=1, keepdims=True)
    flat[:, MEL_INDEX] = 0.5  # every image gets the same P(mel): no operating point exists
    block = report(tmp_path, probs, flat, labels)
    point = block["tflite-int8"]["mel_threshold"]
    assert point["value"] is None and point["note"].startswith("not re-chosen")
    assert not block["tflite-int8"]["gate"]["passed"]
