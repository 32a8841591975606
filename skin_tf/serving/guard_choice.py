"""How export fits and chooses the out-of-distribution guard (`skin_tf.serving.guard`) of a run,
without looking at any test image.

1. Fit: the mean-pooled features of each stage of the backbone (`candidate_layers`) and the
   penultimate features, on a bounded sample of the run's *training* split (drawn in turn from
   each class), give one Mahalanobis guard each; given benign shifts of those training images
   (one shift each, `skin_tf.data.shifts`), a second guard per depth is fitted on both, one
   that has seen zoom, framing, blur or colour constancy as ordinary variation. Each
   Mahalanobis guard also comes with a confidence term, `CONFIDENCE_WEIGHTS` x its 95 %
   validation score x (1 - the largest class probability); the softmax head gives the energy
   guard. Every candidate also gets the colour check (`skin_tf.serving.guard.least_colourful`):
   an image less than half as saturated as the least colourful image of steps 1 and 2 is out
   of distribution.
2. Threshold: every candidate gets the smallest threshold that keeps at least 95 % of the
   run's *validation* images and at least 95 % of every benign-shift family made from them
   (`skin_tf.serving.guard_sets.benign_images`; 2 points above the 93 % a guard must keep, a
   margin for images it was not chosen on): `skin_tf.serving.guard.constrained_threshold`.
3. Choose: among the candidates whose rejected validation images (plain and shifted) the model
   gets right no more often than the kept ones (a guard that refuses, refuses the doubtful),
   those that reject about the most of a generated out-of-distribution *validation* set
   (`skin_tf.serving.guard_sets.ood_validation_images`: tiles, channel swaps, shapes, colour
   fields, stripes; within one binomial standard error of the best share, 2.6 points for 240
   images at a best share of 0.8), and of those the one whose refused images are right least
   often against the kept ones (`choose`). If no candidate passes the accuracy rule, all
   compete, and the record says so.
4. Threshold each engine: export scores the validation images and their shifts with every
   engine and gives each its own threshold by the same rule (`engine_thresholds`): int8
   features are not the float ones.

For a model with patient fields, only guards of image features compete (each stage and the
pooled backbone features, `head_pool`, before the fields join; no confidence term and no
energy, which read the fields through the probabilities): an image is in or out of distribution
whatever fields come with it. The accuracy rule then uses the probabilities given each image's
own fields.

Issue 32 is why steps 1-3 look beyond validation images: a guard chosen only to reject the
generated set, at a threshold keeping 95 % of the run's own validation split, refused one valid
dermoscopic image in five from another source (other zoom, framing, preprocessing), and refused
the model's right answers more often than its wrong ones.

None of the generated families is one of the out-of-distribution *test* families
(`tests/serving/ood_images.py`: natural photos, text, flat colours, gradients, noise, and
HAM10000 images cropped to plain skin, greyscaled or inverted), and the tiles and channel swaps
come from training images, never test ones.

Example:
    >>> constrained_threshold(np.arange(1.0, 101.0))  # no benign shifts: 95 % of validation
    95.0
"""

from __future__ import annotations

import dataclasses
import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np

from skin_tf.serving.guard import (
    COLOUR_MARGIN,
    GUARD_FILE,
    KEEP,
    QUANTILE_METHOD,
    SHIFTED_FLOOR,
    SHIFTED_KEEP,
    OodGuard,
    accuracy_gap,
    accuracy_split,
    checked_scores,
    constrained_threshold,
    energy_guard,
    fit_mahalanobis,
    keep_threshold,
    kept_share,
    least_colourful,
    mean_saturation,
    refuses_the_doubtful,
    separation,
    shifted_kept,
)
from skin_tf.serving.guard_sets import ood_validation_images

if TYPE_CHECKING:
    import keras

    from skin_tf.serving.engines import CheckImages

DEFAULT_GUARD_IMAGES = 2000  # training images the Mahalanobis guard is fitted on (bounded: speed)
# The confidence term's weight, in units of the candidate's 95 % validation Mahalanobis score.
CONFIDENCE_WEIGHTS = (0.0, 0.5, 1.0, 2.0)
_BATCH = 64


