"""Loading an export with an engine: the default from metadata.json, exports older than the LiteRT
models, and the errors for an engine an export lacks or a damaged .tflite."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from skin_tf.serving.litert import FLOAT_FILE, INT8_FILE, LiteRTError
from skin_tf.serving.served import available_engines, default_engine, load_served


def copy_export(export: Path, tmp_path: Path, edit=None) -> Path:
    folder = Path(shutil.copytree(export, tmp_path / export.name))
    if edit is not None:
        metadata = json.loads((folder / "metadata.json").read_text())
        edit(metadata)
        (folder / "metadata.json").write_text(json.dumps(metadata))
    return folder


def test_default_engine_comes_from_metadata_and_is_stated(tiny_export):
    metadata = json.loads((tiny_export / "metadata.json").read_text())
    served = load_served(tiny_export)
    assert served.engine == metadata["engines"]["default"] == "tflite"  # no labels: no int8 gate
    assert "int8 not used: no validation images with labels" in served.engine_note
    assert served.available_engines == ["tflite-int8", "tflite", "savedmodel"]
    assert served._loaded._saved_model is None  # a LiteRT engine starts without the SavedModel


def test_engines_share_what_is_loaded_and_keep_their_own_threshold(tiny_export):
    served = load_served(tiny_export, engine="tflite")
    int8 = served.using("tflite-int8")
    assert int8._loaded is served._loaded and int8.engine_note is None
    assert served.threshold == 0.2  # the run's, shared by the faithful float model
    assert int8.threshold is None  # not re-chosen without validation labels
    assert "re-chosen" in int8.mel_point["note"]
    image = np.random.default_rng(0).integers(0, 256, (40, 50, 3), dtype=np.uint8)
    probs, heatmap = int8.explain(image)  # Grad-CAM from the SavedModel whatever the engine
    assert probs.shape == (1, 7) and heatmap.shape == (1, 40, 50)


def test_an_export_older_than_the_litert_models_falls_back_to_the_savedmodel(tiny_export, tmp_path):
    old = copy_export(tiny_export, tmp_path, edit=lambda m: m.pop("engines"))
    for name in (FLOAT_FILE, INT8_FILE):
        (old / name).unlink()
    served = load_served(old)
    assert served.engine == "savedmodel" and served.available_engines == ["savedmodel"]
    assert "written before skin-tf exported LiteRT models" in served.engine_note
    assert "skin-tf export" in served.engine_note and served.threshold == 0.2
    with pytest.raises(ValueError, match=r"no tflite model.*exported before.*skin-tf export"):
        load_served(old, engine="tflite")


def test_an_engine_the_export_lacks_or_does_not_know_is_refused(tiny_export, tmp_path):
    def drop_int8(metadata):
        metadata["engines"]["tflite-int8"] = {"written": False, "reason": "--no-int8"}

    folder = copy_export(tiny_export, tmp_path, edit=drop_int8)
    with pytest.raises(ValueError, match=r"no tflite-int8 model: it was not written \(--no-int8\)"):
        load_served(folder, engine="tflite-int8")
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        load_served(folder, engine="onnx")


def test_a_missing_or_damaged_tflite_file_names_the_fix(tiny_export, tmp_path):
    folder = copy_export(tiny_export, tmp_path)
    (folder / INT8_FILE).unlink()
    with pytest.raises(LiteRTError, match="not found.*skin-tf export"):
        load_served(folder, engine="tflite-int8")
    (folder / FLOAT_FILE).write_bytes(b"not a flatbuffer")
    with pytest.raises(LiteRTError, match="not a readable LiteRT model"):
        load_served(folder)  # the default engine's file is checked at load, not mid-run


def test_available_and_default_engines_of_metadata():
    assert available_engines({}) == ["savedmodel"]
    block = {"tflite": {"file": FLOAT_FILE}, "tflite-int8": {"written": False}, "default": "tflite"}
    assert available_engines({"engines": block}) == ["tflite", "savedmodel"]
    engine, why = default_engine({"engines": block})
    assert engine == "tflite" and "LiteRT float32" in why
