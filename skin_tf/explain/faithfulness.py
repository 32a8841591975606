"""Is a heatmap faithful to the model? Deletion and insertion curves (Petsiuk et al. 2018, RISE),
and the maps every method must beat: a centred Gaussian and a random map.

Pixels are taken in the order of a map's importance (most important first). *Deletion* replaces
the first fraction of them with the removal image and follows the probability of the explained
class: a faithful map makes it fall fast (a low area under the curve). *Insertion* starts from
the removal image and puts the image's own pixels back in the same order: a faithful map makes
it rise fast (a high area). The curve has `steps` + 1 points at fractions 0, 1/steps, …, 1, and
its area is the trapezoid rule over the fraction.

The removal image is the image's mean colour by default (`fill="mean"`): black, Petsiuk's
deletion, looks like pigment in a dermatoscopic image (it adds lesion, it does not remove it),
and a blurred copy (their insertion start, `fill="blur"`) keeps the lesion's colour and outline,
from which the model can still tell the class, so deletion would only measure texture. A flat
mean colour takes away everything but the image's average; its sharp edges are the price.

Every image's perturbed copies (all maps, all steps, both curves) are one batch for the model:
the masks come from each map's pixel ranks by broadcasting, with no loop over pixels.

Example:
    >>> maps = {"centre": centred_gaussian((96, 128))[None].repeat(2, 0)}  # doctest: +SKIP
    >>> curves = deletion_insertion(model, images, maps, classes=[4, 5])  # doctest: +SKIP
    >>> curves["centre"].deletion_auc  # doctest: +SKIP
    array([0.21, 0.35])
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np

FILLS = ("mean", "blur")
CENTRE = "centre"  # the centred Gaussian's name in reports
RANDOM = "random"  # the random map's
BASELINES = (CENTRE, RANDOM)
_BLUR_SIGMA = 0.1  # of the shorter side: coarse enough to wipe out dermoscopic structures


@dataclass(frozen=True)
class Curves:
    """One map family's curves on N images: probabilities (N, steps + 1) at `fractions`."""

    fractions: np.ndarray
    deletion: np.ndarray
    insertion: np.ndarray

    @property
    def deletion_auc(self) -> np.ndarray:
        """(N,) area under each deletion curve (lower: more faithful)."""
        return curve_auc(self.deletion, self.fractions)

    @property
    def insertion_auc(self) -> np.ndarray:
        """(N,) area under each insertion curve (higher: more faithful)."""
        return curve_auc(self.insertion, self.fractions)


# ---------------------------------------------------------------- maps to beat


def centred_gaussian(hw: tuple[int, int], sigma: float = 0.25) -> np.ndarray:
    """A Gaussian blob (h, w) in 0..1 at the image's centre, `sigma` a fraction of each side:
    the "the lesion is in the middle" prior. Its pixel order depends only on the distance from
    the centre in side-relative units, so `sigma` changes the picture, not the curves.

    Example:
        >>> blob = centred_gaussian((3, 4)); blob.shape, round(float(blob.max()), 2)
        ((3, 4), 0.88)
    """
    height, width = hw
    ys = (np.arange(height) + 0.5) / height - 0.5
    xs = (np.arange(width) + 0.5) / width - 0.5
    squared = ys[:, None] ** 2 + xs[None, :] ** 2
    return np.exp(-squared / (2 * sigma**2)).astype(np.float32)


def random_maps(n: int, hw: tuple[int, int], grid: tuple[int, int], seed: int = 0) -> np.ndarray:
    """n random maps (n, h, w) in 0..1: uniform noise on a `grid` (the CAMs' own grid, so the
    map is as smooth as theirs), resized bilinearly to (h, w) as the CAMs are.

    Example:
        >>> random_maps(2, (6, 8), (3, 4)).shape
        (2, 6, 8)
    """
    import tensorflow as tf

    noise = np.random.default_rng(seed).uniform(size=(n, *grid, 1)).astype(np.float32)
    maps = tf.image.resize(noise, hw).numpy()[..., 0]
    low = maps.min(axis=(1, 2), keepdims=True)
    return (maps - low) / (maps.max(axis=(1, 2), keepdims=True) - low + 1e-7)


# ---------------------------------------------------------------- pixel orders and images