@dataclass(frozen=True)
class FittedGuard:
    """The kept guard, the record of how it was fitted and chosen (for metadata.json), the
    benign-shift validation images every engine's threshold must also keep, and every candidate
    compared (for benchmarks/bench_ood.py)."""

    guard: OodGuard
    record: dict[str, Any]
    shifted: dict[str, CheckImages] = dataclasses.field(default_factory=dict, repr=False)
    candidates: dict[str, OodGuard] = dataclasses.field(default_factory=dict, repr=False)


# ---------------------------------------------------------------- features


def candidate_layers(model: keras.Model) -> list[str]:
    """The output layer of each stage of an EfficientNet (`block1…` to `block7…`: the last layer
    of each prefix, e.g. `block4c_add`), the depths at which Mahalanobis guards are fitted
    besides the penultimate features; empty for a model without such names. For an ensemble
    (`skin_tf.models.ensemble`: layers `m0_…`, `m1_…`) the first member's stages: without them
    its guard could only read the pooled features of every member, which missed a third of the
    out-of-distribution test images (issue 32).

    Example:
        >>> candidate_layers(build_classifier("efficientnet_lite0", 96))[:2]  # doctest: +SKIP
        ['block1a_project_bn', 'block2b_add']
    """
    members = sorted(
        {int(m.group(1)) for layer in model.layers if (m := re.match(r"m(\d+)_block", layer.name))}
    )
    prefix = f"m{members[0]}_" if members else ""
    last: dict[int, str] = {}
    for layer in model.layers:
        match = re.match(rf"{prefix}block(\d+)[a-z]_", layer.name)
        if match:
            last[int(match.group(1))] = layer.name
    return [last[stage] for stage in sorted(last)]


def features_function(
    model: keras.Model, layers: list[str | None]
) -> Callable[[np.ndarray], dict[str | None, np.ndarray]]:
    """images (N, H, W, 3) at the model's size → each layer's mean-pooled output (None: the
    head's input), float32 (N, d), from one forward pass per batch; traced once, so it can be
    called on many image sets. The layers must be reached from the image alone (for a model
    with patient fields: the backbone's, up to `head_pool`)."""
    import keras
    import tensorflow as tf

    from skin_tf.serving.endpoints import image_input, input_size, pooled_output

    body = keras.Model(image_input(model), [pooled_output(model, layer) for layer in layers])
    # A list even for one layer (a one-output Keras model returns a bare tensor); the batch
    # dimension left open, so batches of any size share one trace.
    spec = tf.TensorSpec([None, *input_size(model), 3], tf.float32)
    forward = tf.function(
        lambda x: tf.nest.flatten(body(x, training=False)), input_signature=[spec]
    )

    def features(images: np.ndarray) -> dict[str | None, np.ndarray]:
        parts = [
            [np.asarray(f) for f in forward(tf.constant(images[i : i + _BATCH], tf.float32))]
            for i in range(0, len(images), _BATCH)
        ]
        return {layer: np.concatenate([p[k] for p in parts]) for k, layer in enumerate(layers)}

    return features


def pooled_features(
    model: keras.Model, images: np.ndarray, layers: list[str | None]
) -> dict[str | None, np.ndarray]:
    """`features_function(model, layers)` applied to one set of images."""
    return features_function(model, layers)(images)


# ---------------------------------------------------------------- fitting and choosing


