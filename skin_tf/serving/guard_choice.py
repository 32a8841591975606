"""How export fits and chooses the out-of-distribution guard (`skin_tf.serving.guard`) of a run,
without looking at any test image.

1. Fit: the mean-pooled features of each stage of the backbone (`candidate_layers`) and the
   penultimate features, on a bounded sample of the run's *training* split (drawn in turn from
   each class), give one Mahalanobis guard each; the softmax head gives the energy guard.
2. Compare: all score the run's *validation* images and a generated out-of-distribution
   *validation* set (`ood_validation_images`: training images cut into shuffled tiles or with
   their colour channels swapped, random shapes, smooth colour fields, stripes and checks). Each
   candidate gets the threshold that keeps 95 % of validation images; the one that rejects the
   most of the generated set there is kept (ties: the higher AUROC, validation vs generated).
   This is Lee et al.'s layer-wise Mahalanobis score with the layer chosen on validation data;
   on the demo model the penultimate features separate nothing (AUROC about 0.5) while the
   middle of the backbone separates well (`benchmarks/bench_ood.py`).
3. Threshold: export then scores the validation images with every engine and gives each its own
   threshold the same way (`engine_thresholds`): int8 features are not the float ones.

None of the generated families is one of the out-of-distribution *test* families
(`tests/serving/ood_images.py`: natural photos, text, flat colours, gradients, noise, and
HAM10000 images cropped to plain skin, greyscaled or inverted), and the tiles and channel swaps
come from training images, never test ones.

Example:
    >>> images = np.zeros((4, 32, 32, 3), np.uint8)
    >>> {k: v.shape for k, v in ood_validation_images(images, per_family=2).items()}["shapes"]
    (2, 32, 32, 3)
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
from PIL import Image, ImageDraw

from skin_tf.serving.guard import (
    GUARD_FILE,
    KEEP,
    QUANTILE_METHOD,
    SCORE_NOTES,
    OodGuard,
    energy_guard,
    fit_mahalanobis,
    keep_threshold,
    kept_share,
)

if TYPE_CHECKING:
    import keras

    from skin_tf.serving.engines import CheckImages

DEFAULT_GUARD_IMAGES = 2000  # training images the Mahalanobis guard is fitted on (bounded: speed)
OOD_PER_FAMILY = 48
OOD_FAMILIES = ("tiles", "channel_swap", "shapes", "colour_fields", "stripes")
_BATCH = 64


@dataclass(frozen=True)
class FittedGuard:
    """The kept guard and the record of how it was fitted and chosen (for metadata.json)."""

    guard: OodGuard
    record: dict[str, Any]


# ---------------------------------------------------------------- the generated OOD validation set


def ood_validation_images(
    train_images: np.ndarray, per_family: int = OOD_PER_FAMILY, seed: int = 0
) -> dict[str, np.ndarray]:
    """Out-of-distribution validation images (uint8, the size of `train_images`), per family.

    tiles: a training image cut into a 4x4 grid of tiles put back in random order (its colours
    and texture without its structure); channel_swap: a training image with its colour channels
    rotated (blue or green skin); shapes: random ellipses, rectangles and lines on a random
    background; colour_fields: a 3x3 grid of random colours smoothly interpolated; stripes:
    stripes or checks of two random colours at a random period and angle. Deterministic.
    """
    rng = np.random.default_rng(seed)
    train = np.asarray(train_images, np.uint8)
    side = train.shape[1]
    picks = rng.choice(len(train), size=per_family, replace=len(train) < per_family)
    families = {
        "tiles": np.stack([_tiles(train[i], rng) for i in picks]),
        "channel_swap": np.stack([np.roll(train[i], int(rng.integers(1, 3)), axis=-1)
                                  for i in picks]),
        "shapes": np.stack([_shapes(side, rng) for _ in range(per_family)]),
        "colour_fields": np.stack([_colour_field(side, rng) for _ in range(per_family)]),
        "stripes": np.stack([_stripes(side, rng) for _ in range(per_family)]),
    }  # fmt: skip
    return {name: families[name] for name in OOD_FAMILIES}


def _tiles(image: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    side = image.shape[0] // grid * grid
    cells = [
        image[r : r + side // grid, c : c + side // grid]
        for r in range(0, side, side // grid)
        for c in range(0, side, side // grid)
    ]
    order = rng.permutation(len(cells))
    rows = [np.concatenate([cells[j] for j in order[k : k + grid]], axis=1)
            for k in range(0, len(cells), grid)]  # fmt: skip
    out = image.copy()
    out[:side, :side] = np.concatenate(rows, axis=0)
    return out


def _shapes(side: int, rng: np.random.Generator) -> np.ndarray:
    picture = Image.new("RGB", (side, side), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        box = np.sort(rng.integers(0, side, (2, 2)), axis=0).T.ravel().tolist()
        box = [box[0], box[2], box[1] + 1, box[3] + 1]  # x0, y0, x1, y1
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            draw.line(box, fill=colour, width=int(rng.integers(1, max(2, side // 12))))
    return np.asarray(picture)


def _colour_field(side: int, rng: np.random.Generator) -> np.ndarray:
    grid = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
    return np.asarray(grid.resize((side, side), Image.Resampling.BICUBIC))


def _stripes(side: int, rng: np.random.Generator) -> np.ndarray:
    yy, xx = np.mgrid[0:side, 0:side].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, side / 2)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period
    on = (np.floor(u) % 2 == 0) if rng.random() < 0.5 else ((np.floor(u) + np.floor(v)) % 2 == 0)
    a, b = rng.integers(0, 256, (2, 3))
    return np.where(on[..., None], a, b).astype(np.uint8)


# ---------------------------------------------------------------- fitting and choosing


def candidate_layers(model: keras.Model) -> list[str]:
    """The output layer of each stage of an EfficientNet (`block1…` to `block7…`: the last layer
    of each prefix, e.g. `block4c_add`), the depths at which Mahalanobis guards are fitted
    besides the penultimate features; empty for a model without such names.

    Example:
        >>> candidate_layers(build_classifier("efficientnet_lite0", 96))[:2]  # doctest: +SKIP
        ['block1a_project_bn', 'block2b_add']
    """
    last: dict[int, str] = {}
    for layer in model.layers:
        match = re.match(r"block(\d+)[a-z]_", layer.name)
        if match:
            last[int(match.group(1))] = layer.name
    return [last[stage] for stage in sorted(last)]


def features_function(
    model: keras.Model, layers: list[str | None]
) -> Callable[[np.ndarray], dict[str | None, np.ndarray]]:
    """images (N, S, S, 3) at the model's size → each layer's mean-pooled output (None: the
    head's input), float32 (N, d), from one forward pass per batch; traced once, so it can be
    called on many image sets."""
    import keras
    import tensorflow as tf

    from skin_tf.serving.endpoints import pooled_output

    body = keras.Model(model.inputs[0], [pooled_output(model, layer) for layer in layers])
    # A list even for one layer (a one-output Keras model returns a bare tensor); the batch
    # dimension left open, so batches of any size share one trace.
    side = int(model.input_shape[1])
    spec = tf.TensorSpec([None, side, side, 3], tf.float32)
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
    auroc = roc_auc_score(truth, np.r_[kept_scores, pooled]) if len(pooled) else None
    return {
        "threshold": float(threshold),
        "kept": kept_share(kept_scores, threshold),
        "rejected": rejected,
        "auroc": None if auroc is None else float(auroc),
    }


def fit_run_guard(
    model: keras.Model, train: CheckImages, val: CheckImages, seed: int = 0
) -> FittedGuard:
    """Fit every candidate guard on `train`, compare them on `val` against the generated OOD
    validation set, and keep the best (see the module docstring).

    Candidates: Mahalanobis on the mean-pooled output of each stage (`candidate_layers`) and on
    the penultimate features, and the energy score.
    """
    from skin_tf.serving.endpoints import softmax_head

    if train.labels is None or val.labels is None:
        raise ValueError("the guard is fitted on labelled training images and checked on labelled "
                         "validation images")  # fmt: skip
    layers: list[str | None] = [*candidate_layers(model), None]
    head = softmax_head(model)
    features_of = features_function(model, layers)
    train_features = features_of(train.images)
    candidates = {
        _name("mahalanobis", layer): fit_mahalanobis(train_features[layer], train.labels, layer)
        for layer in layers
    }
    candidates["energy"] = energy_guard(head.kernel.numpy(), head.bias.numpy())
    val_features = features_of(val.images)
    ood = ood_validation_images(train.images, seed=seed)
    ood_features = {name: features_of(images) for name, images in ood.items()}
    comparison = {}
    for name, guard in candidates.items():
        val_scores = guard.score(val_features[guard.layer])
        ood_scores = {family: guard.score(f[guard.layer]) for family, f in ood_features.items()}
        comparison[name] = separation(keep_threshold(val_scores), val_scores, ood_scores)
    chosen = max(
        comparison, key=lambda m: (comparison[m]["rejected"]["all"], comparison[m]["auroc"] or 0.0)
    )
    n_ood = sum(len(images) for images in ood.values())
    record = {
        "fitted_on": f"{train.source}, drawn in turn from each class",
        "chosen_from": list(candidates),
        "comparison": {
            "on": f"{val.source} against {n_ood} generated out-of-distribution validation "
            f"images ({len(ood)} families of {n_ood // len(ood)}: {', '.join(ood)}; "
            "skin_tf.serving.guard_choice.ood_validation_images)",
            "rule": f"each candidate at the threshold keeping {KEEP:.0%} of validation images; "
            "kept: the one rejecting the largest share of the generated images (ties: the "
            "higher AUROC, validation vs generated)",
            "chosen": chosen,
            "candidates": comparison,
        },
    }
    return FittedGuard(candidates[chosen], record)


def _name(method: str, layer: str | None) -> str:
    return f"{method}:{layer or 'penultimate'}"


def engine_thresholds(scores: dict[str, np.ndarray], source: str) -> dict[str, Any]:
    """Each engine's threshold on its own validation scores, keeping at least 95 % of them.

    Example:
        >>> engine_thresholds({"tflite": np.arange(1.0, 101.0)}, "val")["tflite"]["threshold"]
        95.0
    """
    block: dict[str, Any] = {
        "rule": f"in_distribution when ood_score <= this engine's threshold: the {KEEP:.0%} "
        f"quantile (numpy method '{QUANTILE_METHOD}') of its own scores on {source}",
        "keep": KEEP,
    }
    for engine, values in scores.items():
        threshold = keep_threshold(values)
        block[engine] = {
            "threshold": threshold,
            "val_kept": kept_share(values, threshold),
            "n_images": int(len(values)),
        }
    return block


def metadata_block(
    guard: OodGuard,
    fitted: FittedGuard | None,
    source: str,
    scores: dict[str, np.ndarray],
) -> dict[str, Any]:
    """The `ood_guard` block of metadata.json: what the score is, how it was fitted and chosen,
    and each engine's threshold on its `scores` of the check images (`source`)."""
    return {
        "method": guard.method,
        "layer": guard.layer or "penultimate (the head's input)",
        "score": SCORE_NOTES[guard.method],
        "outputs": "ood_score per image (higher: less like the training images) and "
        "in_distribution (ood_score <= the engine's threshold below)",
        "file": GUARD_FILE,
        "feature_dim": guard.dim,
        **(fitted.record if fitted is not None else {"fitted_on": "a guard given to export"}),
        "thresholds": engine_thresholds(scores, source),
        "note": "a screen for images unlike the training images (photos of other things, "
        "documents, other kinds of skin pictures); accepting an image does not make the "
        "prediction right",
    }
