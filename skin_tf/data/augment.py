"""Training augmentation, applied per batch after the cache: flips, 90° turns, random-resized-crop,
optional small rotations, colour jitter. One random draw per image; float32 in, float32 out.

What to apply is an `AugmentConfig` (a TrainConfig's `augment`). TensorFlow is imported inside the
functions that apply it, so a config can be read and checked without loading TensorFlow.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from skin_tf.config_files import ConfigError

if TYPE_CHECKING:
    import tensorflow as tf

# RGB → YIQ (NTSC); hue jitter rotates the I/Q chroma plane.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_LUMA = _RGB_TO_YIQ[0]
_YIQ_TO_RGB = np.linalg.inv(_RGB_TO_YIQ).astype(np.float32)


@dataclass(frozen=True)
class AugmentConfig:
    """Random training augmentation, applied per batch after the cache (one draw per image).

    hflip/vflip/rot90: random flips and 90° rotations (together: all 8 orientations). A turn
        by 90° would change the shape of a non-square image, so such images (e.g. 150×200) get
        the flips alone, which include the 180° turn.
    rotation_degrees: extra rotation, uniform in ±degrees (corners filled by reflection); it
        needs a projective warp that halves cached throughput, so it is off by default.
    brightness/contrast/saturation: factor uniform in [1 - x, 1 + x] (torchvision ColorJitter
        semantics); hue: chroma rotation uniform in ±hue of a full turn (YIQ space).
    crop_scale: random-resized-crop area fraction range (aspect ratio in [3/4, 4/3]), or None.
        Crops come from the cached image at the target size, so a crop is scaled up (at most
        1/sqrt(lo) times), not re-read from the original.

    These defaults are make_dataset's (`pipeline.DEFAULT_AUGMENT`); a TrainConfig's default is
    REFERENCE_AUGMENT (no crop). Impossible values raise ConfigError naming the field.

    >>> AugmentConfig(rotation_degrees=15, crop_scale=None).rotation_degrees
    15
    """

    hflip: bool = True
    vflip: bool = True
    rot90: bool = True
    rotation_degrees: float = 0.0
    brightness: float = 0.1
    contrast: float = 0.1
    saturation: float = 0.1
    hue: float = 0.02
    crop_scale: tuple[float, float] | None = (0.75, 1.0)

    def __post_init__(self) -> None:
        def fail(key: str, why: str) -> None:
            raise ConfigError(f"augment.{key}={getattr(self, key)!r} {why}")

        lo_hi = self.crop_scale
        if lo_hi is not None and not 0 < lo_hi[0] <= lo_hi[1] <= 1:
            fail(
                "crop_scale",
                "must be null or [lo, hi] with 0 < lo <= hi <= 1 (image area fractions)",
            )
        for key in ("brightness", "contrast", "saturation"):
            if not 0 <= getattr(self, key) < 1:
                fail(key, "must be in [0, 1)")
        if not 0 <= self.hue <= 0.5:
            fail("hue", "must be in [0, 0.5] (fraction of a full hue turn)")
        if not 0 <= self.rotation_degrees <= 180:
            fail("rotation_degrees", "must be in [0, 180]")


# The reference experiments' augmentation (TrainConfig's default, and what a partial `augment`
# object in a config or `--set augment.x=…` starts from): AugmentConfig's defaults without the
# random-resized crop, which only the effnetb2_260 configs switch on.
REFERENCE_AUGMENT = AugmentConfig(crop_scale=None)


def augment_batch(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Augment a (B, H, W, 3) batch with one random draw per image; float32 0..255 out.

    Stateless: the same `seed` (int shape [2]) and images give the same output.

    >>> import tensorflow as tf
    >>> batch = tf.zeros((2, 8, 8, 3), tf.uint8)
    >>> augment_batch(batch, AugmentConfig(), seed=tf.constant([1, 2])).shape
    TensorShape([2, 8, 8, 3])
    """
    import tensorflow as tf

    geometry_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = _augment_geometry(images, config, geometry_seed)
    return _augment_colour(images, config, colour_seed)