def fit_run_guard(
    model: keras.Model,
    train: CheckImages,
    val: CheckImages,
    shifted: Mapping[str, CheckImages] | None = None,
    shifted_train: CheckImages | None = None,
    temperature: float | None = None,
    seed: int = 0,
) -> FittedGuard:
    """Fit every candidate guard on `train` (and `shifted_train`, benign shifts of those
    images), threshold each on `val` and its benign-shift families `shifted`, compare them
    against the generated OOD validation set, and keep the best (see the module docstring).

    `temperature`: the run's, so the confidence term sees the probabilities the engines output.
    Without `shifted` the thresholds keep 95 % of `val` alone; without `shifted_train` only the
    guards fitted on `train` compete.
    """
    from scipy.special import softmax

    from skin_tf.serving.endpoints import fields_width, softmax_head

    if train.labels is None or val.labels is None:
        raise ValueError("the guard is fitted on labelled training images and checked on labelled "
                         "validation images")  # fmt: skip
    shifted = dict(shifted or {})
    with_fields = fields_width(model) > 0  # then image features only (module docstring)
    layers: list[str | None] = [*candidate_layers(model), "head_pool" if with_fields else None]
    weights = (0.0,) if with_fields else CONFIDENCE_WEIGHTS
    head = softmax_head(model)
    kernel, bias = head.kernel.numpy(), head.bias.numpy()
    features_of = features_function(model, layers)

    def probabilities(features: dict[str | None, np.ndarray]) -> np.ndarray:
        return softmax((features[None] @ kernel + bias) / (temperature or 1.0), axis=1)

    train_features = features_of(train.images)
    fits = {"": (train_features, train.labels)}
    if shifted_train is not None:
        extra = features_of(shifted_train.images)
        both = {layer: np.concatenate([train_features[layer], extra[layer]]) for layer in layers}
        fits["+shifts"] = (both, np.concatenate([train.labels, shifted_train.labels]))
    # The sets a candidate is judged on: validation, its shifts, the generated OOD images.
    sets = {"val": val.images, **{f"shifted/{f}": s.images for f, s in shifted.items()}}
    ood = ood_validation_images(train.images, seed=seed)
    sets.update({f"ood/{family}": images for family, images in ood.items()})
    features = {name: features_of(images) for name, images in sets.items()}
    fitted_on = [train, val, *shifted.values(), *([shifted_train] if shifted_train else [])]
    least = least_colourful(*(check.images for check in fitted_on))
    floor = COLOUR_MARGIN * least
    colourful = {name: mean_saturation(images) >= floor for name, images in sets.items()}
    if with_fields:  # the probabilities given each image's fields: the accuracy rule's
        given = {"val": val, **{f"shifted/{f}": s for f, s in shifted.items()}}
        probabilities_of = _probabilities_given(model, temperature)
        probs = {name: probabilities_of(images) for name, images in given.items()}
    else:
        probs = {name: probabilities(f) for name, f in features.items()}
    labelled = ["val", *(f"shifted/{f}" for f in shifted)]
    labels = np.concatenate([val.labels, *(s.labels for s in shifted.values())])
    correct = np.concatenate([probs[n].argmax(axis=1) for n in labelled]) == labels

    # Scores of every set by every candidate: each Mahalanobis fit scores once, its confidence
    # variants add w x (1 - max probability) to that (what OodGuard.score computes).
    doubt = {name: 1.0 - p.max(axis=1) for name, p in probs.items()}
    candidates: dict[str, OodGuard] = {}
    scored: dict[str, dict[str, np.ndarray]] = {}
    for suffix, (fit_features, fit_labels) in fits.items():
        for layer in layers:
            base = fit_mahalanobis(fit_features[layer], fit_labels, layer)
            plain = {name: base.score(f[layer]) for name, f in features.items()}
            scale = keep_threshold(plain["val"])
            for weight in weights:
                name = candidate_name(layer, suffix, weight)
                candidates[name] = dataclasses.replace(
                    base, confidence_weight=weight * scale, colour_floor=floor
                )
                scored[name] = {s: plain[s] + (weight * scale * doubt[s] if weight else 0.0)
                                for s in sets}  # fmt: skip
    if not with_fields:
        candidates["energy"] = dataclasses.replace(energy_guard(kernel, bias), colour_floor=floor)
        scored["energy"] = {s: candidates["energy"].score(features[s][None]) for s in sets}
    # The colour check is every candidate's: +inf where it refuses (none of `fitted_on`).
    scored = {n: {s: checked_scores(v, colourful[s]) for s, v in by_set.items()}
              for n, by_set in scored.items()}  # fmt: skip

    comparison = {}
    for name, scores in scored.items():
        benign = {f: scores[f"shifted/{f}"] for f in shifted}
        threshold = constrained_threshold(scores["val"], benign)
        figures = separation(threshold, scores["val"], {f: scores[f"ood/{f}"] for f in ood})
        figures["shifted_kept"] = shifted_kept(threshold, benign)
        pooled = np.concatenate([scores[n] for n in labelled])
        figures["accuracy"] = accuracy_split(threshold, pooled, correct)
        comparison[name] = figures
    chosen, rule_applied = choose(comparison, sum(len(images) for images in ood.values()))
    record = _record(train, val, shifted, shifted_train, ood, candidates, comparison, with_fields)
    record["colour_check"] = {
        "statistic": "mean HSV saturation, (max - min) / max of each pixel's channels, of the "
        "image at the model's size (skin_tf.serving.guard.mean_saturation)",
        "floor": floor,
        "least_colourful_fitted": least,
        "margin": COLOUR_MARGIN,
        "rule": f"out of distribution whatever its score if below the floor: {COLOUR_MARGIN:g} x "
        f"the least colourful of the {sum(len(c.images) for c in fitted_on)} images the guard "
        "was fitted and thresholded on (training images and their shifts, validation images and "
        "their benign-shift families), so it keeps all of them with a margin for the ones it was "
        "not fitted on",
        "generated_rejected": {f: float(np.mean(~colourful[f"ood/{f}"])) for f in ood},
    }
    record["comparison"]["chosen"] = chosen
    record["comparison"]["accuracy_rule_applied"] = rule_applied
    return FittedGuard(candidates[chosen], record, shifted, candidates)


