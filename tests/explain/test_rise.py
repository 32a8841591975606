"""RISE: the masks (seeded, in 0..1, covering the image evenly), and maps that find the pixels a
model's answer depends on, hold patient fields, and ignore the masks' own pattern."""

from __future__ import annotations

import numpy as np
import pytest
import tensorflow as tf
from scipy.stats import spearmanr

from skin_tf.explain.gradcam import gradcam_heatmaps
from skin_tf.explain.rise import rise_masks, rise_saliency


def test_masks_are_seeded_soft_and_keep_about_half_of_every_pixel():
    masks = rise_masks(400, (30, 40), grid=4, keep=0.5, seed=3).numpy()
    assert masks.shape == (400, 30, 40) and masks.min() >= 0.0 and masks.max() <= 1.0
    np.testing.assert_array_equal(masks, rise_masks(400, (30, 40), grid=4, keep=0.5, seed=3))
    assert not np.allclose(masks, rise_masks(400, (30, 40), grid=4, keep=0.5, seed=4))
    share = masks.mean(axis=0)  # every pixel is shown in about half the copies
    assert share.min() > 0.40 and share.max() < 0.60
    assert 0.0 < np.mean((masks > 0.01) & (masks < 0.99)) < 0.9  # soft edges, not only 0 and 1
    assert abs(rise_masks(400, (30, 40), grid=4, keep=0.2).numpy().mean() - 0.2) < 0.03


@pytest.mark.parametrize("count, grid, keep", [(0, 4, 0.5), (10, 0, 0.5), (10, 4, 1.0)])
def test_bad_mask_settings_are_named(count, grid, keep):
    with pytest.raises(ValueError, match="RISE needs"):
        rise_masks(count, (8, 8), grid=grid, keep=keep)


def _region_model(region: np.ndarray):
    """P(class 0) is how much of `region` shows the image's bright pixels; the rest split
    evenly: the answer depends on those pixels and no others."""
    weight = tf.constant(region[None, ..., None] / region.sum(), tf.float32)

    def probabilities(batch: tf.Tensor) -> tf.Tensor:
        p0 = tf.reduce_sum(batch / 255.0 * weight, axis=(1, 2, 3)) / 3.0
        return tf.concat([p0[:, None], tf.repeat(((1.0 - p0) / 6.0)[:, None], 6, axis=1)], 1)

    return probabilities


def test_the_map_is_highest_where_the_answer_depends_on_the_pixels():
    region = np.zeros((32, 32), bool)
    region[4:14, 18:28] = True
    image = np.where(region[..., None], 255.0, 0.0).astype(np.float32)
    image[20:, :8] = 255.0  # bright too, but the answer ignores it
    masks = rise_masks(500, (32, 32), grid=4)
    maps = rise_saliency(_region_model(region), image[None], [0], masks).numpy()[0]
    # the map ranks the region first (its scale is the caller's: maps are scaled to 0..1)
    assert np.quantile(maps[region], 0.1) > np.quantile(maps[~region], 0.9)
    assert spearmanr(maps.ravel(), region.ravel()).statistic > 0.5
    # a class whose probability falls as the region shows gets the opposite picture
    other = rise_saliency(_region_model(region), image[None], [3], masks).numpy()[0]
    assert other[region].mean() < other[~region].mean()


def test_a_model_with_patient_fields_is_asked_with_each_images_row_held():
    seen = []

    def probabilities(batch: tf.Tensor, fields: tf.Tensor) -> tf.Tensor:
        seen.append(fields)
        return tf.nn.softmax(tf.concat([fields, tf.zeros((tf.shape(batch)[0], 5))], axis=1))

    fields = tf.constant([[1.0, 0.0], [0.0, 2.0]])
    images = tf.zeros((2, 8, 8, 3))
    maps = rise_saliency(probabilities, images, [0, 1], rise_masks(100, (8, 8), 2), fields)
    # the image does not matter, so each map is flat at its own row's probability
    first = tf.nn.softmax([1.0, 0.0, 0, 0, 0, 0, 0])[0]
    second = tf.nn.softmax([0.0, 2.0, 0, 0, 0, 0, 0])[1]
    np.testing.assert_allclose(maps[0].numpy(), first, rtol=1e-5)
    np.testing.assert_allclose(maps[1].numpy(), second, rtol=1e-5)


def test_mask_counts_that_do_not_fill_the_chunks_are_refused():
    with pytest.raises(ValueError, match="multiple of the chunk"):
        rise_saliency(lambda b: b, tf.zeros((1, 4, 4, 3)), [0], rise_masks(150, (4, 4), 2))


def test_gradcam_heatmaps_draws_rise_at_the_input_grid_in_0_1():
    import keras

    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(5)
    model = build_classifier("efficientnet_lite0", (32, 48), weights=None)
    images = np.random.default_rng(2).uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    maps = gradcam_heatmaps(model, images, [1, 2], method="rise")
    assert maps.shape == (2, 32, 48) and maps.min() >= 0.0 and maps.max() <= 1.0
    with pytest.raises(ValueError, match="reads no layer"):
        gradcam_heatmaps(model, images, [1, 2], method="rise", layer="top_conv")


