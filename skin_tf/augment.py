"""Training augmentation, applied per batch after the cache: flips, 90° turns, random-resized-crop,
optional small rotations, colour jitter. One random draw per image; float32 in, float32 out.

What to apply is a `skin_tf.config.AugmentConfig` (kept there, free of TensorFlow, so configs load
without it); this module only applies it.
"""

from __future__ import annotations

import math

import numpy as np
import tensorflow as tf

from skin_tf.config import AugmentConfig

# RGB → YIQ (NTSC); hue jitter rotates the I/Q chroma plane.
_RGB_TO_YIQ = np.array(
    [[0.299, 0.587, 0.114], [0.596, -0.274, -0.322], [0.211, -0.523, 0.312]], np.float32
)
_LUMA = _RGB_TO_YIQ[0]
_RGB_TO_YIQ, _YIQ_TO_RGB = tf.constant(_RGB_TO_YIQ), tf.constant(np.linalg.inv(_RGB_TO_YIQ))


def augment_batch(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Augment a (B, S, S, 3) batch with one random draw per image; float32 0..255 out.

    Stateless: the same `seed` (int shape [2]) and images give the same output.

    >>> batch = tf.zeros((2, 8, 8, 3), tf.uint8)
    >>> augment_batch(batch, AugmentConfig(), seed=tf.constant([1, 2])).shape
    TensorShape([2, 8, 8, 3])
    """
    geometry_seed, colour_seed = tf.unstack(tf.random.experimental.stateless_split(seed, 2))
    images = _augment_geometry(images, config, geometry_seed)
    return _augment_colour(images, config, colour_seed)


def _augment_geometry(images: tf.Tensor, config: AugmentConfig, seed: tf.Tensor) -> tf.Tensor:
    """Orientation (flips, 90° turns) and random-resized-crop; a warp if rotation is asked for."""
    batch = tf.shape(images)[0]
    seeds = tf.unstack(tf.random.experimental.stateless_split(seed, 8))

    def uniform(i: int, low: float = 0.0, high: float = 1.0) -> tf.Tensor:
        return tf.random.stateless_uniform([batch], seeds[i], low, high)

    transpose = flip_lr = flip_ud = tf.zeros([batch], tf.bool)
    if config.rot90:  # a turn by k·90° = transpose if k is odd, then flips (as in tf.image.rot90)
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
    if not (config.rot90 or config.hflip or config.vflip or config.crop_scale is not None):
        return tf.cast(images, tf.float32)
    # Transpose a random subset (cheaper than a tf.where over the whole batch), then let
    # crop_and_resize crop and flip in one pass: it flips a box whose corners come reversed.
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
    last = tf.cast(tf.shape(images)[1] - 1, tf.float32)
    cos, sin, zero = tf.cos(angle), tf.sin(angle), tf.zeros_like(angle)

    def matrices(a, b, c, d):  # per-image 2x2 matrices [[a, b], [c, d]]
        return tf.reshape(tf.stack([a, b, c, d], axis=1), [-1, 2, 2])

    swap = tf.where(transpose[:, None, None], [[0.0, 1.0], [1.0, 0.0]], tf.eye(2))
    flips = matrices(tf.where(flip_lr, -1.0, 1.0), zero, zero, tf.where(flip_ud, -1.0, 1.0))
    scale_rotate = matrices(width * cos, -width * sin, height * sin, height * cos)
    linear = swap @ scale_rotate @ flips
    crop_centre = tf.stack([left + width / 2, top + height / 2], axis=1) * last
    offset = (
        tf.linalg.matvec(swap, crop_centre)
        - tf.linalg.matvec(linear, tf.ones_like(crop_centre)) * last / 2
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
        matrix = _YIQ_TO_RGB @ rotate @ _RGB_TO_YIQ @ matrix
    # Contrast blends with the image's mean grey level. Both blends keep grey (1, 1, 1) fixed, so
    # brightness·contrast factors out and the mean becomes a per-image offset. The mean is taken
    # over every 4th row and column: a full pass over the batch cheaper, same level to ~0.1.
    mean_grey = tf.linalg.matvec(tf.reduce_mean(images[:, ::4, ::4], axis=[1, 2]), _LUMA)
    offset = (1.0 - contrast) * brightness * mean_grey
    scaled = (brightness * contrast)[:, None, None] * matrix
    mixed = tf.linalg.matmul(tf.reshape(images, [batch, -1, 3]), scaled, transpose_b=True)
    mixed = tf.reshape(mixed + offset[:, None, None], tf.shape(images))
    return tf.clip_by_value(mixed, 0.0, 255.0)
