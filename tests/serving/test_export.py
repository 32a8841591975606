"""SavedModel export: reloaded `serve` equals the Keras model, `explain` equals tf-keras-vis
(the endpoints themselves are in skin_tf.serving.endpoints; the LiteRT models: test_litert.py)."""

from __future__ import annotations

import io
import json
from pathlib import Path

import keras
import numpy as np
import pytest
import tensorflow as tf
from PIL import Image

from skin_tf.data.pipeline import decode_resize
from skin_tf.evaluation.calibration import apply_temperature
from skin_tf.explain.gradcam import gradcam_heatmaps
from skin_tf.models.classifier import build_classifier
from skin_tf.serving.endpoints import build_endpoints
from skin_tf.serving.export import export_model, export_run, mel_threshold
from skin_tf.serving.served import DISCLAIMER, METADATA_FILE, load_served

SIZE = 128  # a 4x4 top_conv grid: enough cells for the heatmap correlation to mean something


@pytest.fixture(scope="module")
def model() -> keras.Model:
    keras.utils.set_random_seed(3)
    model = build_classifier("efficientnet_b0", SIZE, weights=None)
    widen_head(model)
    return model


def widen_head(model: keras.Model) -> None:
    """Random-init features are tiny, so all probabilities are ~1/7: scale the head's weights
    so the logits spread over a few units and the classes (and gradients) differ."""
    head = model.get_layer("predictions")
    features = keras.Model(model.inputs[0], head.input)(lesion_like(SIZE, SIZE)[None].astype("f4"))
    rms = float(np.sqrt(np.mean(np.square(features)))) + 1e-12
    kernel = np.random.default_rng(0).normal(0, 1, head.kernel.shape)
    head.kernel.assign(kernel * 2.0 / (rms * np.sqrt(kernel.shape[0])))


@pytest.fixture(scope="module")
def served(model, tmp_path_factory):
    out = export_model(  # the endpoints' tests: no LiteRT models (test_litert.py has those)
        model, tmp_path_factory.mktemp("export") / "b0", metadata={"run": "t"}, litert_models=False
    )
    return load_served(out)


def lesion_like(height: int, width: int, seed: int = 0) -> np.ndarray:
    """A smooth blob on a skin-coloured noisy background (uint8 RGB)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width]
    blob = np.exp(
        -(((yy - height * 0.4) / (height / 5)) ** 2 + ((xx - width * 0.6) / (width / 6)) ** 2)
    )
    base = np.array([200, 150, 130]) * (1 - 0.6 * blob[..., None])
    noise = rng.normal(0, 12, (height, width, 3))
    return np.clip(base + noise, 0, 255).astype(np.uint8)


def pipeline_resized(image: np.ndarray, resize: str = "squash") -> np.ndarray:
    """The training pipeline's view of an image (lossless PNG, so no JPEG effects)."""
    buffer = io.BytesIO()
    Image.fromarray(image).save(buffer, format="PNG")
    return decode_resize(tf.constant(buffer.getvalue()), SIZE, resize).numpy()


def keras_probs(model, images: np.ndarray) -> np.ndarray:
    return model(np.asarray(images, np.float32), training=False).numpy()


def test_reloaded_serve_matches_keras_for_uint8_and_float(model, served):
    images = np.stack([lesion_like(SIZE, SIZE, seed) for seed in range(3)])
    expected = keras_probs(model, images)
    np.testing.assert_allclose(served.predict(images), expected, atol=1e-5)
    np.testing.assert_allclose(served.predict(images.astype(np.float32)), expected, atol=1e-5)
    assert expected.std() > 1e-3  # the outputs are not all 1/7: the comparison means something


@pytest.mark.parametrize("shape", [(150, 200), (450, 600)])  # upscale; >2x downscale (antialias)
def test_serve_resizes_other_sizes_like_the_pipeline(model, served, shape):
    image = lesion_like(*shape)
    expected = keras_probs(model, pipeline_resized(image)[None])
    np.testing.assert_allclose(served.predict(image), expected, atol=1e-5)


def test_crop_rule_matches_the_pipeline(model):
    serve, _ = build_endpoints(model, resize="crop")
    image = lesion_like(150, 200)
    expected = keras_probs(model, pipeline_resized(image, "crop")[None])
    np.testing.assert_allclose(serve(image[None]).numpy(), expected, atol=1e-5)


def test_temperature_is_applied(model):
    serve, _ = build_endpoints(model, temperature=2.5)
    images = np.stack([lesion_like(SIZE, SIZE, seed) for seed in range(2)])
    expected = apply_temperature(keras_probs(model, images), 2.5)
    np.testing.assert_allclose(serve(images).numpy(), expected, atol=1e-5)
    assert not np.allclose(expected, keras_probs(model, images), atol=1e-3)


