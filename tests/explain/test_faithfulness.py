"""Deletion and insertion curves: the baselines a map must beat, pixel orders, removal images,
batched perturbations, the two engines of the model's answers, and curves that rank a map that
knows where the evidence is first."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import rankdata

from skin_tf.explain.faithfulness import (
    Curves,
    centred_gaussian,
    curve_auc,
    deletion_insertion,
    perturbed,
    pixel_ranks,
    probability_function,
    random_maps,
    removal_images,
)

HW = (12, 16)  # non-square, as the 150x200 recipe


def test_the_centred_gaussian_peaks_in_the_middle_of_a_non_square_image():
    blob = centred_gaussian(HW)
    assert blob.shape == HW and blob.max() <= 1.0
    peak = np.unravel_index(blob.argmax(), HW)
    assert peak in {(5, 7), (5, 8), (6, 7), (6, 8)}
    assert blob[0, 0] < blob[6, 0] < blob[6, 7]  # falls off towards the corners
    # Its order depends on distance from the centre only: sigma changes values, not ranks.
    np.testing.assert_array_equal(rankdata(blob), rankdata(centred_gaussian(HW, sigma=0.1)))


def test_random_maps_are_seeded_smooth_and_scaled():
    maps = random_maps(3, HW, (3, 4), seed=1)
    assert maps.shape == (3, *HW) and maps.min() >= 0 and maps.max() <= 1.0 + 1e-6
    np.testing.assert_allclose(maps, random_maps(3, HW, (3, 4), seed=1))
    assert not np.allclose(maps, random_maps(3, HW, (3, 4), seed=2))
    # Bilinear from a 3x4 grid: neighbouring pixels differ far less than the whole range.
    assert np.abs(np.diff(maps, axis=2)).max() < 0.5


def test_ranks_follow_the_map_and_break_ties_at_random_not_in_raster_order():
    maps = np.array([[[0.2, 0.9], [0.5, 0.0]]])
    assert pixel_ranks(maps).tolist() == [[2, 0, 1, 3]]
    flat = np.zeros((1, 20, 20))  # all tied: raster order would remove the top rows first
    ranks = pixel_ranks(flat, seed=0)[0]
    assert sorted(ranks) == list(range(400))
    first = np.flatnonzero(ranks < 40) // 20  # rows of the first 10%
    assert len(set(first)) > 10
    assert not np.array_equal(ranks, pixel_ranks(flat, seed=1)[0])


def test_removal_images_are_the_mean_colour_or_a_blur():
    rng = np.random.default_rng(0)
    images = rng.uniform(0, 255, (2, *HW, 3)).astype("f4")
    mean = removal_images(images, "mean")
    np.testing.assert_allclose(mean[0, 3, 5], images[0].mean(axis=(0, 1)), rtol=1e-5)
    blur = removal_images(images, "blur")
    assert blur.shape == images.shape and blur.std() < images.std() / 2
    with pytest.raises(ValueError, match="mean, blur"):
        removal_images(images, "black")


def test_deletion_and_insertion_copies_are_complements():
    rng = np.random.default_rng(1)
    image = rng.uniform(0, 255, (*HW, 3)).astype("f4")
    removal = np.zeros_like(image)
    ranks = pixel_ranks(rng.uniform(size=(2, *HW)))
    gone, back = perturbed(image, removal, ranks, [0, 48, 192])
    assert gone.shape == back.shape == (2, 3, *HW, 3)
    np.testing.assert_array_equal(gone + back, np.broadcast_to(image, gone.shape))
    assert ((gone[:, 1] == 0).all(axis=-1).sum(axis=(1, 2)) == 48).all()
    np.testing.assert_array_equal(gone[:, 0], np.broadcast_to(image, gone[:, 0].shape))


def test_the_trapezoid_area():
    fractions = np.linspace(0, 1, 5)
    assert curve_auc(np.ones((1, 5)), fractions)[0] == pytest.approx(1.0)
    assert curve_auc(1 - fractions[None], fractions)[0] == pytest.approx(0.5)


def lesion_world(n: int = 4, seed: int = 0):
    """Images with a bright off-centre 'lesion' and a predict function whose class-0 score is
    the share of the lesion's brightness left: what a faithful map must find."""
    rng = np.random.default_rng(seed)
    images = rng.uniform(0, 40, (n, *HW, 3)).astype("f4")
    masks = np.zeros((n, *HW), bool)
    for i in range(n):
        top, left = rng.integers(0, 3), rng.integers(0, 4)  # near a corner, not the centre
        masks[i, top : top + 4, left : left + 5] = True
    images[masks] = 250.0
    calls = []

    def predict(batch):
        calls.append(len(batch))
        score = np.clip((batch.mean(axis=-1) - 60.0) / 190.0, 0, 1).sum(axis=(1, 2)) / 20.0
        score = np.clip(score, 0, 1)
        return np.stack([score, 1 - score], axis=1)

    return images, masks, predict, calls


