"""The guard's scores and thresholds: Mahalanobis and energy in numpy, the same scores inside the
graph (`skin_tf.serving.endpoints.GuardGraph`), the .npz round trip, and thresholds that keep at
least 95 % of the images they are chosen on."""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import logsumexp

from skin_tf.serving.endpoints import GuardGraph
from skin_tf.serving.guard import (
    OodGuard,
    energy_guard,
    fit_mahalanobis,
    keep_threshold,
    kept_share,
    load_guard,
)


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
    out = graph(features[:40].astype(np.float32))
    np.testing.assert_allclose(out["ood_score"].numpy(), guard.score(features[:40]), rtol=1e-4)
    np.testing.assert_array_equal(
        out["in_distribution"].numpy(), out["ood_score"].numpy() <= np.float32(threshold)
    )


def test_an_unset_graph_threshold_keeps_nothing():
    guard = energy_guard(np.eye(3, 7), np.zeros(7))
    assert not GuardGraph(guard)(np.zeros((2, 3), np.float32))["in_distribution"].numpy().any()


def test_saved_guard_loads_back(tmp_path):
    features, labels = gaussian_classes()
    guard = fit_mahalanobis(features, labels, layer="block3b_add")
    loaded = load_guard(guard.save(tmp_path / "ood_guard.npz"))
    assert (loaded.method, loaded.layer) == ("mahalanobis", "block3b_add")
    np.testing.assert_array_equal(loaded.score(features), guard.score(features))
    energy = load_guard(energy_guard(np.eye(3, 7), np.ones(7)).save(tmp_path / "energy.npz"))
    assert energy.layer is None and energy.method == "energy"


@pytest.mark.parametrize("n", [1, 19, 20, 21, 100, 1001])
def test_keep_threshold_keeps_at_least_95_percent(n):
    scores = np.random.default_rng(n).normal(size=n).astype(np.float32)
    threshold = keep_threshold(scores)
    assert kept_share(scores, threshold) >= 0.95
    assert threshold in scores  # one of the scores: the smallest that keeps enough
    assert kept_share(scores, np.nextafter(np.float32(threshold), -np.inf)) < 0.95


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