def _augment_geometry(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Orientation (flips, 90° turns) and random-resized-crop; a warp if rotation is asked for."""
    import tensorflow as tf

    batch = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))

    def uniform(i: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seeds[i], low, high)

    transpose = flip_lr = flip_ud = tf.zeros([batch], tf.bool)
    # Turns need a square whose side is known when the graph is built (the pipeline's batches).
    square = images.shape[1] is not None and images.shape[1] == images.shape[2]
    if config.rot90 and square:  # k·90° = transpose if k is odd, then flips (as tf.image.rot90)
        k = tf.random.stateless_uniform([batch], seeds[0], 0, 4, tf.int32)
        transpose, flip_lr, flip_ud = k % 2 == 1, k >= 2, (k == 1) | (k == 2)
    if config.hflip:
        flip_lr ^= uniform(1) < 0.5
    if config.vflip:
        flip_ud ^= uniform(2) < 0.5
    width = height = tf.ones([batch])
    if config.crop_scale is not None:
        area = uniform(3, *config.crop_scale)
        aspect = tf.exp(uniform(4, -math.log(4 / 3), math.log(4 / 3)))
        width = tf.minimum(1.0, tf.sqrt(area * aspect))
        height = tf.minimum(1.0, tf.sqrt(area / aspect))
    # Crop box in 0..1 coordinates (1 = last pixel), placed uniformly inside the image.
    left, top = uniform(5) * (1.0 - width), uniform(6) * (1.0 - height)
    if config.rotation_degrees > 0:
        angle = uniform(
            7, -math.radians(config.rotation_degrees), math.radians(config.rotation_degrees)
        )
        return _warp(images, transpose, flip_lr, flip_ud, left, top, width, height, angle)
    if not ((config.rot90 and square) or config.hflip or config.vflip or config.crop_scale):
        return tf.cast(images, tf.float32)
    # Transpose a random subset (cheaper than a tf.where over the whole batch), then let
    # crop_and_resize crop and flip in one pass: it flips a box whose corners come reversed.
    if config.rot90 and square:
        chosen = tf.where(transpose)
        turned = tf.transpose(tf.gather_nd(images, chosen), [0, 2, 1, 3])
        images = tf.tensor_scatter_nd_update(images, chosen, turned)
    bottom, right = top + height, left + width
    boxes = tf.stack(
        [
            tf.where(flip_ud, bottom, top),
            tf.where(flip_lr, right, left),
            tf.where(flip_ud, top, bottom),
            tf.where(flip_lr, left, right),
        ],
        axis=1,
    )
    return tf.image.crop_and_resize(images, boxes, tf.range(batch), tf.shape(images)[1:3])


def _warp(images, transpose, flip_lr, flip_ud, left, top, width, height, angle) -> tf.Tensor:
    """The crop path's geometry plus a rotation, as one bilinear projective warp per image.

    In (x, y) pixel coordinates an output pixel p reads input pixel T·(c + Z·R·F·(p - m)), with
    F the flips, R the rotation, Z the crop size, c the crop centre, m the image centre and T the
    optional transpose: with angle 0 this is exactly what the crop_and_resize path computes.
    """
    import tensorflow as tf

    last = tf.cast(tf.shape(images)[2:0:-1] - 1, tf.float32)  # (x, y) of the last pixel
    cos, sin, zero = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle)

    def matrices(a, b, c, d):  # per-image 2x2 matrices [[a, b], [c, d]]
        return tf.reshape(tf.stack([a, b, c, d], axis=1), [-1, 2, 2])

    swap = tf.where(transpose[:, None, None], [[0.0, 1.0], [1.0, 0.0]], tf.eye(2))
    flips = matrices(tf.where(flip_lr, -1.0, 1.0), zero, zero, tf.where(flip_ud, -1.0, 1.0))
    scale_rotate = matrices(width * cos, -width * sin, height * sin, height * cos)
    linear = swap @ scale_rotate @ flips
    crop_centre = tf.stack([left + width / 2, top + height / 2], axis=1) * last
    offset = tf.linalg.matvec(swap, crop_centre) - tf.linalg.matvec(
        linear, tf.ones_like(crop_centre) * last / 2
    )
    transforms = tf.concat(
        [linear[:, 0], offset[:, :1], linear[:, 1], offset[:, 1:], tf.zeros_like(offset)], axis=1
    )
    return tf.raw_ops.ImageProjectiveTransformV3(
        images=tf.cast(images, tf.float32),
        transforms=transforms,
        output_shape=tf.shape(images)[1:3],
        fill_value=0.0,
        interpolation="BILINEAR",
        fill_mode="REFLECT",
    )


def _augment_colour(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Brightness, contrast, saturation, hue as one per-image 3×3 colour matrix plus an offset."""
    import tensorflow as tf

    images = tf.cast(images, tf.float32)
    if not (config.brightness or config.contrast or config.saturation or config.hue):
        return images
    batch = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 4))

    def uniform(i: int, low: float, high: float) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seeds[i], low, high)

    brightness = uniform(0, 1.0 - config.brightness, 1.0 + config.brightness)
    contrast = uniform(1, 1.0 - config.contrast, 1.0 + config.contrast)
    saturation = uniform(2, 1.0 - config.saturation, 1.0 + config.saturation)[:, None, None]
    # Saturation blends with the grey image: s·x + (1 - s)·luma(x)·(1, 1, 1).
    grey = np.outer(np.ones(3), _LUMA).astype(np.float32)
    matrix = saturation * tf.eye(3) + (1.0 - saturation) * grey
    if config.hue:  # rotate the chroma (I, Q) plane of YIQ
        angle = 2 * math.pi * uniform(3, -config.hue, config.hue)
        cos, sin, zero, one = (
            tf.cos(angle),
            tf.sin(angle),
            tf.zeros_like(angle),
            tf.ones_like(angle),
        )
        rotate = tf.reshape(
            tf.stack([one, zero, zero, zero, cos, -sin, zero, sin, cos], 1), [-1, 3, 3]
        )
        matrix = tf.constant(_YIQ_TO_RGB) @ rotate @ tf.constant(_RGB_TO_YIQ) @ matrix
    # Contrast blends with the image's mean grey level. Both blends keep grey (1, 1, 1) fixed, so
    # brightness·contrast factors out and the mean becomes a per-image offset. The mean is taken
    # over every 4th row and column: a full pass over the batch cheaper, same level to ~0.1.
    mean_grey = tf.linalg.matvec(tf.reduce_mean(images[:, ::4, ::4], axis=[1, 2]), _LUMA)
    offset = (1.0 - contrast) * brightness * mean_grey
    scaled = (brightness * contrast)[:, None, None] * matrix
    mixed = tf.linalg.matmul(tf.reshape(images, [batch, -1, 3]), scaled, transpose_b=True)
    mixed = tf.reshape(mixed + offset[:, None, None], tf.shape(images))
    return tf.clip_by_value(mixed, 0.0, 255.0)
