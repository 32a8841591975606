"""The out-of-distribution guard of an exported model: a score of an image's features that is low
for images like the run's training images and high for anything else, and, per engine, the
threshold above which an image is called out of distribution.

Two kinds of score, each a function of one feature vector per image, so every engine can compute
it from what its model outputs:

- `mahalanobis` (Lee et al., NeurIPS 2018): class-conditional Gaussians with one shared covariance,
  fitted on training features: the mean-pooled output of one layer (`layer`; None: the pooled
  penultimate features the softmax head reads). The covariance is scikit-learn's Ledoit-Wolf
  shrinkage estimate (up to d = 1280 features from a few thousand images: the sample covariance
  would be singular or nearly so). Score: the squared Mahalanobis distance to the nearest class
  mean, divided by d, so a typical training image scores about 1.
- `energy` (Liu et al., NeurIPS 2020): the free energy of the logits, -logsumexp(f·K + b) at
  T = 1, with f the penultimate features and K, b the softmax head's weights (no fitting).

Either may add a confidence term, `confidence_weight` x (1 - the largest class probability the
engine gives), the maximum-softmax-probability baseline of Hendrycks and Gimpel (ICLR 2017): a
Mahalanobis score alone refused valid images the model got *right* more often than the ones it
got wrong (issue 32); with the term, of two images equally far from the training features the
one the model is less sure of is refused first. Every engine outputs its probabilities anyway,
so the term needs no other output.

Beside the score, a colour check (`OodGuard.colour_floor`): dermoscopy photographs are colour
pictures, and no feature score refused greyscale copies of test lesions (issue 32: 2 of 14 on
the demo, 0.29 at best among the candidates), so an image whose mean saturation
(`mean_saturation`, at the model's size) is below half the least colourful image the guard was
fitted or thresholded on (`least_colourful`), benign shifts such as colour constancy included,
is out of distribution whatever its score. The
half is a margin: the least colourful of the ten thousand or so fitted images only estimates
where lesion photographs end, a user's set reaches below it, and a grey picture is at 0.

`skin_tf.serving.guard_choice` fits the candidates at export and keeps the best (Lee et al. score
every layer; on the demo model an intermediate layer separates far better than the penultimate
one); the SavedModel computes the kept score in its graph (`skin_tf.serving.endpoints.GuardGraph`)
and the LiteRT models output the guard's features beside the probabilities, scored here in numpy
with the same constants (`ood_guard.npz`).

Example:
    >>> rng = np.random.default_rng(0)
    >>> features, labels = rng.normal(size=(70, 4)), np.arange(70) % 7
    >>> guard = fit_mahalanobis(features, labels)
    >>> guard.score(features).shape, guard.dim
    ((70,), 4)
    >>> float(np.mean(guard.score(features) <= keep_threshold(guard.score(features)))) >= 0.95
    True
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

GUARD_FILE = "ood_guard.npz"
METHODS = ("mahalanobis", "energy")
KEEP = 0.95  # the share of validation images every engine's threshold keeps (at least)
# ... and of every benign-shift family made from them (skin_tf.data.shifts): 2 points above the
# 93 % the guard must keep of such images, a margin for images it was not chosen on.
SHIFTED_KEEP = 0.95
SHIFTED_FLOOR = 0.93
QUANTILE_METHOD = "inverted_cdf"  # numpy: the smallest score with at least KEEP of them <= it
_ARRAYS = {"mahalanobis": ("whiten", "centres"), "energy": ("kernel", "bias")}
SCORE_NOTES = {
    "mahalanobis": "squared Mahalanobis distance of the layer's mean-pooled features to the "
    "nearest class mean (class-conditional Gaussians, one shared Ledoit-Wolf covariance; Lee et "
    "al. 2018), divided by the feature dimension",
    "energy": "free energy of the logits, -logsumexp(logits) at T = 1 (Liu et al. 2020)",
}
COLOUR_MARGIN = 0.5  # the floor is this share of the least colourful fitted image
COLOUR_NOTE = (
    "; and out of distribution whatever its score if its mean saturation is below {floor:.4g}, "
    "half the least colourful image the guard was fitted or thresholded on"
)
CONFIDENCE_NOTE = (
    " + {weight:.4g} x (1 - the largest class probability the engine outputs; Hendrycks and "
    "Gimpel 2017)"
)


@dataclass(frozen=True)
class OodGuard:
    """One score of the penultimate features, with its constants (float32 arrays).

    mahalanobis: `whiten` (d, d) maps features to a space where the shared covariance is the
    identity, `centres` (C, d) are the class means in that space. energy: `kernel` (d, C) and
    `bias` (C,) are the softmax head's. `confidence_weight` w > 0 adds w x (1 - max probability),
    so `score` then needs the engine's probabilities too. `colour_floor` > 0: an image whose
    `mean_saturation` is below it is out of distribution whatever its score (`colourful`).
    """

    method: str
    arrays: dict[str, np.ndarray] = field(repr=False)
    layer: str | None = None  # whose mean-pooled output it reads; None: the head's input
    confidence_weight: float = 0.0
    colour_floor: float = 0.0  # 0: no colour check

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"unknown guard method {self.method!r}: one of {', '.join(METHODS)}")
        missing = set(_ARRAYS[self.method]) - set(self.arrays)
        if missing:
            raise ValueError(f"a {self.method} guard needs the arrays {sorted(missing)}")
        if not (np.isfinite(self.confidence_weight) and self.confidence_weight >= 0):
            raise ValueError(
                f"confidence_weight must be a finite number >= 0, got {self.confidence_weight}"
            )
        if not 0 <= self.colour_floor < 1:
            raise ValueError(f"colour_floor is a saturation in [0, 1), got {self.colour_floor}")

    @property
    def dim(self) -> int:
        """The feature dimension d the guard reads."""
        first = self.arrays[_ARRAYS[self.method][0]]
        return int(first.shape[0])

    def score(self, features: np.ndarray, probs: np.ndarray | None = None) -> np.ndarray:
        """(N,) scores of features (N, d), float64; higher means less like the training images.
        `probs` (N, C), the engine's class probabilities, are needed when the guard has a
        confidence term (`confidence_weight` > 0) and ignored otherwise.

        Example:
            >>> energy_guard(np.eye(3, 7), np.zeros(7)).score(np.zeros((2, 3))).round(3)
            array([-1.946, -1.946])
        """
        f = np.asarray(features, np.float64)
        if f.ndim != 2 or f.shape[1] != self.dim:
            raise ValueError(f"expected features (N, {self.dim}), got shape {f.shape}")
        if self.method == "mahalanobis":
            z = f @ self.arrays["whiten"].astype(np.float64)
            centres = self.arrays["centres"].astype(np.float64)
            squared = ((z[:, None, :] - centres[None, :, :]) ** 2).sum(axis=-1)
            scores = squared.min(axis=1) / self.dim
        else:
            from scipy.special import logsumexp

            logits = f @ self.arrays["kernel"].astype(np.float64) + self.arrays["bias"]
            scores = -logsumexp(logits, axis=1)
        if not self.confidence_weight:
            return scores
        if probs is None:
            raise ValueError(
                "this guard adds a confidence term: pass the engine's class probabilities "
                "(probs) beside the features"
            )
        p = np.asarray(probs, np.float64)
        if p.shape[0] != len(f) or p.ndim != 2:
            raise ValueError(f"expected probs ({len(f)}, C), got shape {p.shape}")
        return scores + self.confidence_weight * (1.0 - p.max(axis=1))

    def colourful(self, images: np.ndarray) -> np.ndarray:
        """(N,) whether each image (N, H, W, 3) at the model's size, 0-255, passes the colour
        check (all True without one).

        Example:
            >>> guard = OodGuard("energy", {"kernel": np.eye(3, 7), "bias": np.zeros(7)},
            ...                  colour_floor=0.05)
            >>> guard.colourful(np.full((2, 8, 8, 3), [120.0, 120.0, 120.0])).tolist()
            [False, False]
        """
        return mean_saturation(images) >= self.colour_floor

    def in_distribution(
        self, scores: np.ndarray, threshold: float, images: np.ndarray
    ) -> np.ndarray:
        """(N,) the one rule every engine applies: score at most the engine's threshold, and the
        image (at the model's size) passes the colour check."""
        return (np.asarray(scores) <= threshold) & self.colourful(images)

    @property
    def note(self) -> str:
        """What the score is, in words (metadata.json's `score`)."""
        note = SCORE_NOTES[self.method]
        if self.confidence_weight:
            note += CONFIDENCE_NOTE.format(weight=self.confidence_weight)
        if self.colour_floor:
            note += COLOUR_NOTE.format(floor=self.colour_floor)
        return note

    def save(self, path: str | os.PathLike) -> Path:
        """Write the guard as an .npz (method + arrays); `load_guard` reads it back."""
        path = Path(path)
        with path.open("wb") as handle:  # a file object: np.savez adds no ".npz" of its own
            np.savez(handle, method=np.array(self.method), layer=np.array(self.layer or ""),
                     confidence_weight=np.array(self.confidence_weight),
                     colour_floor=np.array(self.colour_floor), **self.arrays)  # fmt: skip
        return path


def load_guard(path: str | os.PathLike) -> OodGuard:
    """The guard `OodGuard.save` wrote (no pickles are loaded). A file written before the
    confidence term or the colour check existed loads with confidence_weight or colour_floor 0,
    the guard it was exported with."""
    scalars = ("method", "layer", "confidence_weight", "colour_floor")
    with np.load(Path(path), allow_pickle=False) as data:
        method, layer = str(data["method"]), str(data["layer"]) or None
        weight, floor = (float(data[k]) if k in data.files else 0.0 for k in scalars[2:])
        arrays = {name: data[name] for name in data.files if name not in scalars}
    return OodGuard(method, arrays, layer, weight, floor)


def mean_saturation(images: np.ndarray) -> np.ndarray:
    """(N,) the mean HSV saturation, (max - min) / max of each pixel's channels, of images
    (N, H, W, 3) in 0-255 (a pixel darker than 1 counts its max as 1): 0 for a grey picture,
    unchanged by brightness. `skin_tf.serving.endpoints.GuardGraph` computes the same in the
    SavedModel's graph.

    Example:
        >>> mean_saturation(np.array([[[[200, 100, 100], [50, 50, 50]]]])).round(3)
        array([0.25])
    """
    x = np.asarray(images, np.float64)
    if x.ndim != 4 or x.shape[-1] != 3:
        raise ValueError(f"expected images (N, H, W, 3), got shape {x.shape}")
    top = x.max(axis=-1)
    return ((top - x.min(axis=-1)) / np.maximum(top, 1.0)).mean(axis=(1, 2))


def least_colourful(*image_sets: np.ndarray) -> float:
    """The lowest `mean_saturation` among these images (the ones a guard is fitted and
    thresholded on, at the model's size); the colour check's floor is `COLOUR_MARGIN` x it.

    Example:
        >>> reddish = np.full((1, 2, 2, 3), [100, 50, 50])
        >>> pinkish = np.full((1, 2, 2, 3), [100, 75, 75])
        >>> least_colourful(reddish, pinkish)
        0.25
    """
    return float(min(mean_saturation(images).min() for images in image_sets if len(images)))


# ---------------------------------------------------------------- fitting


def fit_mahalanobis(features: np.ndarray, labels: np.ndarray, layer: str | None = None) -> OodGuard:
    """Class means and one shared Ledoit-Wolf covariance of the class-centred training features
    (of `layer`, mean-pooled; None: the head's input).

    The inverse square root of the covariance (from its eigendecomposition) becomes `whiten`, so
    the graph needs one matrix product and a few sums per image instead of a matrix inverse.
    """
    from sklearn.covariance import ledoit_wolf
    from threadpoolctl import threadpool_limits

    f = np.asarray(features, np.float64)
    labels = np.asarray(labels)
    classes = np.unique(labels)
    if len(f) != len(labels) or len(classes) < 1:
        raise ValueError("need one label per feature row and at least one class")
    means = np.stack([f[labels == c].mean(axis=0) for c in classes])
    centred = f - means[np.searchsorted(classes, labels)]
    # One BLAS thread: on two cores shared with TensorFlow or another job, OpenBLAS' threads
    # oversubscribe the cores and the d x d covariance fit slows down many times over.
    with threadpool_limits(1):
        covariance, _ = ledoit_wolf(centred, assume_centered=True)
        values, vectors = np.linalg.eigh(covariance)
    if not values.max() > 0:
        raise ValueError("the training features do not vary: no Gaussian can be fitted to them")
    whiten = vectors / np.sqrt(np.clip(values, values.max() * 1e-12, None))
    return OodGuard(
        "mahalanobis",
        {"whiten": whiten.astype(np.float32), "centres": (means @ whiten).astype(np.float32)},
        layer,
    )


def energy_guard(kernel: np.ndarray, bias: np.ndarray) -> OodGuard:
    """The energy score of a softmax head with these weights (kernel (d, C), bias (C,))."""
    return OodGuard(
        "energy",
        {"kernel": np.asarray(kernel, np.float32), "bias": np.asarray(bias, np.float32)},
    )


# ---------------------------------------------------------------- thresholds


def keep_threshold(scores: np.ndarray, keep: float = KEEP) -> float:
    """The smallest score that keeps at least `keep` of `scores` (score <= threshold is kept).

    Example:
        >>> keep_threshold(np.arange(1, 101), 0.95)
        95.0
    """
    scores = np.asarray(scores)
    if scores.size == 0 or not np.isfinite(scores).all():
        raise ValueError("need finite scores of at least one image to choose a threshold")
    return float(np.quantile(scores, keep, method=QUANTILE_METHOD))


def constrained_threshold(
    scores: np.ndarray,
    shifted: Mapping[str, np.ndarray] | None = None,
    keep: float = KEEP,
    shifted_keep: float = SHIFTED_KEEP,
) -> float:
    """The smallest threshold that keeps at least `keep` of `scores` (the validation images)
    and at least `shifted_keep` of each family of `shifted` scores (their benign shifts).

    Example:
        >>> constrained_threshold(np.arange(1, 101), {"blur": np.arange(11, 111)})
        105.0
    """
    candidates = [keep_threshold(scores, keep)]
    candidates += [keep_threshold(values, shifted_keep) for values in (shifted or {}).values()]
    return max(candidates)


def kept_share(scores: np.ndarray, threshold: float) -> float:
    """The share of images whose score is at most `threshold` (called in distribution)."""
    return float(np.mean(np.asarray(scores) <= threshold))


# ---------------------------------------------------------------- what a threshold keeps


def separation(
    threshold: float, kept_scores: np.ndarray, ood_scores: dict[str, np.ndarray]
) -> dict[str, Any]:
    """How a threshold separates in-distribution images (`kept_scores`) from each OOD family:
    the share kept, the share of each family (and of all of them) rejected, and the AUROC of
    the score, in-distribution vs all OOD images (scikit-learn's roc_auc_score).

    Example:
        >>> separation(1.0, np.array([0.5, 2.0]), {"noise": np.array([3.0])})["rejected"]
        {'noise': 1.0, 'all': 1.0}
    """
    from sklearn.metrics import roc_auc_score

    pooled = np.concatenate([np.asarray(s, np.float64) for s in ood_scores.values()])
    rejected = {name: 1.0 - kept_share(s, threshold) for name, s in ood_scores.items()}
    rejected["all"] = 1.0 - kept_share(pooled, threshold)
    truth = np.r_[np.zeros(len(kept_scores)), np.ones(len(pooled))]
    ranked = np.r_[kept_scores, pooled]
    finite = np.isfinite(ranked)
    # AUROC is a ranking: an image failing the colour check (+inf) ranks above every score
    ranked[~finite] = ranked[finite].max() + 1 if finite.any() else 0.0
    auroc = roc_auc_score(truth, ranked) if len(pooled) else None
    return {
        "threshold": float(threshold),
        "kept": kept_share(kept_scores, threshold),
        "rejected": rejected,
        "auroc": None if auroc is None else float(auroc),
    }


def refused_by_colour(
    in_distribution: np.ndarray, scores: np.ndarray, threshold: float
) -> np.ndarray:
    """Which images an engine's verdict (`OodGuard.in_distribution`) rejected although their
    score is within its threshold: the colour check refused them. Engines output the verdict
    and the score, not the check, so every client reads the reason from this one rule.

    Example:
        >>> refused_by_colour(np.array([False, False, True]), np.array([1.2, 41.7, 1.0]), 3.05)
        array([ True, False, False])
    """
    return ~np.asarray(in_distribution, bool) & (np.asarray(scores, np.float64) <= threshold)


def checked_scores(scores: np.ndarray, colourful: np.ndarray) -> np.ndarray:
    """Scores with +inf for the images failing the colour check (`OodGuard.colourful`), so a
    threshold on them keeps exactly what `OodGuard.in_distribution` keeps (and `separation`
    ranks those images as the least like the training images).

    Example:
        >>> checked_scores(np.array([0.5, 0.7]), np.array([True, False]))
        array([0.5, inf])
    """
    return np.where(np.asarray(colourful, bool), np.asarray(scores, np.float64), np.inf)


def shifted_kept(threshold: float, shifted: Mapping[str, np.ndarray]) -> dict[str, float]:
    """The share of each benign-shift family a threshold keeps.

    Example:
        >>> shifted_kept(1.0, {"blur": np.array([0.5, 2.0])})
        {'blur': 0.5}
    """
    return {family: kept_share(scores, threshold) for family, scores in shifted.items()}


def accuracy_split(
    threshold: float, scores: np.ndarray, correct: np.ndarray | None
) -> dict[str, Any] | None:
    """The model's accuracy on the images a threshold keeps and on those it rejects (None where
    there are none), and how many it rejects; None without labels.

    Example:
        >>> accuracy_split(1.0, np.array([0.5, 0.7, 2.0]), np.array([True, False, False]))
        {'kept': 0.5, 'rejected': 0.0, 'n_rejected': 1}
    """
    if correct is None:
        return None
    correct, kept = np.asarray(correct, bool), np.asarray(scores) <= threshold
    return {
        "kept": float(correct[kept].mean()) if kept.any() else None,
        "rejected": float(correct[~kept].mean()) if (~kept).any() else None,
        "n_rejected": int((~kept).sum()),
    }


def refuses_the_doubtful(accuracy: dict[str, Any] | None) -> bool:
    """Whether the rejected images are right no more often than the kept ones (True when
    there is nothing to compare: no labels or no image on one side).

    Example:
        >>> refuses_the_doubtful({"kept": 0.75, "rejected": 0.8, "n_rejected": 40})
        False
    """
    return accuracy_gap(accuracy) >= 0


def accuracy_gap(accuracy: dict[str, Any] | None) -> float:
    """How much more often the model is right on the kept images than on the refused ones (0
    when there is nothing to compare: no labels, or no image on one side).

    Example:
        >>> round(accuracy_gap({"kept": 0.7, "rejected": 0.5, "n_rejected": 30}), 3)
        0.2
    """
    if not accuracy or accuracy["kept"] is None or accuracy["rejected"] is None:
        return 0.0
    return accuracy["kept"] - accuracy["rejected"]