def test_a_map_of_the_evidence_beats_the_centre_and_a_random_map():
    images, masks, predict, calls = lesion_world()
    maps = {
        "oracle": masks.astype("f4"),
        "centre": np.repeat(centred_gaussian(HW)[None], len(images), 0),
        "random": random_maps(len(images), HW, (3, 4)),
    }
    curves = deletion_insertion(predict, images, maps, [0] * 4, steps=8, batch_size=20)
    assert set(curves) == set(maps) and isinstance(curves["oracle"], Curves)
    oracle, centre, rand = (curves[k] for k in ("oracle", "centre", "random"))
    assert oracle.deletion.shape == (4, 9) and oracle.fractions[-1] == 1.0
    # The ends are shared: the image itself and the removal image.
    np.testing.assert_allclose(oracle.deletion[:, 0], centre.deletion[:, 0])
    np.testing.assert_allclose(oracle.deletion[:, -1], oracle.insertion[:, 0])
    np.testing.assert_allclose(oracle.insertion[:, -1], oracle.deletion[:, 0])
    assert (oracle.deletion_auc < centre.deletion_auc).all()
    assert (oracle.insertion_auc > centre.insertion_auc).all()
    assert oracle.deletion_auc.mean() < rand.deletion_auc.mean()
    # Each image's 2 x 7 x 3 perturbed copies went through in batches of at most 20.
    assert max(calls) <= 20 and sum(calls) == 2 * 4 + 4 * 2 * 7 * 3


def test_curves_name_shape_and_step_mistakes():
    images, masks, predict, _ = lesion_world(2)
    with pytest.raises(ValueError, match="expected"):
        deletion_insertion(predict, images, {"m": masks[:1].astype("f4")}, [0, 0])
    with pytest.raises(ValueError, match="one per image"):
        deletion_insertion(predict, images, {"m": masks.astype("f4")}, [0])
    with pytest.raises(ValueError, match="steps"):
        deletion_insertion(predict, images, {"m": masks.astype("f4")}, [0, 0], steps=1)


@pytest.mark.parametrize("width", [0, 5])
def test_both_engines_give_the_models_probabilities(width):
    """LiteRT (the checks' default, for speed) and TensorFlow answer alike, fields held."""
    from tests.fakes import small_classifier

    model = small_classifier((32, 48), metadata_width=width, seed=4)
    rng = np.random.default_rng(1)
    images = rng.uniform(0, 255, (6, 32, 48, 3)).astype("float32")
    fields = rng.uniform(0, 1, (6, width)).astype("float32") if width else None
    fast, slow = probability_function(model), probability_function(model, "tensorflow")
    np.testing.assert_allclose(fast(images, fields), slow(images, fields), atol=1e-5)
    for predict in (fast, slow):  # each misuse named, whichever engine runs
        wrong = None if width else np.zeros((6, 3), "float32")
        with pytest.raises(ValueError, match="give them" if width else "give no fields"):
            predict(images, wrong)
    with pytest.raises(ValueError, match="unknown engine 'gpu'"):
        probability_function(model, "gpu")