def pixel_ranks(maps: np.ndarray, seed: int = 0) -> np.ndarray:
    """(N, h·w) rank of every pixel, 0 for the most important; ties (e.g. the zeros a ReLU
    leaves) in a seeded random order rather than raster order, which would remove the top rows
    first.

    Example:
        >>> pixel_ranks(np.array([[[0.2, 0.9], [0.5, 0.0]]])).tolist()
        [[2, 0, 1, 3]]
    """
    flat = np.asarray(maps, np.float64).reshape(len(maps), -1)
    jitter = np.random.default_rng(seed).uniform(size=flat.shape)
    order = np.lexsort((jitter, -flat), axis=-1)  # by importance, then by the jitter
    ranks = np.empty_like(order)
    np.put_along_axis(ranks, order, np.arange(flat.shape[1])[None], axis=1)
    return ranks


def removal_images(images: np.ndarray, fill: str = "mean") -> np.ndarray:
    """What a removed pixel becomes, per image (N, h, w, 3): the image's mean colour, or a
    Gaussian blur of it (sigma 0.1 of the shorter side).

    Example:
        >>> removal_images(np.arange(12, dtype="f4").reshape(1, 2, 2, 3))[0, 0, 0].tolist()
        [4.5, 5.5, 6.5]
    """
    images = np.asarray(images, np.float32)
    if fill == "mean":
        return np.broadcast_to(images.mean(axis=(1, 2), keepdims=True), images.shape).copy()
    if fill == "blur":
        from scipy.ndimage import gaussian_filter

        sigma = _BLUR_SIGMA * min(images.shape[1:3])
        return gaussian_filter(images, sigma=(0, sigma, sigma, 0), mode="reflect")
    raise ValueError(f"unknown fill {fill!r}: choose one of {', '.join(FILLS)}")