@pytest.mark.parametrize(
    ("metadata_width", "engine"), [(0, "litert"), (5, "litert"), (0, "tensorflow")]
)
def test_the_trunk_cache_gives_the_cascades_rise_maps_at_every_step(metadata_width, engine):
    """RiseOnTrunk (masked copies through the shared layers once, on either engine) equals RISE
    through the whole randomised copy at each step of the cascade, with patient fields held
    too."""
    import keras

    from skin_tf.explain.gradcam import logit_model
    from skin_tf.explain.rise import RiseOnTrunk, rise_maps
    from skin_tf.explain.sanity import cascade, trunk_split
    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(7)
    model = build_classifier("efficientnet_lite0", (32, 48), weights=None,
                             metadata_width=metadata_width)  # fmt: skip
    rng = np.random.default_rng(3)
    for layer in model.layers:  # batch norms away from their identity, as after training
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
    images = rng.uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    fields = rng.uniform(0, 1, (2, metadata_width)).astype("float32") if metadata_width else None
    targets = [1, 4]
    logits = logit_model(model)
    trunk, before = None, None
    for step, copy in cascade(logits, depth=4, seed=0):
        lower, upper = trunk_split(copy, depth=4)
        assert lower.layers[-1].name == "block5c_add"
        trunk = trunk or RiseOnTrunk(lower, images, fields, count=100, engine=engine)
        cached = trunk.maps(upper, targets)
        full = rise_maps(copy, images, targets, fields, count=100).numpy()
        np.testing.assert_allclose(cached, full, rtol=1e-4, atol=1e-6)
        assert before is None or np.abs(cached - before).max() > 1e-4, step  # the model changed
        before = cached


def test_the_trunk_is_cut_below_the_deepest_stage_the_cascade_reaches():
    import keras

    from skin_tf.explain.sanity import trunk_split
    from skin_tf.models.classifier import build_classifier

    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_lite0", (32, 48), weights=None)
    assert trunk_split(model, depth=2)[0].layers[-1].name.startswith("block7")
    assert trunk_split(model, depth=3)[0].layers[-1].name == "block6d_add"
    assert trunk_split(model, depth=9) is None  # the cascade reaches block1: nothing shared


@pytest.mark.parametrize("metadata_width", [0, 5])
def test_rise_on_the_checks_engine_equals_rise_in_the_graph(metadata_width):
    """rise_maps_of (eager, each chunk one LiteRT call, as explain-check runs it) gives the maps
    of rise_maps (one traced TensorFlow call, as the explain endpoint runs it)."""
    from skin_tf.explain.faithfulness import probability_function
    from skin_tf.explain.gradcam import logit_model
    from skin_tf.explain.rise import rise_maps, rise_maps_of
    from tests.fakes import small_classifier

    model = small_classifier((32, 48), metadata_width=metadata_width, seed=5)
    rng = np.random.default_rng(6)
    images = rng.uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    fields = rng.uniform(0, 1, (2, metadata_width)).astype("float32") if metadata_width else None
    fast = rise_maps_of(probability_function(model), images, [2, 5], fields, count=200)
    graph = rise_maps(logit_model(model), images, [2, 5], fields, count=200).numpy()
    assert fast.shape == (2, 32, 48) and fast.std() > 1e-4  # not flat: the masks moved the answer
    np.testing.assert_allclose(fast, graph, rtol=1e-4, atol=1e-6)


@pytest.mark.slow
def test_an_ensembles_trunk_on_litert_keeps_each_members_cut_in_place():
    """An ensemble's trunk has one cut per member, of the same shape; on LiteRT they must come
    back in the model's order (the interpreter lists outputs in its own), or the upper part would
    read member 0's features as member 1's: the maps equal the TensorFlow trunk's."""
    import keras

    from skin_tf.explain.gradcam import logit_model
    from skin_tf.explain.rise import RiseOnTrunk
    from skin_tf.explain.sanity import trunk_split
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.ensemble import combine_classifiers

    keras.utils.set_random_seed(11)
    members = [build_classifier("efficientnet_lite0", (32, 48), weights=None) for _ in range(2)]
    rng = np.random.default_rng(12)
    for member in members:  # batch norms away from their identity, each member its own
        for layer in member.layers:
            if isinstance(layer, keras.layers.BatchNormalization):
                layer.moving_mean.assign(rng.normal(0, 0.2, layer.moving_mean.shape))
    lower, upper = trunk_split(logit_model(combine_classifiers(members)), depth=4)
    assert len(lower.outputs) == 2 and lower.outputs[0].shape == lower.outputs[1].shape
    images = rng.uniform(0, 255, (2, 32, 48, 3)).astype("float32")
    on_litert = RiseOnTrunk(lower, images, count=100, engine="litert")
    in_tensorflow = RiseOnTrunk(lower, images, count=100, engine="tensorflow")
    for mine, theirs in zip(on_litert.features[0], in_tensorflow.features[0], strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-3, atol=1e-3)
    maps = on_litert.maps(upper, [1, 4])
    assert maps.std() > 1e-5  # the masks move the answer
    np.testing.assert_allclose(maps, in_tensorflow.maps(upper, [1, 4]), rtol=1e-4, atol=1e-6)