def test_explain_heatmap_correlates_with_tf_keras_vis(model, served):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    image = lesion_like(SIZE, SIZE, seed=5)
    probs, heatmap = served.explain(image)
    top = int(probs[0].argmax())
    assert top == int(keras_probs(model, image[None])[0].argmax())
    reference = Gradcam(model, model_modifier=ReplaceToLinear(), clone=True)(
        CategoricalScore([top]), image[None].astype(np.float32), penultimate_layer="top_conv",
        expand_cam=False,
    )  # fmt: skip
    reference = np.asarray(reference)
    assert reference.shape[1:] == (4, 4) and reference.std() > 0.05
    # Same grid for both: tf-keras-vis' raw map resized like the endpoint resizes its own.
    reference = tf.image.resize(reference[..., None], (SIZE, SIZE))[..., 0].numpy()
    correlation = np.corrcoef(reference.ravel(), heatmap.ravel())[0, 1]
    assert correlation >= 0.99
    # skin_tf.explain.gradcam (tf-keras-vis underneath) draws the same map for the gallery.
    ours = gradcam_heatmaps(model, image[None].astype(np.float32), class_index=top)
    assert np.corrcoef(ours.ravel(), heatmap.ravel())[0, 1] >= 0.99
    assert heatmap.shape == (1, SIZE, SIZE)
    assert heatmap.min() >= 0.0 and heatmap.max() == pytest.approx(1.0, abs=1e-5)


def test_explain_heatmap_covers_the_input_pixels(served):
    image = lesion_like(150, 200, seed=2)
    probs, heatmap = served.explain(image)
    assert heatmap.shape == (1, 150, 200)
    assert heatmap.min() >= 0.0 and heatmap.max() <= 1.0
    np.testing.assert_allclose(probs, served.predict(image), atol=1e-6)


@pytest.mark.parametrize("method", ["gradcam++", "layercam", "gradcam@block5+top", "rise"])
def test_explain_computes_the_chosen_method_as_tf_keras_vis_does(model, method):
    """The endpoint's in-graph map of another method or of several layers is the map
    skin_tf.explain.gradcam draws for the same method (tf-keras-vis underneath; RISE:
    skin_tf.explain.rise, the same masks)."""
    _, explain = build_endpoints(model, method=method)
    image = lesion_like(SIZE, SIZE, seed=7)
    out = explain(image[None])
    top = int(out["probs"].numpy()[0].argmax())
    ours = gradcam_heatmaps(model, image[None].astype(np.float32), class_index=top, method=method)
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape == (1, SIZE, SIZE) and heatmap.std() > 0.01
    np.testing.assert_allclose(heatmap, ours, atol=2e-3)


def test_explain_refuses_a_method_it_cannot_compute_in_its_graph(model):
    with pytest.raises(ValueError, match="scorecam"):
        build_endpoints(model, method="scorecam")
    with pytest.raises(ValueError, match="no 'block99' feature maps"):
        build_endpoints(model, method="gradcam@block99")
    with pytest.raises(ValueError, match="reads no layer"):
        build_endpoints(model, method="rise", layer="top_conv")


def test_an_export_without_a_check_says_its_map_is_unchecked(served):
    explain = served.metadata["explain"]
    assert explain["method"] == "gradcam" and explain["checked"] is False
    assert explain["explanation"] is None and "not checked" in explain["headline"]


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


