"""The randomisation cascade: which layers each step re-initialises, how, on a copy; and the
rank correlation that compares maps before and after."""

from __future__ import annotations

import keras
import numpy as np
import pytest
from scipy.stats import spearmanr

from skin_tf.explain.sanity import (
    cascade,
    cascade_steps,
    median_by_step,
    reinitialise,
    spearman_rows,
)
from skin_tf.models.classifier import build_classifier


@pytest.fixture(scope="module")
def lite0() -> keras.Model:
    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_lite0", (32, 48), weights=None)
    rng = np.random.default_rng(0)  # trained-looking batch norms: not at their identity
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.1, layer.moving_mean.shape))
            layer.gamma.assign(rng.uniform(0.5, 1.5, layer.gamma.shape))
    return model


def test_the_cascade_goes_from_the_head_down_through_the_stages(lite0):
    steps = cascade_steps(lite0, depth=5)
    assert [name for name, _ in steps] == ["head", "top", "block7", "block6", "block5"]
    layers = dict(steps)
    assert layers["head"] == ["predictions"]
    assert set(layers["top"]) == {"top_conv", "top_bn"}
    assert all(name.startswith("block6") for name in layers["block6"])
    assert "block6a_dwconv" in layers["block6"]
    assert len(cascade_steps(lite0, depth=2)) == 2
    with pytest.raises(ValueError, match="depth"):
        cascade_steps(lite0, depth=0)


def test_a_model_without_efficientnet_names_gets_a_clear_error():
    inputs = keras.Input((8, 8, 3))
    x = keras.layers.Conv2D(4, 3, name="conv")(inputs)
    outputs = keras.layers.Dense(7, activation="softmax")(keras.layers.Flatten()(x))
    with pytest.raises(ValueError, match="EfficientNet layer names"):
        cascade_steps(keras.Model(inputs, outputs))


def test_reinitialising_draws_new_kernels_and_resets_batch_norm(lite0):
    copy = keras.models.clone_model(lite0)
    copy.set_weights(lite0.get_weights())
    conv, bn, dw = (copy.get_layer(n) for n in ("top_conv", "top_bn", "block7a_dwconv"))
    before = [conv.kernel.numpy(), dw.kernel.numpy()]
    reinitialise(conv, seed=1)
    reinitialise(bn, seed=1)
    reinitialise(dw, seed=1)  # DepthwiseConv2D names its weight "kernel"
    assert not np.allclose(conv.kernel.numpy(), before[0])
    assert not np.allclose(dw.kernel.numpy(), before[1])
    np.testing.assert_array_equal(bn.gamma.numpy(), 1.0)
    np.testing.assert_array_equal(bn.moving_mean.numpy(), 0.0)
    again = keras.models.clone_model(lite0)
    reinitialise(again.get_layer("top_conv"), seed=1)  # the same seed, the same weights
    np.testing.assert_array_equal(again.get_layer("top_conv").kernel.numpy(), conv.kernel.numpy())


def test_the_cascade_is_cumulative_and_leaves_the_model_alone(lite0):
    original = {w.path: w.numpy().copy() for w in lite0.weights}
    seen = {}
    for step, model in cascade(lite0, depth=3, seed=0):
        seen[step] = {
            name: np.allclose(
                model.get_layer(name).get_weights()[0], lite0.get_layer(name).get_weights()[0]
            )
            for name in ("predictions", "top_conv", "block7a_project_conv", "block6a_expand_conv")
        }
    assert seen["head"] == {"predictions": False, "top_conv": True,
                            "block7a_project_conv": True, "block6a_expand_conv": True}  # fmt: skip
    assert seen["top"]["predictions"] is False and seen["top"]["top_conv"] is False
    assert seen["block7"]["block7a_project_conv"] is False
    assert seen["block7"]["block6a_expand_conv"] is True
    assert all(np.array_equal(w.numpy(), original[w.path]) for w in lite0.weights)


def test_spearman_rows_match_scipy_and_a_constant_map_scores_zero():
    rng = np.random.default_rng(0)
    a, b = rng.uniform(size=(3, 5, 6)), rng.uniform(size=(3, 5, 6))
    b[1] = a[1] ** 3  # same order
    expected = [spearmanr(x.ravel(), y.ravel())[0] for x, y in zip(a, b, strict=True)]
    np.testing.assert_allclose(spearman_rows(a, b), expected)
    assert spearman_rows(a, b)[1] == pytest.approx(1.0)
    assert spearman_rows(a[:1], np.zeros((1, 5, 6)))[0] == 0.0
    assert median_by_step([("top", np.array([0.1, 0.2, 0.9]))]) == {"top": 0.2}
