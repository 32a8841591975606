"""What `skin-tf export` prints about the engines it wrote (the export itself: tests/serving)."""

from __future__ import annotations

from skin_tf.cli.model_commands import engine_lines

METADATA = {
    "engines": {
        "checked_on": "val split of run r (1001 images)",
        "savedmodel": {"validation": {"balanced_accuracy": 0.736}},
        "tflite": {
            "file": "model.tflite", "bytes": 13_477_152,
            "validation": {"balanced_accuracy": 0.736},
            "agreement_with_savedmodel": {"top1_agreement": 1.0, "max_abs_diff": 3.4e-6},
            "mel_threshold": {"value": 0.1883},
        },
        "tflite-int8": {"written": False, "reason": "not requested (int8=False / --no-int8)"},
        "default": "tflite",
    }
}  # fmt: skip


def test_export_prints_one_line_per_engine_and_the_default():
    lines = engine_lines(METADATA)
    assert lines[0] == "checked on: val split of run r (1001 images)"
    assert lines[1] == "  savedmodel: val balanced accuracy 0.736"
    assert lines[2] == (
        "  tflite: model.tflite 13.5 MB; val balanced accuracy 0.736; agreement with savedmodel: "
        "top-1 1.000, max |dp| 3.4e-06; melanoma threshold 0.1883"
    )
    assert lines[3] == "  tflite-int8: not written (not requested (int8=False / --no-int8))"
    assert lines[-1] == "default engine: tflite"
    assert engine_lines({}) == ["engines: savedmodel only"]
