"""Grad-CAM heatmaps: shape and range, the explained class, overlays at the image's own size."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from skin_tf.data.ham10000 import CLASSES
from skin_tf.explain.gradcam import (
    cam_from_gradients,
    cam_layers,
    gradcam_heatmaps,
    grid_shape,
    heatmap_to_input,
    overlay,
)
from skin_tf.models.classifier import build_classifier

SIZE = 64


def widened_model(size: int = SIZE) -> keras.Model:
    """B0 without pretrained weights, its head scaled so classes and gradients differ."""
    keras.utils.set_random_seed(1)
    model = build_classifier("efficientnet_b0", size, weights=None)
    head = model.get_layer("predictions")
    probe = np.random.default_rng(0).uniform(0, 255, (1, size, size, 3)).astype("float32")
    features = keras.Model(model.inputs[0], head.input)(probe)
    rms = float(np.sqrt(np.mean(np.square(features)))) + 1e-12
    kernel = np.random.default_rng(0).normal(0, 1, head.kernel.shape)
    head.kernel.assign(kernel * 2.0 / (rms * np.sqrt(kernel.shape[0])))
    return model


@pytest.fixture(scope="module")
def model() -> keras.Model:
    return widened_model()


@pytest.fixture(scope="module")
def images() -> np.ndarray:
    rng = np.random.default_rng(4)
    return rng.uniform(0, 255, (2, SIZE, SIZE, 3)).astype("float32")


@pytest.mark.parametrize("method", ["gradcam", "gradcam++"])
def test_heatmaps_have_the_input_grid_and_lie_in_0_1(model, images, method):
    maps = gradcam_heatmaps(model, images, method=method)
    assert maps.shape == (2, SIZE, SIZE) and maps.dtype == np.float32
    assert maps.min() >= 0.0 and maps.max() <= 1.0
    assert (maps.reshape(2, -1).max(axis=1) > 0.9).all()  # each map is scaled to reach ~1


def test_class_index_chooses_the_explained_class(model, images):
    predicted = model.predict(images, verbose=0).argmax(axis=1)
    default = gradcam_heatmaps(model, images)
    np.testing.assert_allclose(gradcam_heatmaps(model, images, predicted.tolist()), default)
    other = int((predicted[0] + 1) % len(CLASSES))
    assert not np.allclose(gradcam_heatmaps(model, images[:1], other), default[:1], atol=1e-3)
    with pytest.raises(ValueError, match="class_index"):
        gradcam_heatmaps(model, images, class_index=[0])
    with pytest.raises(ValueError, match="load_image"):
        gradcam_heatmaps(model, np.zeros((1, 32, 32, 3)))
    with pytest.raises(ValueError, match="unknown method"):
        gradcam_heatmaps(model, images, method="lime")


@pytest.mark.slow
def test_scorecam_runs(model, images):
    maps = gradcam_heatmaps(model, images[:1], method="scorecam")
    assert maps.shape == (1, SIZE, SIZE) and 0.0 <= maps.min() <= maps.max() <= 1.0


def test_overlay_is_drawn_at_the_original_size():
    image = np.full((150, 200, 3), 100, np.uint8)
    heat = np.array([[0.0, 1.0], [0.0, 0.0]], np.float32)  # model-grid map: hot top-right
    blended = overlay(image, heat)
    assert blended.shape == (150, 200, 3) and blended.dtype == np.uint8
    np.testing.assert_array_equal(overlay(image, heat, alpha=0.0), image)
    pure = overlay(image, heat, alpha=1.0)
    np.testing.assert_array_equal(pure[0, -1], [128, 0, 0])  # jet(1.0) is dark red
    np.testing.assert_array_equal(pure[-1, 0], [0, 0, 128])  # jet(0.0) is dark blue
    full = overlay(image, np.ones((150, 200)), alpha=1.0)  # already at image size: used as is
    assert (full == [128, 0, 0]).all()
    with pytest.raises(ValueError, match="uint8"):
        overlay(image.astype(np.float32), heat)


def test_crop_heatmaps_cover_only_the_centre_square():
    mapped = heatmap_to_input(np.ones((1, 4, 4)), (100, 200), (SIZE, SIZE), "crop").numpy()[0]
    assert mapped.shape == (100, 200)
    assert (mapped[:, 50:150] == 1).all()
    assert (mapped[:, :50] == 0).all() and (mapped[:, 150:] == 0).all()


# ---------------------------------------------------------------- layers, methods, the graph


def widen(model: keras.Model, seed: int = 0) -> keras.Model:
    """Scale a random head so that logits spread over a few units (classes and gradients differ)."""
    head = model.get_layer("predictions")
    probe = np.random.default_rng(seed).uniform(0, 255, (1, *model.input_shape[1:])).astype("f4")
    features = keras.Model(model.inputs[0], head.input)(probe)
    rms = float(np.sqrt(np.mean(np.square(features)))) + 1e-12
    kernel = np.random.default_rng(seed).normal(0, 1, head.kernel.shape)
    head.kernel.assign(kernel * 2.0 / (rms * np.sqrt(kernel.shape[0])))
    return model


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    keras.utils.set_random_seed(2)
    return widen(build_classifier("efficientnet_lite0", (48, 64), weights="imagenet"))


@pytest.fixture(scope="module")
def lite0_images() -> np.ndarray:
    return np.random.default_rng(5).uniform(0, 255, (2, 48, 64, 3)).astype("float32")


def two_member_model() -> keras.Model:
    """The layer names of an ensemble of two classifiers (`m0_…`, `m1_…`), in miniature."""
    keras.utils.set_random_seed(4)
    inputs = keras.Input((32, 48, 3))
    pooled = []
    for prefix in ("m0_", "m1_"):
        x = keras.layers.Conv2D(8, 3, strides=2, padding="same", name=f"{prefix}block5a_add")(
            inputs
        )
        x = keras.layers.Conv2D(16, 3, strides=2, padding="same", name=f"{prefix}top_conv")(x)
        pooled.append(keras.layers.GlobalAveragePooling2D(name=f"{prefix}pool")(x))
    x = keras.layers.Concatenate()(pooled)
    outputs = keras.layers.Dense(7, activation="softmax", name="predictions")(x)
    return widen(keras.Model(inputs, outputs, name="ensemble"))


def test_layers_are_found_by_stage_name_or_layer_name(lite0):
    assert cam_layers(lite0) == ("top_conv",)
    assert cam_layers(lite0, ["block5", "top"]) == ("block5c_add", "top_conv")
    assert cam_layers(lite0, ["block3b_add"]) == ("block3b_add",)
    assert grid_shape(lite0, "gradcam") == (2, 2)  # 48x64 / 32
    assert grid_shape(lite0, "layercam@block5+top") == (3, 4)  # the finer of the two
    with pytest.raises(ValueError, match="no layer 'block5z'"):
        cam_layers(lite0, ["block5z"])


def test_an_ensemble_reads_every_members_layer_and_averages_their_maps():
    model = two_member_model()
    assert cam_layers(model) == ("m0_top_conv", "m1_top_conv")
    assert cam_layers(model, ["block5"]) == ("m0_block5a_add", "m1_block5a_add")
    images = np.random.default_rng(1).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    both = gradcam_heatmaps(model, images, [3, 4])
    one = [gradcam_heatmaps(model, images, [3, 4], layer=n) for n in cam_layers(model)]
    mean = (one[0] + one[1]) / 2
    low, high = mean.min(axis=(1, 2), keepdims=True), mean.max(axis=(1, 2), keepdims=True)
    np.testing.assert_allclose(both, (mean - low) / (high - low + 1e-7), atol=1e-5)


@pytest.mark.parametrize("method", ["layercam", "gradcam@block5+top"])
def test_non_square_maps_of_layercam_and_of_two_layers(lite0, lite0_images, method):
    maps = gradcam_heatmaps(lite0, lite0_images, method=method)
    assert maps.shape == (2, 48, 64) and maps.min() >= 0 and maps.max() <= 1.0
    assert (maps.reshape(2, -1).max(axis=1) > 0.9).all()


@pytest.mark.parametrize("method", ["gradcam", "gradcam++", "layercam"])
def test_the_graph_formulas_equal_tf_keras_vis(lite0, lite0_images, method):
    """`cam_from_gradients`, what the `explain` endpoint computes, is tf-keras-vis' map."""
    import tensorflow as tf

    from skin_tf.explain.gradcam import _layer_cams, _visualizer, logit_model

    logits = logit_model(lite0)
    classes = [1, 4]
    for layer in ("top_conv", "block5c_add"):
        reference = _layer_cams(_visualizer(logits, method), layer, lite0_images, classes)
        body = keras.Model(logits.inputs[0], [logits.get_layer(layer).output, logits.output])
        with tf.GradientTape() as tape:
            activations, out = body(lite0_images, training=False)
            score = tf.gather(out, classes, batch_dims=1)
        ours = cam_from_gradients(method, activations, tape.gradient(score, activations))
        assert reference.std() > 0
        # Grad-CAM++ in tf-keras-vis carries a factor exp(logit) per image, which the 0..1
        # scaling of every map removes (see cam_from_gradients); compare the scaled maps.
        np.testing.assert_allclose(scaled(ours.numpy()), scaled(reference), atol=1e-4)


