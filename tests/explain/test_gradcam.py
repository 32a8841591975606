"""Grad-CAM heatmaps: shape and range, the explained class, overlays at the image's own size."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from skin_tf.data.ham10000 import CLASSES
from skin_tf.explain.gradcam import gradcam_heatmaps, heatmap_to_input, overlay
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