def _probabilities_given(
    model: keras.Model, temperature: float | None
) -> Callable[[CheckImages], np.ndarray]:
    """The model's (N, 7) probabilities of images at its size given their patient fields
    (traced once, for every set)."""
    from skin_tf.serving.endpoints import probabilities_function

    probabilities = probabilities_function(model, temperature)

    def of(check: CheckImages) -> np.ndarray:
        parts = [
            probabilities(*(x.astype(np.float32) for x in check.inputs(i, i + _BATCH))).numpy()
            for i in range(0, len(check.images), _BATCH)
        ]
        return np.concatenate(parts)

    return of


def candidate_name(layer: str | None, fit: str = "", weight: float = 0.0) -> str:
    """How metadata.json names a Mahalanobis candidate: its depth, `+shifts` when fitted on the
    benign shifts of the training images too, `+confidence<w>` with a confidence term.

    Example:
        >>> candidate_name("block4c_add", "+shifts", 0.5)
        'mahalanobis+shifts:block4c_add+confidence0.5'
    """
    name = f"mahalanobis{fit}:{layer or 'penultimate'}"
    return f"{name}+confidence{weight:g}" if weight else name


def choose(comparison: Mapping[str, Mapping[str, Any]], n_generated: int) -> tuple[str, bool]:
    """(the chosen candidate, whether the accuracy rule applied): among the candidates that
    refuse the doubtful (`refuses_the_doubtful`), or all when none does, those rejecting a share
    of the `n_generated` generated images within one standard error of the best share (a
    difference that size is the sample's, not the guard's: the one-standard-error rule), and of
    those the one whose refused validation images are right least often against the kept ones
    (`accuracy_gap`; ties: the larger share rejected, then the higher AUROC).

    Example:
        >>> def facts(rejected, kept_right, refused_right):
        ...     accuracy = {"kept": kept_right, "rejected": refused_right, "n_rejected": 9}
        ...     return {"rejected": {"all": rejected}, "auroc": 0.9, "accuracy": accuracy}
        >>> choose({"a": facts(0.80, 0.7, 0.6), "b": facts(0.78, 0.7, 0.4),
        ...         "c": facts(0.60, 0.7, 0.1), "d": facts(0.99, 0.7, 0.9)}, n_generated=240)
        ('b', True)
    """
    doubtful = [n for n, f in comparison.items() if refuses_the_doubtful(f.get("accuracy"))]
    pool = doubtful or list(comparison)
    best = max(comparison[n]["rejected"]["all"] for n in pool)
    near = best - math.sqrt(best * (1 - best) / n_generated)
    tied = [n for n in pool if comparison[n]["rejected"]["all"] >= near]
    chosen = max(
        tied,
        key=lambda n: (
            accuracy_gap(comparison[n].get("accuracy")),
            comparison[n]["rejected"]["all"],
            comparison[n]["auroc"] or 0,
        ),
    )
    return chosen, bool(doubtful)