def scaled(maps: np.ndarray) -> np.ndarray:
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low + 1e-12)


@pytest.mark.slow
def test_scorecam_is_tf_keras_vis_scorecam_on_the_logits(lite0, lite0_images):
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from skin_tf.explain.gradcam import _scorecam_cams, logit_model

    ours = _scorecam_cams(logit_model(lite0), "top_conv", lite0_images, [2, 5])
    reference = Scorecam(lite0, model_modifier=ReplaceToLinear(), clone=True)
    for i, target in enumerate([2, 5]):
        expected = reference(
            CategoricalScore([target]), lite0_images[i : i + 1], penultimate_layer="top_conv",
            max_N=64, expand_cam=False, normalize_cam=False,
        )  # fmt: skip
        np.testing.assert_allclose(ours[i], np.asarray(expected).reshape(ours[i].shape), rtol=1e-4)


@pytest.mark.slow
def test_a_model_with_patient_fields_is_mapped_with_them_held(real_frame):
    """Issue 31: the gallery's map of a fields model (tf-keras-vis on [images, fields]) is the
    exported `explain` endpoint's map for the same images and fields, on real HAM10000 images;
    Score-CAM holds the fields too."""
    from skin_tf.data.meta_fields import META_FIELDS, encode_fields
    from skin_tf.data.pipeline import load_image
    from skin_tf.serving.endpoints import build_endpoints

    keras.utils.set_random_seed(2)
    model = build_classifier("efficientnet_lite0", SIZE, weights="imagenet", metadata_width=20)
    rows = real_frame.groupby("dx").head(1)
    images = np.stack([load_image(str(path), SIZE, "squash") for path in rows["path"]])
    fields = encode_fields(rows, META_FIELDS)
    _, explain = build_endpoints(model)
    out = explain(images, fields)
    top = out["probs"].numpy().argmax(axis=1)
    ours = gradcam_heatmaps(model, images, class_index=top, fields=fields)
    heatmap = out["heatmap"].numpy()
    assert heatmap.shape == (len(rows), SIZE, SIZE) and heatmap.std() > 0.01
    np.testing.assert_allclose(heatmap, ours, atol=2e-3)
    score = gradcam_heatmaps(model, images[:1], method="scorecam", fields=fields[:1])
    assert score.shape == (1, SIZE, SIZE) and 0.0 <= score.min() <= score.max() <= 1.0
    with pytest.raises(ValueError, match="pass fields"):
        gradcam_heatmaps(model, images)


