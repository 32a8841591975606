"""skin_tf.serving.export: a run's export carries its temperature, melanoma threshold, test
metrics, provenance and checked explain method, checks every engine on the run's validation
split, and takes its patient fields (the folder itself: test_archive.py)."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf

from skin_tf.evaluation.calibration import apply_temperature
from skin_tf.explain.gradcam import gradcam_heatmaps
from skin_tf.serving.export import export_run, mel_threshold
from skin_tf.serving.served import DISCLAIMER, METADATA_FILE, load_served
from tests.serving.test_archive import SIZE, keras_probs, lesion_like, probe_b0


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return probe_b0()


@pytest.mark.slow
def test_export_run_takes_the_method_the_runs_check_chose(model, tmp_path):
    from skin_tf.explain.choice import CHECK_FILE, headline
    from skin_tf.runs import file_digest

    run_dir = tmp_path / "runs" / "checked"
    write_run(run_dir, model, temperature=None, op=None)
    choice = {
        "method": "gradcam@block5", "title": "Grad-CAM on block5", "checked": True,
        "passes_sanity": True, "beats_centre": True, "explanation": True, "n_images": 200,
        "centre_deletion_auc": 0.30, "layers": ["block5c_add"], "grid": [8, 8],
        "deletion_auc": 0.25, "deletion_ci": [0.23, 0.27], "vs_centre": -0.05,
        "vs_centre_ci": [-0.07, -0.03], "insertion_auc": 0.6, "spearman_top": 0.1,
    }  # fmt: skip
    choice["headline"] = headline(choice)
    record = {"run": "checked", "model_sha256": file_digest(run_dir / "best.keras"),
              "default": choice, "report": "results/explain/checked.md"}  # fmt: skip
    (run_dir / CHECK_FILE).write_text(json.dumps(record))
    out = export_run(run_dir, tmp_path / "saved" / "checked", litert_models=False, guard=False)
    served = load_served(out)
    explain = served.metadata["explain"]
    assert explain["method"] == "gradcam@block5" and explain["explanation"] is True
    assert "deletion AUC 0.250" in explain["headline"] and explain["source"].endswith("checked")
    image = lesion_like(SIZE, SIZE, seed=8)
    probs, heatmap = served.explain(image)
    ours = gradcam_heatmaps(model, image[None].astype(np.float32), int(probs.argmax()),
                            method="gradcam@block5")  # fmt: skip
    np.testing.assert_allclose(heatmap, ours, atol=2e-3)

    (run_dir / "best.keras").write_bytes(b"another model")  # the check no longer applies
    from skin_tf.explain.choice import explain_choice

    stale = explain_choice(run_dir)
    assert stale["checked"] is False and "another best.keras" in stale["reason"]


def write_run(run_dir: Path, model: keras.Model, *, temperature: float | None, op: dict | None):
    """A run directory with what export_run reads (no predictions needed)."""
    run_dir.mkdir(parents=True)
    model.save(run_dir / "best.keras")
    config = {"model": "efficientnet_b0", "image_size": SIZE, "resize": "squash", "tta": False}
    (run_dir / "config.json").write_text(json.dumps(config))
    meta = {
        "run_name": "tiny", "config_name": "baseline", "profile": "smoke",
        "model": "efficientnet_b0", "weights": "none", "image_size": SIZE, "epochs": 1,
        "hardware": "CPU (2 cores)",
        "data": {"root": "/data", "source_size": "200x150", "n_images": 70},
    }  # fmt: skip
    (run_dir / "meta.json").write_text(json.dumps(meta))
    (run_dir / "metrics.json").write_text(json.dumps({"test": {"balanced_accuracy": 0.41}}))
    if temperature is not None:
        (run_dir / "temperature.json").write_text(json.dumps({"temperature": temperature}))
    if op is not None:
        (run_dir / "operating_point.json").write_text(json.dumps(op))


OPERATING_POINT = {
    "threshold": 0.31, "target_sensitivity": 0.85, "calibrated": True, "temperature": 1.5,
    "chosen_on": "val", "note": "", "val": {"sensitivity": 0.86, "specificity": 0.71},
    "test": {"sensitivity": 0.8, "specificity": 0.69},
}  # fmt: skip


@pytest.mark.slow
def test_export_run_writes_metadata_and_calibrated_endpoints(model, tmp_path):
    run_dir = tmp_path / "runs" / "tiny"
    write_run(run_dir, model, temperature=1.5, op=OPERATING_POINT)
    out = export_run(run_dir, tmp_path / "saved" / "tiny")
    meta = json.loads((out / METADATA_FILE).read_text())
    assert meta["classes"] == ["akiec", "bcc", "bkl", "df", "mel", "nv", "vasc"]
    assert meta["class_names"]["mel"] == "Melanoma"
    assert meta["input_size"] == [SIZE, SIZE] and meta["resize"] == "squash"
    assert meta["temperature"] == 1.5 and meta["calibrated"] is True
    threshold = meta["mel_threshold"]
    assert threshold["value"] == 0.31
    assert (threshold["val_sensitivity"], threshold["val_specificity"]) == (0.86, 0.71)
    assert meta["test_metrics"] == {"balanced_accuracy": 0.41}
    assert "HAM10000 200x150 copy" in meta["provenance"]["caption"]
    assert meta["provenance"]["meta"]["run_name"] == "tiny"
    assert meta["disclaimer"] == DISCLAIMER and meta["run"] == "tiny"

    # This run has no splits.csv: the float LiteRT model is checked on synthetic probes, and no
    # int8 model is written, with the reason recorded (and printed by `skin-tf export`).
    engines = meta["engines"]
    assert engines["checked_on"] == "8 synthetic probe images" and engines["tflite"]["faithful"]
    assert engines["tflite-int8"]["written"] is False
    assert "the run's images could not be read" in engines["tflite-int8"]["reason"]
    assert engines["default"] == "tflite"
    assert meta["ood_guard"]["written"] is False  # no images to fit or threshold a guard on
    assert "could not be read" in meta["ood_guard"]["reason"]
    served = load_served(out)
    assert (
        "could not be read" in served.guard_note
        and served.assess([lesion_like(SIZE, SIZE)]).ood_score is None
    )
    assert served.engine == "tflite" and served.threshold == 0.31 and served.temperature == 1.5
    image = lesion_like(SIZE, SIZE, seed=9)
    expected = apply_temperature(keras_probs(model, image[None]), 1.5)
    np.testing.assert_allclose(served.predict(image), expected, atol=1e-5)
    np.testing.assert_allclose(served.explain(image)[0], expected, atol=1e-5)

    with pytest.raises(FileExistsError, match="overwrite"):
        export_run(run_dir, out)
    (run_dir / "operating_point.json").unlink()
    export_run(run_dir, out, overwrite=True, litert_models=False)
    assert not (out / "model.tflite").exists()  # replaced, not merged
    replaced = json.loads((out / METADATA_FILE).read_text())["mel_threshold"]
    assert replaced["value"] is None and "skin-tf threshold" in replaced["note"]
    assert not [p for p in out.parent.iterdir() if p.name.startswith(".")]  # no staging left


def test_threshold_chosen_without_the_temperature_is_refused(tmp_path):
    (tmp_path / "operating_point.json").write_text(
        json.dumps({**OPERATING_POINT, "calibrated": False, "temperature": None})
    )
    with pytest.raises(ValueError, match="re-run `skin-tf threshold`"):
        mel_threshold(tmp_path, temperature=1.5)
    assert mel_threshold(tmp_path, temperature=None)["value"] == 0.31


@pytest.mark.slow
def test_export_run_checks_every_engine_on_the_runs_validation_split(real_export, real_run):
    """metadata.json of a real run's export: the float LiteRT model is faithful, the int8 model
    has its validation metrics, its gate and its own threshold (re-chosen on validation with the
    project's threshold code), and the default follows the gate."""
    from skin_tf.evaluation.threshold import choose_operating_point
    from skin_tf.serving.engines import run_images

    meta = json.loads((real_export / METADATA_FILE).read_text())
    block = meta["engines"]
    assert block["checked_on"] == "val split of run lite0-probe (150 images)"
    floats, int8 = block["tflite"], block["tflite-int8"]
    assert floats["faithful"] and floats["agreement_with_savedmodel"]["max_abs_diff"] <= 1e-4
    assert floats["validation"]["balanced_accuracy"] == pytest.approx(
        block["savedmodel"]["validation"]["balanced_accuracy"], abs=0.01
    )
    assert floats["mel_threshold"]["value"] == meta["mel_threshold"]["value"]
    assert int8["bytes"] <= 0.35 * floats["bytes"]
    assert int8["quantization"]["calibration_images"] == 64
    gate = int8["gate"]
    assert gate["loss"] == pytest.approx(
        floats["validation"]["balanced_accuracy"] - int8["validation"]["balanced_accuracy"]
    )
    assert gate["passed"] == (gate["loss"] <= 0.01 and int8["mel_threshold"]["value"] is not None)
    assert block["default"] == ("tflite-int8" if gate["passed"] else "tflite")
    thresholds = meta["ood_guard"]["thresholds"]
    assert all(thresholds[e]["n_images"] == 150 and thresholds[e]["val_kept"] >= 0.95
               for e in ("savedmodel", "tflite", "tflite-int8"))  # fmt: skip

    check = run_images(real_run, "val", 96, "squash")
    probs = load_served(real_export, engine="tflite-int8").predict_many(list(check.images))
    point = choose_operating_point(check.labels == 4, probs[:, 4], 0.85)
    assert int8["mel_threshold"]["value"] == pytest.approx(point.threshold)
    assert int8["mel_threshold"]["val_sensitivity"] == pytest.approx(point.sensitivity)
    floats_acc, int8_acc = (e["validation"]["balanced_accuracy"] for e in (floats, int8))
    print(
        f"\nreal export: val balanced accuracy float {floats_acc:.3f}, int8 {int8_acc:.3f} "
        f"(gate {gate['why']}), int8 file {int8['size_vs_float']:.0%} of float, default "
        f"{block['default']}"
    )


@pytest.mark.slow
def test_a_run_with_patient_fields_exports_them_into_every_endpoint(
    real_meta_export, real_meta_run
):
    """Issue 31: an export of a run trained with age, sex and site. `serve`, `explain` and both
    LiteRT models take the encoded fields as a second input and give the Keras model's
    probabilities with them; metadata.json describes the fields; the guard reads image features
    only, so the same image gets the same ood_score whatever its fields say."""
    import pandas as pd

    from skin_tf.data.meta_fields import describe_fields, encode_fields
    from skin_tf.serving.engines import run_images
    from skin_tf.serving.served import load_served

    metadata = json.loads((real_meta_export / "metadata.json").read_text())
    assert metadata["patient_fields"] == describe_fields(("age", "sex", "localization"))
    guard = metadata["ood_guard"]
    assert guard["layer"] != "penultimate (the head's input)" and guard["confidence_weight"] == 0
    assert not any(name == "energy" or "confidence" in name for name in guard["chosen_from"])
    assert metadata["engines"]["tflite"]["faithful"]

    model = keras.models.load_model(real_meta_run / "best.keras", compile=False)
    val = run_images(real_meta_run, "val", (96, 96), "squash")
    images, fields = val.images[:12], val.fields[:12]
    expected = model({"image": images.astype("float32"), "metadata": fields}).numpy()
    loaded = tf.saved_model.load(str(real_meta_export))
    out = loaded.serve(images, fields)
    scaled = np.exp(np.log(expected) / 1.3)  # the run's temperature, on the Keras softmax
    assert np.allclose(out["probs"], scaled / scaled.sum(axis=1, keepdims=True), atol=1e-4)
    blank = np.tile(encode_fields(pd.DataFrame(index=[0]), ("age", "sex", "localization")), (12, 1))
    out_blank = loaded.serve(images, blank)
    assert np.abs(out_blank["probs"] - out["probs"]).max() > 1e-3  # the fields count
    assert np.allclose(out_blank["ood_score"], out["ood_score"], rtol=1e-5)
    explained = loaded.explain(images[:2], fields[:2])
    assert explained["heatmap"].shape == (2, 96, 96)
    assert np.allclose(explained["probs"], out["probs"][:2], atol=1e-5)

    served = {e: load_served(real_meta_export, e) for e in ("savedmodel", "tflite")}
    given = [{"age": 60, "sex": "male", "localization": "back"}, None]
    assessed = {e: s.assess(list(images[:2]), given) for e, s in served.items()}
    assert np.abs(assessed["tflite"].probs - assessed["savedmodel"].probs).max() <= 1e-4
    with pytest.raises(ValueError, match="one per image"):
        served["tflite"].assess(list(images[:2]), given[:1])