def _record(
    train: CheckImages,
    val: CheckImages,
    shifted: Mapping[str, CheckImages],
    shifted_train: CheckImages | None,
    ood: Mapping[str, np.ndarray],
    candidates: Mapping[str, OodGuard],
    comparison: dict[str, Any],
    with_fields: bool = False,
) -> dict[str, Any]:
    from skin_tf.data.shifts import DESCRIPTIONS

    weights = (
        "none: the model takes patient fields, so only guards of image features compete (the "
        "stages and head_pool, before the fields join): the fields never decide whether an "
        "image is in distribution"
        if with_fields
        else f"{', '.join(f'{w:g}' for w in CONFIDENCE_WEIGHTS)} x the candidate's 95 % "
        "validation Mahalanobis score, times (1 - max probability)"
    )

    n_ood = sum(len(images) for images in ood.values())
    on_shifted = next(iter(shifted.values())).source.rsplit(",", 1)[0] if shifted else None
    keep_rule = f"the smallest threshold keeping at least {KEEP:.0%} of the validation images"
    if shifted:
        keep_rule += (
            f" and at least {SHIFTED_KEEP:.0%} of every benign-shift family made from them (the "
            f"guard must keep {SHIFTED_FLOOR:.0%}; 2 points of margin for other images)"
        )
    return {
        "fitted_on": f"{train.source}, drawn in turn from each class"
        + (f"; '+shifts' candidates also on {shifted_train.source}" if shifted_train else ""),
        "chosen_from": list(candidates),
        "benign_shifts": {
            "on": on_shifted,
            "families": {f: DESCRIPTIONS.get(f, f) for f in shifted},
        }
        if shifted
        else None,
        "comparison": {
            "on": f"{val.source}"
            + (f" and its {len(shifted)} benign-shift families" if shifted else "")
            + f", against {n_ood} generated out-of-distribution validation images ({len(ood)} "
            f"families of {n_ood // len(ood)}: {', '.join(ood)}; "
            "skin_tf.serving.guard_sets.ood_validation_images)",
            "rule": f"each candidate at {keep_rule}; among those whose rejected validation "
            "images (plain and shifted) the model gets right no more often than the kept ones "
            "(all, if none), those rejecting a share of the generated images within one "
            "standard error (binomial) of the best share; of those, kept: the one whose refused "
            "validation images the model gets right least often against the kept ones (ties: "
            "the larger share rejected, then the higher AUROC, validation vs generated)",
            "confidence_weights": weights,
            "candidates": comparison,
        },
    }


# ---------------------------------------------------------------- per-engine thresholds