@pytest.mark.parametrize("metadata_width", [0, 5])
def test_scorecam_on_another_engine_equals_scorecam_in_tensorflow(metadata_width):
    """Given `predict` (the checks pass the model's LiteRT copy), Score-CAM's masked copies are
    scored by it: the maps equal those of the model's own TensorFlow passes, fields held too."""
    from skin_tf.explain.faithfulness import probability_function
    from skin_tf.explain.gradcam import logit_model
    from tests.fakes import small_classifier

    model = small_classifier((32, 48), metadata_width=metadata_width, seed=4)
    conv = [layer.name for layer in model.layers if isinstance(layer, keras.layers.Conv2D)][-1]
    rng = np.random.default_rng(8)
    images = rng.uniform(0, 255, (3, 32, 48, 3)).astype("float32")
    fields = rng.uniform(0, 1, (3, metadata_width)).astype("float32") if metadata_width else None
    logits = logit_model(model)
    kwargs = {"method": "scorecam", "layer": conv, "logits": True, "fields": fields}
    in_tensorflow = gradcam_heatmaps(logits, images, [1, 3, 6], **kwargs)
    on_litert = gradcam_heatmaps(
        logits, images, [1, 3, 6], predict=probability_function(model), **kwargs
    )
    assert in_tensorflow.std() > 0.01  # maps with structure, not flat
    np.testing.assert_allclose(on_litert, in_tensorflow, atol=1e-4)
    other_class = gradcam_heatmaps(logits, images, [0, 0, 0], **kwargs)
    assert np.abs(other_class - in_tensorflow).max() > 1e-3  # so the equality says something