def perturbed(
    image: np.ndarray, removal: np.ndarray, ranks: np.ndarray, counts: Sequence[int]
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion copies of one image, (M, K, h, w, 3) each, for M pixel rankings
    (M, h·w) and K counts of removed pixels: deletion has the `count` most important pixels
    replaced by `removal`, insertion has only those pixels of the image on `removal`.

    Example:
        >>> image = np.ones((1, 2, 1), "f4"); gone = np.zeros_like(image)
        >>> d, i = perturbed(image, gone, np.array([[1, 0]]), [1])
        >>> d[0, 0, 0, :, 0].tolist(), i[0, 0, 0, :, 0].tolist()
        ([1.0, 0.0], [0.0, 1.0])
    """
    h, w = image.shape[:2]
    removed = ranks[:, None, :] < np.asarray(counts)[None, :, None]  # (M, K, h·w)
    removed = removed.reshape(*removed.shape[:2], h, w, 1)
    return np.where(removed, removal, image), np.where(removed, image, removal)


# ---------------------------------------------------------------- the curves


def deletion_insertion(
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    images: np.ndarray,
    maps: Mapping[str, np.ndarray],
    classes: Sequence[int],
    steps: int = 16,
    fill: str = "mean",
    seed: int = 0,
    batch_size: int = 256,
    fields: np.ndarray | None = None,
) -> dict[str, Curves]:
    """Deletion and insertion curves of each family of maps (name → (N, h, w)) on images
    (N, h, w, 3), following the probability of `classes` (one per image).

    `predict` maps a float32 batch (and its encoded patient fields, None for an image-only
    model) to probabilities (`probability_function(model)`). Each image's perturbed copies
    under every map are predicted together, with the image's own `fields` row held: only pixels
    are removed. The unperturbed image and the removal image, the curves' shared ends, once per
    image.

    Example:
        >>> predict = probability_function(model)  # doctest: +SKIP
        >>> curves = deletion_insertion(predict, x, {"gradcam": maps}, [4, 5])  # doctest: +SKIP
    """
    if steps < 2:
        raise ValueError(f"steps must be at least 2, got {steps}")
    images = np.asarray(images, np.float32)
    classes = np.asarray(classes, int)
    n, h, w = images.shape[:3]
    for name, family in maps.items():
        if np.shape(family) != (n, h, w):
            raise ValueError(f"maps {name!r} have shape {np.shape(family)}, expected {(n, h, w)}")
    if len(classes) != n:
        raise ValueError(f"{len(classes)} classes for {n} images: give one per image")
    if fields is not None and len(fields) != n:
        raise ValueError(f"{len(fields)} rows of fields for {n} images: give one per image")
    fractions = np.linspace(0.0, 1.0, steps + 1)
    counts = np.round(fractions[1:-1] * h * w).astype(int)
    removal = removal_images(images, fill)
    names = list(maps)
    ranks = {name: pixel_ranks(maps[name], seed) for name in names}
    rows = np.arange(n)
    both = None if fields is None else np.concatenate([fields, fields])
    ends = predict_in_batches(predict, np.concatenate([images, removal]), both, batch_size)
    whole, empty = ends[rows, classes], ends[n + rows, classes]
    inner = steps - 1
    deletion = {name: np.empty((n, steps + 1)) for name in names}
    insertion = {name: np.empty((n, steps + 1)) for name in names}
    for i in range(n):
        stacked = np.stack([ranks[name][i] for name in names])  # (M, h·w)
        gone, back = perturbed(images[i], removal[i], stacked, counts)
        batch = np.concatenate([gone.reshape(-1, h, w, 3), back.reshape(-1, h, w, 3)])
        held = None if fields is None else np.repeat(fields[i : i + 1], len(batch), 0)
        p = predict_in_batches(predict, batch, held, batch_size)[:, classes[i]]
        p_gone, p_back = p[: len(names) * inner], p[len(names) * inner :]
        for m, name in enumerate(names):
            deletion[name][i] = [whole[i], *p_gone[m * inner : (m + 1) * inner], empty[i]]
            insertion[name][i] = [empty[i], *p_back[m * inner : (m + 1) * inner], whole[i]]
    return {name: Curves(fractions, deletion[name], insertion[name]) for name in names}


def curve_auc(curves: np.ndarray, fractions: np.ndarray) -> np.ndarray:
    """Area under each curve (N, K+1) over `fractions`, by the trapezoid rule.

    Example:
        >>> curve_auc(np.array([[1.0, 0.5, 0.0]]), np.array([0.0, 0.5, 1.0])).tolist()
        [0.5]
    """
    return np.trapezoid(np.asarray(curves, float), np.asarray(fractions, float), axis=-1)


ENGINES = ("litert", "tensorflow")


def probability_function(
    model, engine: str = "litert"
) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    """The model's probabilities of a float32 batch as numpy, for any batch size:
    `predict(images, fields)`, fields the encoded patient fields of a model trained with them
    (`skin_tf.models.meta_fusion`), None for an image-only model.

    engine="litert" runs the same float32 network converted to LiteRT, whose XNNPACK engine
    answers the checks' batches faster on a CPU (`skin_tf.models.litert_runtime`; the
    probabilities agree with TensorFlow's to float rounding, a test holds them within 1e-5);
    "tensorflow" runs the Keras model in a tf.function traced once.

    Example:
        >>> predict = probability_function(model)  # doctest: +SKIP
        >>> predict(images).shape  # doctest: +SKIP
        (200, 7)
    """
    from skin_tf.models.meta_fusion import metadata_shape

    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    width, _ = metadata_shape(model)
    forward = _litert_forward(model) if engine == "litert" else _tensorflow_forward(model, width)

    def predict(batch, fields=None):
        if width and fields is None:
            raise ValueError(
                f"this model takes {width} encoded patient fields per image: give them"
            )
        if not width and fields is not None:
            raise ValueError("this model takes images alone: give no fields")
        return forward(np.asarray(batch, np.float32), fields)

    return predict


def _litert_forward(model) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    from skin_tf.models.litert_runtime import LiteRTRunner, float_flatbuffer

    runner = LiteRTRunner(float_flatbuffer(model))
    return lambda batch, fields: runner.run(batch, fields)[0]


def _tensorflow_forward(model, width: int) -> Callable[[np.ndarray, np.ndarray | None], np.ndarray]:
    import tensorflow as tf

    from skin_tf.models.meta_fusion import META_INPUT, image_input

    image_spec = tf.TensorSpec([None, *image_input(model).shape[1:]], tf.float32)
    if not width:

        @tf.function(input_signature=[image_spec])
        def images_only(batch):
            return model(batch, training=False)

        return lambda batch, fields: images_only(tf.convert_to_tensor(batch)).numpy()

    @tf.function(input_signature=[image_spec, tf.TensorSpec([None, width], tf.float32)])
    def with_fields(batch, fields):
        return model({"image": batch, META_INPUT: fields}, training=False)

    return lambda batch, fields: with_fields(
        tf.convert_to_tensor(batch), tf.convert_to_tensor(fields, tf.float32)
    ).numpy()


def predict_in_batches(
    predict: Callable, batch: np.ndarray, fields: np.ndarray | None, batch_size: int
) -> np.ndarray:
    """`predict` (`probability_function`) over a batch of any size, batch_size images a call
    (an image-only `predict` is called with the images alone)."""
    starts = range(0, len(batch), batch_size)
    if fields is None:
        return np.concatenate([predict(batch[i : i + batch_size]) for i in starts])
    return np.concatenate(
        [predict(batch[i : i + batch_size], fields[i : i + batch_size]) for i in starts]
    )