def engine_thresholds(
    scores: dict[str, np.ndarray],
    source: str,
    shifted: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    correct: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """Each engine's threshold on its own scores: the smallest keeping at least 95 % of its
    validation scores (`scores`: engine → scores) and, given `shifted` (engine → family →
    scores), at least 95 % of every benign-shift family. `correct` (engine → whether it got
    each image right, validation then each family in order) adds its accuracy on the kept and
    the rejected images.

    Example:
        >>> engine_thresholds({"tflite": np.arange(1.0, 101.0)}, "val")["tflite"]["threshold"]
        95.0
    """
    shifted = shifted or {}
    rule = f"the smallest threshold keeping at least {KEEP:.0%} of its own scores on {source}"
    if any(shifted.values()):
        rule += f" and at least {SHIFTED_KEEP:.0%} of its scores on each benign-shift family"
    block: dict[str, Any] = {
        "rule": f"in_distribution when ood_score <= this engine's threshold: {rule} (numpy "
        f"quantile method '{QUANTILE_METHOD}')",
        "keep": KEEP,
    }
    if any(shifted.values()):
        block["shifted_keep"] = SHIFTED_KEEP
    for engine, values in scores.items():
        families = shifted.get(engine, {})
        threshold = constrained_threshold(values, families)
        block[engine] = {
            "threshold": threshold,
            "val_kept": kept_share(values, threshold),
            "n_images": int(len(values)),
        }
        if families:
            block[engine]["shifted_kept"] = shifted_kept(threshold, families)
        if correct is not None and engine in correct:
            pooled = np.concatenate([values, *families.values()])
            block[engine]["accuracy"] = accuracy_split(threshold, pooled, correct[engine])
    return block


class EngineScores:
    """Each engine's guard scores on the check images and their benign shifts, and whether the
    engine got each image right: what export chooses its threshold on (`engine_thresholds`).

    Example:
        >>> from skin_tf.serving.engines import CheckImages
        >>> check = CheckImages(np.zeros((100, 8, 8, 3), np.uint8), np.zeros(100, int), "val")
        >>> collected = EngineScores(check, {})
        >>> probs = np.tile([1.0, 0, 0, 0, 0, 0, 0], (100, 1))
        >>> collected.add("tflite", (probs, np.arange(1.0, 101.0)), None)
        >>> collected.threshold("tflite"), bool(collected.correct["tflite"].all())
        (95.0, True)
    """

    def __init__(self, check: CheckImages | None, shifted: Mapping[str, CheckImages]):
        self.check, self.shifted_images = check, dict(shifted)
        self.val: dict[str, np.ndarray] = {}
        self.shifted: dict[str, dict[str, np.ndarray]] = {}
        self.correct: dict[str, np.ndarray] = {}

    def add(
        self,
        engine: str,
        on_check: tuple[np.ndarray, np.ndarray],
        outputs: Callable[[np.ndarray], tuple[np.ndarray, np.ndarray]] | None,
    ) -> None:
        """`on_check`: the engine's (probs, scores) on the check images; `outputs`: the same of
        any images at the model's size (and their fields, for a model with patient fields), run
        here on every benign-shift family (None: none)."""
        families = self.shifted_images if outputs is not None else {}
        on_shifted = {family: outputs(*s.inputs()) for family, s in families.items()}
        self.val[engine] = on_check[1]
        self.shifted[engine] = {family: scores for family, (_, scores) in on_shifted.items()}
        if self.check is not None and self.check.labels is not None:
            labels = [self.check.labels, *(self.shifted_images[f].labels for f in on_shifted)]
            probs = [on_check[0], *(p for p, _ in on_shifted.values())]
            self.correct[engine] = np.concatenate(
                [p.argmax(axis=1) == y for p, y in zip(probs, labels, strict=True)]
            )

    def threshold(self, engine: str) -> float:
        """The engine's threshold by `engine_thresholds`' rule."""
        return constrained_threshold(self.val[engine], self.shifted[engine])


def metadata_block(
    guard: OodGuard,
    fitted: FittedGuard | None,
    source: str,
    scores: dict[str, np.ndarray],
    shifted: Mapping[str, Mapping[str, np.ndarray]] | None = None,
    correct: Mapping[str, np.ndarray] | None = None,
) -> dict[str, Any]:
    """The `ood_guard` block of metadata.json: what the score is, how it was fitted and chosen,
    and each engine's threshold on its `scores` of the check images (`source`) and, given, of
    their benign shifts (`engine_thresholds`)."""
    return {
        "method": guard.method,
        "layer": guard.layer or "penultimate (the head's input)",
        "score": guard.note,
        "confidence_weight": guard.confidence_weight,
        "outputs": "ood_score per image (higher: less like the training images) and "
        "in_distribution (ood_score <= the engine's threshold below"
        + (", and the image's mean saturation >= colour_floor)" if guard.colour_floor else ")"),
        "file": GUARD_FILE,
        "feature_dim": guard.dim,
        "colour_floor": guard.colour_floor,
        **(fitted.record if fitted is not None else {"fitted_on": "a guard given to export"}),
        "thresholds": engine_thresholds(scores, source, shifted, correct),
        "note": "a screen for images unlike the training images (photos of other things, "
        "documents, other kinds of skin pictures); accepting an image does not make the "
        "prediction right",
    }
