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


# ---------------------------------------------------------------- the out-of-distribution guard


def test_every_engine_assesses_with_its_own_threshold(tiny_export):
    """ood_score and in_distribution from every engine: the SavedModel's from its graph, the
    LiteRT engines' from their features; the float engines agree, each uses its own threshold."""
    metadata = json.loads((tiny_export / "metadata.json").read_text())
    thresholds = metadata["ood_guard"]["thresholds"]
    rng = np.random.default_rng(3)
    images = [rng.integers(0, 256, (40, 50, 3), dtype=np.uint8) for _ in range(3)]
    images += [np.full((32, 32, 3), 200, np.uint8)]
    served = load_served(tiny_export, engine="savedmodel")
    results = {}
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        engine_served = served.using(engine)
        assert engine_served.guarded and engine_served.guard_note is None
        assert engine_served.ood_threshold == thresholds[engine]["threshold"]
        out = engine_served.assess(images)
        assert out.probs.shape == (4, 7) and out.ood_score.shape == (4,)
        np.testing.assert_array_equal(out.in_distribution, out.ood_score <= thresholds[engine][
            "threshold"])  # fmt: skip
        results[engine] = out
    np.testing.assert_allclose(results["tflite"].ood_score, results["savedmodel"].ood_score,
                               rtol=1e-4)  # fmt: skip
    explained, heatmaps = served.explain_assessed(images[0])
    np.testing.assert_allclose(explained.ood_score, results["savedmodel"].ood_score[:1], rtol=1e-5)
    assert explained.in_distribution.dtype == bool and heatmaps.shape == (1, 40, 50)
    empty = served.using("tflite").assess([])
    assert empty.probs.shape == (0, 7) and empty.ood_score.shape == (0,)


def test_an_export_without_the_guard_loads_with_a_note(tiny_export_plain, tmp_path):
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        served = load_served(tiny_export_plain, engine=engine)
        out = served.assess([np.zeros((32, 32, 3), np.uint8)])
        assert out.ood_score is None and out.in_distribution is None and out.probs.shape == (1, 7)
        assert served.ood_threshold is None and not served.guarded
        assert "no out-of-distribution guard" in served.guard_note
        assert "skin-tf export" in served.guard_note and "--overwrite" in served.guard_note
    assert json.loads((tiny_export_plain / "metadata.json").read_text())["format"].endswith("/1")

    def skipped(metadata):
        metadata["ood_guard"] = {"written": False, "reason": "the run's images could not be read"}

    folder = copy_export(tiny_export_plain, tmp_path, edit=skipped)
    assert "could not be read" in load_served(folder).guard_note


def test_a_guard_without_features_in_the_litert_model_names_the_fix(
    tiny_export, tiny_export_plain, tmp_path
):
    folder = copy_export(tiny_export, tmp_path)
    shutil.copy(tiny_export_plain / FLOAT_FILE, folder / FLOAT_FILE)  # a model without features
    with pytest.raises(LiteRTError, match="no features output.*skin-tf export"):
        load_served(folder, engine="tflite").assess([np.zeros((32, 32, 3), np.uint8)])
