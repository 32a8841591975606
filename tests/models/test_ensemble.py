"""Tests of skin_tf.models.ensemble: several classifiers as one flat model."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from skin_tf.models.classifier import build_classifier, last_conv_layer_name
from skin_tf.models.ensemble import combine_classifiers, member_count


def _member(seed: int, size=(32, 48)) -> keras.Model:
    keras.utils.set_random_seed(seed)
    model = build_classifier("efficientnet_lite0", size, weights=None)
    head = model.get_layer("predictions")  # a head that says something, so pooling shows
    head.kernel.assign(np.random.default_rng(seed).normal(0, 1.0, head.kernel.shape))
    return model


def _logits(member: keras.Model, images: np.ndarray) -> np.ndarray:
    features = keras.Model(member.inputs, member.get_layer("predictions").input)
    kernel, bias = member.get_layer("predictions").get_weights()
    return features.predict(images, verbose=0).astype("float64") @ kernel + bias


def _log_softmax(logits: np.ndarray) -> np.ndarray:
    shifted = logits - logits.max(axis=1, keepdims=True)
    return shifted - np.log(np.exp(shifted).sum(axis=1, keepdims=True))


def test_the_pooled_probabilities_are_the_geometric_mean_of_the_calibrated_ones(tmp_path):
    members, temperatures = [_member(0), _member(1), _member(2)], [1.5, 0.7, 1.0]
    images = np.random.default_rng(0).uniform(0, 255, (4, 32, 48, 3)).astype("float32")
    combined = combine_classifiers(members, temperatures)
    # From each member's logits in float64: its float32 probabilities can underflow to 0.
    pairs = zip(members, temperatures, strict=True)
    logs = [_log_softmax(_logits(member, images) / t) for member, t in pairs]
    expected = np.exp(np.mean(logs, axis=0))
    expected /= expected.sum(axis=1, keepdims=True)
    np.testing.assert_allclose(combined.predict(images, verbose=0), expected, atol=1e-5)
    # One flat model: every member's layers under its prefix, Grad-CAM's layer reachable.
    assert member_count(combined) == 3 and member_count(members[0]) == 0
    assert combined.get_layer("m0_top_conv") is not None
    assert last_conv_layer_name(combined) == "m2_top_conv"
    combined.save(tmp_path / "ensemble.keras")
    loaded = keras.saving.load_model(tmp_path / "ensemble.keras", compile=False)
    np.testing.assert_allclose(loaded.predict(images, verbose=0), expected, atol=1e-5)


def test_members_must_be_several_and_of_one_shape():
    with pytest.raises(ValueError, match="at least 2 members"):
        combine_classifiers([_member(0)])
    with pytest.raises(ValueError, match="share one fixed input shape"):
        combine_classifiers([_member(0), _member(1, size=(32, 32))])
    with pytest.raises(ValueError, match="3 temperatures for 2 members"):
        combine_classifiers([_member(0), _member(1)], [1.0, 1.0, 1.0])


@pytest.mark.slow  # two Lite0 members traced and converted: ~20 s
def test_an_ensemble_runs_on_litert_as_on_tensorflow():
    """The explanation checks answer through the model's LiteRT copy: the combined model
    converts, and its pooled probabilities come out as Keras gives them."""
    from skin_tf.models.litert_runtime import LiteRTRunner, float_flatbuffer

    combined = combine_classifiers([_member(3), _member(4)], [1.2, 0.9])
    images = np.random.default_rng(1).uniform(0, 255, (5, 32, 48, 3)).astype("float32")
    (probs,) = LiteRTRunner(float_flatbuffer(combined)).run(images)
    np.testing.assert_allclose(probs, combined.predict(images, verbose=0), atol=1e-5)
