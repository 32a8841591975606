"""skin_tf.serving.archive: a model's export folder. Reloaded `serve` equals the Keras model,
`explain` equals tf-keras-vis (the endpoints themselves are in skin_tf.serving.endpoints; the
LiteRT models: test_litert.py; a run's export: test_export.py)."""

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
from skin_tf.serving.archive import export_model
from skin_tf.serving.endpoints import build_endpoints
from skin_tf.serving.served import METADATA_FILE, load_served

SIZE = 128  # a 4x4 top_conv grid: enough cells for the heatmap correlation to mean something


def probe_b0() -> keras.Model:
    """EfficientNet-B0 at SIZE from random weights with a widened head (seeded)."""
    keras.utils.set_random_seed(3)
    model = build_classifier("efficientnet_b0", SIZE, weights=None)
    widen_head(model)
    return model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return probe_b0()


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