def test_export_refuses_to_overwrite(model, served, tmp_path):
    with pytest.raises(FileExistsError, match="overwrite"):
        export_model(model, served.path)
    assert (served.path / "saved_model.pb").is_file()
    not_a_model = tmp_path / "notes"
    not_a_model.mkdir()
    (not_a_model / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an exported model"):
        export_model(model, not_a_model, overwrite=True)
    assert (not_a_model / "keep.txt").read_text() == "mine"
    with pytest.raises(FileExistsError, match="is a file"):
        export_model(model, not_a_model / "keep.txt")


def test_rejects_a_head_without_softmax():
    inputs = keras.Input((32, 32, 3))
    x = keras.layers.Conv2D(4, 3, name="top_conv")(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    linear = keras.Model(inputs, keras.layers.Dense(7)(x))
    with pytest.raises(ValueError, match="Dense softmax"):
        build_endpoints(linear)


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


def test_load_served_names_a_wrong_folder(tmp_path):
    with pytest.raises(FileNotFoundError, match="skin-tf export"):
        load_served(tmp_path)


@pytest.mark.slow
def test_an_imagenet_efficientnet_lite_exports_with_both_endpoints(tmp_path):
    """The offline-pretrained backbone goes through the same export: serve matches Keras, and
    explain's in-graph map matches tf-keras-vis on its `top_conv`."""
    keras.utils.set_random_seed(3)
    lite = build_classifier("efficientnet_lite0", SIZE, weights="imagenet")
    served = load_served(export_model(lite, tmp_path / "lite0", metadata={"run": "t"}))
    image = lesion_like(SIZE, SIZE, seed=5)
    np.testing.assert_allclose(served.predict(image), keras_probs(lite, image[None]), atol=1e-5)
    probs, heatmap = served.explain(image)
    ours = gradcam_heatmaps(lite, image[None].astype(np.float32), class_index=int(probs.argmax()))
    assert heatmap.shape == (1, SIZE, SIZE) and heatmap.std() > 0.01
    assert np.corrcoef(ours.ravel(), heatmap.ravel())[0, 1] >= 0.99


@pytest.mark.slow
def test_a_4_3_model_is_served_at_its_shape_by_every_engine(real_data_root, tmp_path):
    """A Lite0 at 48x64 (height x width, the copy's 4:3): a real 200x150 image is prepared by the
    pipeline at that shape, every engine agrees with Keras, the crop rule keeps the centred 4:3
    box, and explain's map covers the original picture."""
    from skin_tf.data.images import prepare_image

    keras.utils.set_random_seed(4)
    model = build_classifier("efficientnet_lite0", (48, 64), weights="imagenet")
    from skin_tf.data.pipeline import load_image

    paths = sorted((real_data_root / "images").glob("ISIC_00250*.jpg"))[:32]  # as export_run
    calibration = np.stack([load_image(p, (48, 64)) for p in paths])  # calibrates on real images
    folder = export_model(model, tmp_path / "wide", metadata={"run": "t"}, calibration=calibration)
    metadata = json.loads((folder / "metadata.json").read_text())
    assert metadata["input_size"] == [48, 64] and "48, 64, 3" in metadata["engines"]["litert_input"]
    path = real_data_root / "images" / "ISIC_0024306.jpg"
    prepared = prepare_image(path, (48, 64))
    assert prepared.via_pipeline and prepared.model_input.shape == (48, 64, 3)
    expected = keras_probs(model, prepared.model_input[None])
    # The picture at its own size goes through serve's resize (or the same one before LiteRT).
    resized = load_served(folder, engine="savedmodel").predict(prepared.original)
    for engine in ("savedmodel", "tflite"):
        served = load_served(folder, engine=engine)
        assert served.image_size == (48, 64)
        probs = served.predict(prepared.model_input)
        np.testing.assert_allclose(probs, expected, atol=1e-4)
        np.testing.assert_allclose(served.predict(prepared.original), resized, atol=1e-4)
    _check_int8_at_shape(load_served(folder, engine="tflite-int8"), model, folder, real_data_root)
    probs, heatmap = load_served(folder).explain(prepared.original)
    assert heatmap.shape == (1, 150, 200) and heatmap.std() > 0.01
    serve, _ = build_endpoints(model, resize="crop")
    wide = lesion_like(80, 240)  # crop: the centred 80x106 box, then 48x64
    box = wide[:, 67:173]
    np.testing.assert_allclose(
        serve(wide[None]).numpy(),
        keras_probs(model, tf.image.resize(box[None].astype("float32"), (48, 64)).numpy().round()),
        atol=1e-4,
    )


def _check_int8_at_shape(int8, model, folder: Path, root: Path) -> None:
    """int8 at 48x64 answers like Keras over 64 real images it was not calibrated on, both at
    the model's shape and through its own resize of the 200x150 originals. Judged over the set:
    with this random head one image's probability moved by 0.114 under quantisation on an
    AVX-512 CPU (CI, 2026-12-07), by less on AVX2 kernels. The same bounds must fail for int8's
    answers paired with the wrong images (reversed order: what a wrong shape or resize gives),
    so they can tell the two apart."""
    from skin_tf.data.images import prepare_image

    assert int8.image_size == (48, 64)
    prepared = [prepare_image(p, (48, 64)) for p in sorted(root.glob("images/ISIC_00251*.jpg"))]
    inputs = np.stack([p.model_input for p in prepared[:64]])
    originals = np.stack([p.original for p in prepared[:64]])
    reference = keras_probs(model, inputs)
    resized = load_served(folder, engine="savedmodel").predict(originals)

    def agrees(probs: np.ndarray, against: np.ndarray) -> bool:
        top_agree = (probs.argmax(axis=1) == against.argmax(axis=1)).mean()
        return np.abs(probs - against).mean() <= 0.05 and top_agree >= 0.75

    at_shape = int8.predict(inputs)
    assert agrees(at_shape, reference) and agrees(int8.predict(originals), resized)
    assert not agrees(at_shape[::-1], reference)  # the bounds can fail


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


# ---------------------------------------------------------------- the out-of-distribution guard


def test_the_guard_only_adds_outputs(tiny_export, tiny_export_plain):
    """serve and explain of a guarded export give the probabilities (and heatmaps) of an export
    without the guard bit for bit, plus ood_score and in_distribution; metadata.json says how
    the threshold was chosen and keeps at least 95 % of the images it was chosen on."""
    guarded = tf.saved_model.load(str(tiny_export))
    plain = tf.saved_model.load(str(tiny_export_plain))
    rng = np.random.default_rng(0)
    for images in (
        rng.integers(0, 256, (3, 32, 32, 3), dtype=np.uint8),
        rng.integers(0, 256, (2, 150, 200, 3), dtype=np.uint8).astype(np.float32),
    ):
        served = guarded.serve(images)
        assert set(served) == {"probs", "ood_score", "in_distribution"}
        np.testing.assert_array_equal(served["probs"].numpy(), plain.serve(images).numpy())
        explained, before = guarded.explain(images), plain.explain(images)
        for key in ("probs", "heatmap"):
            np.testing.assert_array_equal(explained[key].numpy(), before[key].numpy())
        np.testing.assert_array_equal(explained["ood_score"], served["ood_score"])
        assert served["in_distribution"].dtype == tf.bool
    meta = json.loads((tiny_export / METADATA_FILE).read_text())
    assert meta["format"] == "skin_tf.export/2" and "ood_score" in meta["endpoints"]["serve"]
    block = meta["ood_guard"]
    assert block["method"] == "mahalanobis" and block["file"] == "ood_guard.npz"
    assert block["layer"].startswith("penultimate") and block["feature_dim"] == 32
    assert (tiny_export / "ood_guard.npz").is_file()
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        assert block["thresholds"][engine]["val_kept"] >= 0.95
        assert block["thresholds"][engine]["n_images"] == 8  # the synthetic probe images
    plain_meta = json.loads((tiny_export_plain / METADATA_FILE).read_text())
    assert plain_meta["format"] == "skin_tf.export/1" and "ood_guard" not in plain_meta


def test_every_engine_keeps_the_benign_shifts_with_its_own_threshold(tiny_model, tmp_path):
    """A guard with benign-shift validation families and a confidence term (issue 32): each
    engine's threshold keeps 95 % of the validation images and of every family on its own
    scores, metadata.json records what it keeps and its accuracy on both sides, and the
    SavedModel (term in its graph) and LiteRT (term from its probabilities) score alike."""
    import dataclasses

    from skin_tf.serving.engines import CheckImages, probe_images
    from skin_tf.serving.guard_choice import fit_run_guard
    from skin_tf.serving.guard_sets import SourceImages, benign_images

    def sources(n, seed):
        images = probe_images(60, n=n, seed=seed).images
        return SourceImages([i[:45] for i in images], np.arange(n) % 7, f"{n} probes")

    train = CheckImages(probe_images(32, n=70, seed=4).images, np.arange(70) % 7, "70 probes")
    val = CheckImages(probe_images(32, n=40, seed=6).images, np.arange(40) % 7, "40 probes")
    shifted = benign_images(sources(40, 6), (32, 32), "squash", ["crop_224", "rotation"])
    fitted = fit_run_guard(tiny_model, train, val, shifted, temperature=1.5)
    weighted = dataclasses.replace(fitted.guard, confidence_weight=0.5)
    fitted = dataclasses.replace(fitted, guard=weighted)
    out = export_model(
        tiny_model, tmp_path / "shifted", temperature=1.5, check=val, guard=fitted,
        calibration=probe_images(32, n=16, seed=3).images, metadata={"run": "tiny"},
    )  # fmt: skip
    block = json.loads((out / METADATA_FILE).read_text())["ood_guard"]
    assert block["confidence_weight"] == 0.5 and "0.5 x (1 - the largest" in block["score"]
    assert block["thresholds"]["shifted_keep"] == 0.95
    for engine in ("savedmodel", "tflite", "tflite-int8"):
        figures = block["thresholds"][engine]
        assert figures["val_kept"] >= 0.95
        assert set(figures["shifted_kept"]) == {"crop_224", "rotation"}
        assert min(figures["shifted_kept"].values()) >= 0.95
        assert figures["accuracy"]["n_rejected"] <= 3 * 40 * 0.05 + 3
        served = load_served(out, engine=engine)
        kept = served.assess(list(shifted["rotation"].images)).in_distribution
        assert kept.mean() == figures["shifted_kept"]["rotation"]
    images = list(shifted["crop_224"].images[:8])
    saved, lite = (load_served(out, engine=e).assess(images) for e in ("savedmodel", "tflite"))
    np.testing.assert_allclose(saved.ood_score, lite.ood_score, rtol=1e-3, atol=1e-3)


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
