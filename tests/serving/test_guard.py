"""The guard's scores and thresholds: Mahalanobis and energy in numpy, the confidence term, the
same scores inside the graph (`skin_tf.serving.endpoints.GuardGraph`), the .npz round trip (and
a file written before the confidence term), the colour check in numpy and in the graph,
thresholds that keep at least 95 % of the images
they are chosen on and of every benign-shift family, and the accuracy on kept vs rejected."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
from scipy.special import logsumexp

from skin_tf.serving.endpoints import GuardGraph
from skin_tf.serving.guard import (
    COLOUR_MARGIN,
    OodGuard,
    accuracy_split,
    checked_scores,
    constrained_threshold,
    energy_guard,
    fit_mahalanobis,
    keep_threshold,
    kept_share,
    least_colourful,
    load_guard,
    mean_saturation,
    refuses_the_doubtful,
    separation,
    shifted_kept,
)

COLOURFUL = np.full((40, 4, 4, 3), [180.0, 120.0, 100.0], np.float32)  # saturation 0.444


def gaussian_classes(n: int = 700, d: int = 6, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Seven Gaussian classes with one shared, strongly anisotropic covariance."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % 7
    centres = rng.normal(0, 4, (7, d))
    mixing = rng.normal(0, 1, (d, d)) * np.linspace(0.2, 3, d)
    return centres[labels] + rng.normal(0, 1, (n, d)) @ mixing, labels


def test_mahalanobis_scores_training_like_points_low_and_far_points_high():
    features, labels = gaussian_classes()
    guard = fit_mahalanobis(features, labels, layer="block4c_add")
    assert guard.method == "mahalanobis" and guard.dim == 6 and guard.layer == "block4c_add"
    scores = guard.score(features)
    assert 0.7 < scores.mean() < 1.1  # squared distance / d: about 1 for a training point
    fresh, fresh_labels = gaussian_classes(seed=0)  # the same distribution: kept
    threshold = keep_threshold(guard.score(fresh))
    far = features + 40.0  # a shift no class has
    assert kept_share(guard.score(far), threshold) == 0.0
    # The shared covariance matters: along the narrow directions a small step is far.
    narrow = np.linalg.eigh(np.cov((features - features.mean(0)).T))[1][:, 0]
    stepped = guard.score(features[:50] + 3 * narrow * np.sqrt(np.var(features @ narrow)))
    assert np.median(stepped) > 2 * np.median(scores[:50])


def test_energy_is_minus_logsumexp_of_the_logits():
    rng = np.random.default_rng(1)
    kernel, bias, features = rng.normal(size=(5, 7)), rng.normal(size=7), rng.normal(size=(4, 5))
    guard = energy_guard(kernel, bias)
    expected = -logsumexp(features @ kernel.astype(np.float32) + bias.astype(np.float32), axis=1)
    np.testing.assert_allclose(guard.score(features), expected, rtol=1e-5)
    assert guard.layer is None and guard.dim == 5


@pytest.mark.parametrize("method", ["mahalanobis", "energy"])
def test_the_graph_computes_the_numpy_score(method):
    features, labels = gaussian_classes(d=8)
    guard = (
        fit_mahalanobis(features, labels)
        if method == "mahalanobis"
        else energy_guard(np.random.default_rng(2).normal(size=(8, 7)), np.zeros(7))
    )
    graph = GuardGraph(guard)
    threshold = keep_threshold(guard.score(features))
    graph.threshold.assign(threshold)
    out = graph(features[:40].astype(np.float32), None, COLOURFUL)
    np.testing.assert_allclose(out["ood_score"].numpy(), guard.score(features[:40]), rtol=1e-4)
    np.testing.assert_array_equal(
        out["in_distribution"].numpy(), out["ood_score"].numpy() <= np.float32(threshold)
    )


def test_the_confidence_term_adds_weight_times_one_minus_the_top_probability():
    features, labels = gaussian_classes()
    plain = fit_mahalanobis(features, labels)
    guard = OodGuard(plain.method, plain.arrays, plain.layer, confidence_weight=2.0)
    probs = np.tile([[0.7, 0.2, 0.1, 0, 0, 0, 0]], (len(features), 1))
    np.testing.assert_allclose(guard.score(features, probs), plain.score(features) + 2.0 * 0.3)
    assert "+ 2 x (1 - the largest class probability" in guard.note
    assert "confidence" not in plain.note.lower() and plain.score(features, probs) is not None
    with pytest.raises(ValueError, match="pass the engine's class probabilities"):
        guard.score(features)
    with pytest.raises(ValueError, match=r"probs \(700, C\)"):
        guard.score(features, probs[:3])
    with pytest.raises(ValueError, match="confidence_weight must be a finite number >= 0"):
        OodGuard(plain.method, plain.arrays, confidence_weight=-1.0)
    # In the graph: the same score from the same probabilities.
    graph = GuardGraph(guard)
    graph.threshold.assign(float(np.median(guard.score(features, probs))))
    out = graph(features[:40].astype(np.float32), probs[:40].astype(np.float32), COLOURFUL)
    np.testing.assert_allclose(
        out["ood_score"].numpy(), guard.score(features[:40], probs[:40]), rtol=1e-4
    )
    with pytest.raises(ValueError, match="pass the probabilities too"):
        graph(features[:4].astype(np.float32), None, COLOURFUL[:4])


def test_an_unset_graph_threshold_keeps_nothing():
    guard = energy_guard(np.eye(3, 7), np.zeros(7))
    out = GuardGraph(guard)(np.zeros((2, 3), np.float32), None, COLOURFUL[:2])
    assert not out["in_distribution"].numpy().any()


def test_mean_saturation_is_zero_for_grey_and_blind_to_brightness():
    rng = np.random.default_rng(3)
    images = rng.uniform(0, 255, (5, 6, 7, 3))
    grey = np.repeat(images.mean(axis=-1, keepdims=True), 3, axis=-1)
    np.testing.assert_array_equal(mean_saturation(grey), 0.0)
    np.testing.assert_allclose(mean_saturation(images * 0.5), mean_saturation(images))
    assert mean_saturation(np.zeros((1, 2, 2, 3))) == 0.0  # black: no division by zero
    with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
        mean_saturation(images[0])


def test_the_colour_check_refuses_what_is_greyer_than_every_fitted_image_in_numpy_and_graph():
    import tensorflow as tf

    from skin_tf.serving.endpoints import mean_saturation as graph_saturation

    rng = np.random.default_rng(4)
    fitted = rng.uniform(0, 255, (30, 8, 8, 3)).astype(np.float32)
    least = least_colourful(fitted[:20], fitted[20:])
    assert least == pytest.approx(mean_saturation(fitted).min())
    floor = COLOUR_MARGIN * least
    grey = np.repeat(fitted[:10].mean(axis=-1, keepdims=True), 3, axis=-1)
    washed = 0.95 * grey + 0.05 * fitted[:10]  # a little colour left: below the floor
    assert (mean_saturation(washed) < floor).all()
    images = np.concatenate([fitted, grey, washed])
    np.testing.assert_allclose(
        graph_saturation(tf.constant(images)).numpy(), mean_saturation(images), rtol=1e-5
    )
    features, labels = gaussian_classes(n=len(images), d=8)
    guard = dataclasses.replace(fit_mahalanobis(features, labels), colour_floor=floor)
    assert "mean saturation is below" in guard.note
    threshold = float(guard.score(features).max())  # every score is kept: colour decides
    expected = np.r_[np.ones(30, bool), np.zeros(20, bool)]
    np.testing.assert_array_equal(guard.in_distribution(guard.score(features), threshold, images),
                                  expected)  # fmt: skip
    graph = GuardGraph(guard)
    graph.threshold.assign(threshold + 1e-3)
    out = graph(features.astype(np.float32), None, images)
    np.testing.assert_array_equal(out["in_distribution"].numpy(), expected)
    # What a threshold on checked scores keeps is what in_distribution keeps.
    checked = checked_scores(guard.score(features), guard.colourful(images))
    np.testing.assert_array_equal(checked <= threshold, expected)
    facts = separation(threshold, checked[:30], {"grey": checked[30:]})
    assert facts["rejected"]["grey"] == 1.0 and facts["auroc"] == 1.0
    with pytest.raises(ValueError, match="colour_floor is a saturation"):
        OodGuard("energy", {"kernel": np.eye(3, 7), "bias": np.zeros(7)}, colour_floor=1.5)


def test_saved_guard_loads_back(tmp_path):
    features, labels = gaussian_classes()
    guard = fit_mahalanobis(features, labels, layer="block3b_add")
    loaded = load_guard(guard.save(tmp_path / "ood_guard.npz"))
    assert (loaded.method, loaded.layer) == ("mahalanobis", "block3b_add")
    np.testing.assert_array_equal(loaded.score(features), guard.score(features))
    energy = load_guard(energy_guard(np.eye(3, 7), np.ones(7)).save(tmp_path / "energy.npz"))
    assert energy.layer is None and energy.method == "energy" and energy.confidence_weight == 0
    weighted = OodGuard(guard.method, guard.arrays, guard.layer, 1.25, colour_floor=0.03)
    again = load_guard(weighted.save(tmp_path / "weighted.npz"))
    assert (again.confidence_weight, again.colour_floor) == (1.25, 0.03)


def test_a_guard_file_from_before_the_confidence_term_loads_with_weight_zero(tmp_path):
    features, labels = gaussian_classes()
    guard = fit_mahalanobis(features, labels, layer="block4c_add")
    with (tmp_path / "old.npz").open("wb") as handle:  # what exports wrote before issue 32
        np.savez(handle, method=np.array("mahalanobis"), layer=np.array("block4c_add"),
                 **guard.arrays)  # fmt: skip
    old = load_guard(tmp_path / "old.npz")
    assert old.confidence_weight == old.colour_floor == 0.0
    assert set(old.arrays) == {"whiten", "centres"}
    np.testing.assert_array_equal(old.score(features), guard.score(features))


@pytest.mark.parametrize("n", [1, 19, 20, 21, 100, 1001])
def test_keep_threshold_keeps_at_least_95_percent(n):
    scores = np.random.default_rng(n).normal(size=n).astype(np.float32)
    threshold = keep_threshold(scores)
    assert kept_share(scores, threshold) >= 0.95
    assert threshold in scores  # one of the scores: the smallest that keeps enough
    assert kept_share(scores, np.nextafter(np.float32(threshold), -np.inf)) < 0.95


def test_the_constrained_threshold_keeps_validation_and_every_shifted_family():
    val = np.arange(1.0, 101.0)
    assert constrained_threshold(val) == keep_threshold(val) == 95.0
    shifted = {"crop_224": val * 1.5, "blur": val}
    threshold = constrained_threshold(val, shifted)
    assert threshold == 142.5  # 95 % of the crops: they score higher than validation
    assert kept_share(val, threshold) == 1.0
    assert shifted_kept(threshold, shifted) == {"crop_224": 0.95, "blur": 1.0}
    assert constrained_threshold(val, shifted, shifted_keep=0.9) == 135.0
    # Without the shifts, the 95 % validation threshold keeps only 63 % of the crops.
    assert shifted_kept(95.0, shifted)["crop_224"] == 0.63


def test_accuracy_on_kept_and_rejected_images():
    scores = np.array([0.1, 0.2, 0.3, 5.0, 6.0])
    correct = np.array([True, True, False, True, False])
    split = accuracy_split(1.0, scores, correct)
    assert split == {"kept": 2 / 3, "rejected": 0.5, "n_rejected": 2}
    assert refuses_the_doubtful(split)
    assert not refuses_the_doubtful(accuracy_split(1.0, scores, ~correct))  # refuses right ones
    assert accuracy_split(10.0, scores, correct)["rejected"] is None
    assert refuses_the_doubtful(accuracy_split(10.0, scores, correct))  # nothing to compare
    assert accuracy_split(1.0, scores, None) is None and refuses_the_doubtful(None)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="finite"):
        keep_threshold(np.array([1.0, np.nan]))
    with pytest.raises(ValueError, match="finite"):
        keep_threshold(np.array([]))
    with pytest.raises(ValueError, match="unknown guard method"):
        OodGuard("knn", {})
    with pytest.raises(ValueError, match="needs the arrays"):
        OodGuard("energy", {"kernel": np.eye(2)})
    with pytest.raises(ValueError, match="do not vary"):
        fit_mahalanobis(np.ones((14, 3)), np.arange(14) % 7)
    with pytest.raises(ValueError, match=r"features \(N, 3\)"):
        energy_guard(np.eye(3, 7), np.zeros(7)).score(np.zeros((2, 4)))
