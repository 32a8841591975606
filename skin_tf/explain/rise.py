"""RISE (Petsiuk et al. 2018, "RISE: Randomized Input Sampling for Explanation of Black-box
Models"): a heatmap read off the model's answers on randomly masked copies of the image.

Each of `MASKS` masks is a coarse random grid (`GRID` cells a side, each kept with probability
`KEEP`), upsampled bilinearly to a little more than the image and shifted by a random fraction
of a cell, so the soft mask edges fall anywhere. A masked copy keeps the image where the mask is
1 and shows the image's mean colour where it is 0 (the removal image of the deletion check,
`skin_tf.explain.faithfulness`, for the same reason: black looks like pigment). The map at a
pixel is the mean probability of the explained class over the copies that kept that pixel.

Petsiuk et al. divide by the expected count (MASKS x KEEP); dividing by each pixel's own count
instead removes the pattern of the masks themselves, which is the same for every model: a model
whose answers ignore the masks gets a flat map, not a picture of the masks (the randomisation
check, `skin_tf.explain.sanity`, would otherwise find the same pattern in the trained and the
randomised model's maps).

Why a hand-written method: the cpu models' last conv grid is 4×4, and on it no gradient or
Score-CAM map beat a centred blob on deletion (`results/explain/`); RISE reads the answers at
the input's own resolution. tf-keras-vis has no perturbation method. `rise_saliency` is the
SavedModel's `explain` endpoint's (in its graph) and, run eagerly around a faster engine's
answers, the checks' (`rise_maps_of`); `RiseOnTrunk` makes the same copies and sums in numpy
(tests hold the maps equal). The masks come from stateless random ops with a fixed seed, so
every route draws the same ones and the export stores no mask. Cost: MASKS forward passes per
image.

Example:
    >>> masks = rise_masks(4, (6, 8), grid=2)
    >>> tuple(masks.shape), bool(tf.reduce_all((masks >= 0) & (masks <= 1)))
    ((4, 6, 8), True)
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

# Petsiuk et al. used 4000-8000 at 224 px. On the demo model 500 keep most of 1000's deletion
# gain over the centred blob (-0.033 vs -0.038) at half the cost; with them the demo's whole
# check took 9.8 min on 2 cores (benchmarks/README.md, "How many masks RISE needs")
MASKS = 500
GRID = 8  # cells a side: 16 px at 128 px, about a quarter of a lesion's width
KEEP = 0.5  # probability that a cell shows the image
CHUNK = 100  # masked copies per model call
SEED = 0


def rise_settings() -> dict[str, int | float]:
    """The masks this code draws (count, cells a side, keep probability, seed): the check
    records them, and export refuses a check of RISE made with other masks.

    Example:
        >>> sorted(rise_settings())
        ['grid', 'keep', 'masks', 'seed']
    """
    return {"masks": MASKS, "grid": GRID, "keep": KEEP, "seed": SEED}


def rise_masks(
    count: int = MASKS,
    hw: tuple[int, int] = (128, 128),
    grid: int = GRID,
    keep: float = KEEP,
    seed: int = SEED,
) -> tf.Tensor:
    """`count` RISE masks (count, h, w) in 0..1, the same for the same arguments everywhere.

    Example:
        >>> bool(tf.reduce_all(rise_masks(3, (5, 5), grid=2) == rise_masks(3, (5, 5), grid=2)))
        True
    """
    if count < 1 or grid < 1 or not 0.0 < keep < 1.0:
        raise ValueError(
            f"RISE needs count >= 1, grid >= 1 and 0 < keep < 1; got {count}, {grid}, {keep}"
        )
    height, width = int(hw[0]), int(hw[1])
    cell_h, cell_w = math.ceil(height / grid), math.ceil(width / grid)
    cells = tf.random.stateless_uniform((count, grid, grid, 1), seed=[seed, 0]) < keep
    upsampled = tf.image.resize(
        tf.cast(cells, tf.float32), ((grid + 1) * cell_h, (grid + 1) * cell_w)
    )
    dy = tf.random.stateless_uniform((count,), [seed, 1], maxval=cell_h, dtype=tf.int32)
    dx = tf.random.stateless_uniform((count,), [seed, 2], maxval=cell_w, dtype=tf.int32)
    rows = dy[:, None] + tf.range(height)[None]
    cols = dx[:, None] + tf.range(width)[None]
    shifted = tf.gather(upsampled[..., 0], rows, axis=1, batch_dims=1)
    return tf.gather(shifted, cols, axis=2, batch_dims=1)


def rise_saliency(
    probabilities: Callable[..., tf.Tensor],
    images: tf.Tensor,
    targets: tf.Tensor,
    masks: tf.Tensor,
    fields: tf.Tensor | None = None,
    chunk: int = CHUNK,
) -> tf.Tensor:
    """RISE maps (N, h, w) of float images (N, h, w, 3) at the model's size, for the class
    `targets[i]` of each image: per pixel, the mean probability of the class over the masked
    copies that kept it. Not scaled: callers scale each map to 0..1 as they do Grad-CAM's.

    `probabilities(batch)` (or `probabilities(batch, fields)` for a model with patient fields,
    each image's row held) gives (B, classes); `masks` (M, h, w) from `rise_masks`, M a
    multiple of `chunk`. Works eagerly and inside a tf.function (the `explain` endpoint).

    Example:
        >>> flat = lambda batch: tf.ones((tf.shape(batch)[0], 7)) / 7  # ignores the image
        >>> maps = rise_saliency(flat, tf.zeros((1, 4, 4, 3)), [0], rise_masks(100, (4, 4), 2))
        >>> float(tf.reduce_max(maps) - tf.reduce_min(maps)) < 1e-6  # a flat map
        True
    """
    images = tf.convert_to_tensor(images, tf.float32)
    masks = tf.convert_to_tensor(masks, tf.float32)
    targets = tf.cast(tf.convert_to_tensor(targets), tf.int32)
    count = masks.shape[0]
    if count is None or count % chunk:
        raise ValueError(f"{count} masks is not a multiple of the chunk {chunk}")
    height, width = tf.shape(masks)[1], tf.shape(masks)[2]
    chunks = tf.reshape(masks, (count // chunk, chunk, height, width))
    kept = tf.reduce_sum(masks, axis=0)  # how many copies show each pixel
    rows = fields if fields is not None else tf.zeros((tf.shape(images)[0], 0), tf.float32)

    def one_image(item: tuple[tf.Tensor, tf.Tensor, tf.Tensor]) -> tf.Tensor:
        image, target, row = item
        fill = tf.reduce_mean(image, axis=(0, 1), keepdims=True)

        def class_probability(part: tf.Tensor) -> tf.Tensor:
            shown = part[..., None]
            copies = image * shown + fill * (1.0 - shown)
            if fields is None:
                p = probabilities(copies)
            else:
                p = probabilities(copies, tf.repeat(row[None], chunk, axis=0))
            return tf.cast(p, tf.float32)[:, target]

        scores = tf.map_fn(class_probability, chunks, fn_output_signature=tf.float32)
        weighted = tf.tensordot(tf.reshape(scores, [-1]), masks, axes=1)
        return weighted / tf.maximum(kept, 1e-6)

    return tf.map_fn(
        one_image, (images, targets, rows), fn_output_signature=tf.float32, parallel_iterations=1
    )


def rise_maps(
    logits: Callable[..., tf.Tensor],
    images: np.ndarray,
    targets: Sequence[int],
    fields: np.ndarray | None = None,
    count: int = MASKS,
) -> tf.Tensor:
    """RISE maps (N, h, w), not scaled, of the softmax of a Keras model's `logits` (e.g.
    `skin_tf.explain.gradcam.logit_model`), with `count` masks: one traced call for the whole
    batch (the images are looped over inside the graph). `fields`: the encoded patient fields of
    a model trained with them, each image's row held.

    Example:
        >>> maps = rise_maps(logit_model(model), images, [4, 5])  # doctest: +SKIP
    """
    from skin_tf.models.meta_fusion import META_INPUT

    masks = rise_masks(count, hw=images.shape[1:3])

    def probabilities(batch: tf.Tensor, *held: tf.Tensor) -> tf.Tensor:
        x = batch if not held else {"image": batch, META_INPUT: held[0]}
        return tf.nn.softmax(logits(x, training=False))

    @tf.function
    def maps(batch, classes, *rows):
        return rise_saliency(probabilities, batch, classes, masks, *rows)

    held = () if fields is None else (tf.constant(fields, tf.float32),)
    return maps(tf.constant(images), tf.constant(list(targets), tf.int32), *held)


def rise_maps_of(
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray],
    images: np.ndarray,
    targets: Sequence[int],
    fields: np.ndarray | None = None,
    count: int = MASKS,
) -> np.ndarray:
    """RISE maps (N, h, w), not scaled, of a numpy `predict(batch, fields)` (probabilities, e.g.
    `skin_tf.explain.faithfulness.probability_function(model)` on LiteRT, which the checks use
    for speed): `rise_saliency` run eagerly, each chunk of masked copies one call. (Making the
    copies in numpy instead was no faster: benchmarks/README.md.)

    Example:
        >>> maps = rise_maps_of(probability_function(model), images, [4, 5])  # doctest: +SKIP
    """
    masks = rise_masks(count, hw=images.shape[1:3])

    def probabilities(batch: tf.Tensor, *held: tf.Tensor) -> tf.Tensor:
        return tf.constant(predict(batch.numpy(), held[0].numpy() if held else None))

    held = () if fields is None else (tf.constant(fields, tf.float32),)
    maps = rise_saliency(
        probabilities, tf.constant(images, tf.float32), list(targets), masks, *held
    )
    return maps.numpy()


class RiseOnTrunk:
    """RISE maps of fixed images under models that share every layer below a cut: the
    randomisation cascade's copies (`skin_tf.explain.sanity.trunk_split`), which re-initialise
    only layers above it. Each masked copy goes through the shared `lower` part once and is kept
    as features; each model's `upper` part reads them. A cascade of k steps then costs one trunk
    pass and k upper passes instead of k full passes (each model's `predict_on_batch`, traced
    once per model: the cascade changes one copy in place). The masks, fill and sums are
    `rise_saliency`'s, so the maps are the same up to float rounding (a test holds them equal).

    The trunk pass runs on `engine`: "litert" converts `lower` (fixed for the whole cascade) to
    LiteRT float32 once, faster on a CPU (`skin_tf.models.litert_runtime`); "tensorflow" runs
    the Keras part. Each upper part stays in TensorFlow: the cascade changes its weights.

    Example:
        >>> lower, upper = trunk_split(logits, depth=4)  # doctest: +SKIP
        >>> trunk = RiseOnTrunk(lower, images)  # doctest: +SKIP
        >>> maps = trunk.maps(upper, targets)  # (N, h, w), not scaled  # doctest: +SKIP
    """

    def __init__(
        self,
        lower: keras.Model,
        images: np.ndarray,
        fields: np.ndarray | None = None,
        count: int = MASKS,
        chunk: int = CHUNK,
        engine: str = "litert",
    ) -> None:
        if count % chunk:
            raise ValueError(f"{count} masks is not a multiple of the chunk {chunk}")
        images = np.asarray(images, np.float32)
        self.masks = rise_masks(count, hw=images.shape[1:3]).numpy()
        self.kept = np.maximum(self.masks.sum(axis=0), 1e-6)
        self.fields = fields
        features_of = _features_function(lower, engine)
        self.features: list[list[np.ndarray]] = []  # per image: each cut's (count, ...) features
        for image in images:
            parts = [features_of(copies) for copies in _masked_copies(image, self.masks, chunk)]
            self.features.append([np.concatenate(cut) for cut in zip(*parts, strict=True)])

    def maps(self, upper: keras.Model, targets: Sequence[int]) -> np.ndarray:
        """(N, h, w) RISE maps, not scaled, of softmax(upper(features)) for each image's class;
        `upper` takes the cut's features (and a model's patient fields last) and gives logits.
        Each image's copies are one call."""
        out = []
        for i, (features, target) in enumerate(zip(self.features, targets, strict=True)):
            inputs = list(features)
            if self.fields is not None:
                inputs.append(np.repeat(self.fields[i : i + 1], len(self.masks), axis=0))
            logits = upper.predict_on_batch(inputs if len(inputs) > 1 else inputs[0])
            scores = tf.nn.softmax(logits).numpy()[:, int(target)]
            out.append(np.tensordot(scores, self.masks, axes=1) / self.kept)
        return np.stack(out).astype(np.float32)


def _masked_copies(image: np.ndarray, masks: np.ndarray, chunk: int) -> Iterator[np.ndarray]:
    """`rise_saliency`'s masked copies of one image, `chunk` at a time: the image where a mask
    is 1, its mean colour where it is 0."""
    fill = image.mean(axis=(0, 1), keepdims=True)
    for start in range(0, len(masks), chunk):
        shown = masks[start : start + chunk, ..., None]
        yield image * shown + fill * (1.0 - shown)


def _features_function(lower: keras.Model, engine: str) -> Callable[[np.ndarray], list[np.ndarray]]:
    """The trunk's features (every cut, in `lower`'s output order) of a batch of copies."""
    if engine == "tensorflow":
        return lambda copies: _as_list(lower.predict_on_batch(copies))
    if engine != "litert":
        raise ValueError(f"unknown engine {engine!r}: choose litert or tensorflow")
    from skin_tf.models.litert_runtime import LiteRTRunner, float_flatbuffer

    runner = LiteRTRunner(float_flatbuffer(lower))
    return runner.run


def _as_list(outputs: object) -> list[np.ndarray]:
    items = outputs if isinstance(outputs, list | tuple) else [outputs]
    return [np.asarray(item) for item in items]
