"""Images a user hands in (a file, an upload, raw bytes): read, checked and made ready for a model.

`read_rgb_image` says clearly why a file cannot be used ("empty file", "not an image", "truncated
or damaged JPEG file", "too small …", "too large …"), in words a user can act on: the same messages
reach `skin-tf predict` and the Streamlit page. `prepare_image` then decodes and resizes it with
`skin_tf.data.pipeline.decode_resize`, exactly as in training and evaluation. `skin-tf predict`, the
Streamlit page and the Grad-CAM gallery all read images through here.

    >>> prepared = prepare_image("lesion.jpg", 224)  # doctest: +SKIP
    >>> prepared.model_input.shape  # doctest: +SKIP
    (224, 224, 3)
"""

from __future__ import annotations

import functools
import io
import math
import os
import re
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skin_tf.data.sizes import image_hw

MIN_SIDE = 32  # EfficientNets need a few pixels per 32-px stride; smaller inputs mean nothing
# 40 megapixels: above any dermatoscope photo; keeps a decompression bomb from filling memory.
MAX_PIXELS = 40_000_000
# What skin_tf.data.pipeline.decode_resize decodes to the same picture as PIL.
_TF_FORMATS = frozenset({"JPEG", "PNG", "GIF", "BMP", "WEBP"})
_TF_MODES = frozenset({"RGB", "L", "P"})
_EXIF_ORIENTATION = 0x0112
IMAGE_SUFFIXES = frozenset(
    {".jpg", ".jpeg", ".png", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".jfif"}
)


class ImageError(ValueError):
    """A file or upload that cannot be used as an image; the message says why."""


def read_rgb_image(source: str | os.PathLike | bytes | BinaryIO) -> np.ndarray:
    """Decode a file path, raw bytes or a binary file object into an (H, W, 3) uint8 RGB array.

    Greyscale, palette, RGBA/LA (composited on white), CMYK and 16-bit images are converted;
    the EXIF orientation is applied. Raises `ImageError` with a short reason otherwise:
    "empty file (0 bytes)", "not an image (no known image format)", "truncated or damaged JPEG
    file: re-export or re-download it", "too small: 1x1 (min 32 px)",
    "too large: 144 megapixels (max 40 megapixels)".

    Example:
        >>> read_rgb_image("ISIC_0024306.jpg").shape  # doctest: +SKIP
        (450, 600, 3)
    """
    return _decode_checked(source)[0]


def _decode_checked(source: str | os.PathLike | bytes | BinaryIO) -> tuple[np.ndarray, bool]:
    """(RGB uint8 pixels, whether TensorFlow's decoder would give the same picture)."""
    data = _read_bytes(source)
    if not data:  # PIL would call it "no known image format"; an upload or copy went wrong
        raise ImageError("empty file (0 bytes)")
    try:
        # PIL warns from 89 megapixels; this function refuses from 40 with its own message, so
        # the warning would only reach a server log as noise.
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (no known image format)") from None
    except Image.DecompressionBombError as err:  # PIL's own, higher limit: refused at the header
        raise ImageError(too_large_message(_bomb_pixels(str(err)))) from None
    except (OSError, SyntaxError, ValueError):  # the header itself is cut or damaged
        raise ImageError(damaged_message(_sniff_format(data))) from None
    with image:
        kind = image.format or "image"
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(too_large_message(width * height))
        if min(width, height) < MIN_SIDE:
            raise ImageError(f"too small: {width}x{height} (min {MIN_SIDE} px)")
        # PIL otherwise pads a truncated file with grey silently when this flag is set globally.
        previous, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
        try:
            image.load()
            upright = image.getexif().get(_EXIF_ORIENTATION, 1) in (None, 1)
            tf_decodable = (
                kind in _TF_FORMATS
                and image.mode in _TF_MODES
                and "transparency" not in image.info
                and upright
            )
            image = ImageOps.exif_transpose(image)
            return _to_rgb_uint8(image), tf_decodable
        except (OSError, SyntaxError, ValueError):
            # PIL's text ("image file is truncated (6 bytes not processed)") means nothing to a
            # user; what they can do about it does.
            raise ImageError(damaged_message(kind)) from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


def damaged_message(kind: str) -> str:
    """The reason given for a file whose header or data is cut or damaged.

    Example:
        >>> damaged_message("JPEG")
        'truncated or damaged JPEG file: re-export or re-download it'
    """
    return f"truncated or damaged {kind} file: re-export or re-download it"


def too_large_message(pixels: int | None) -> str:
    """The reason given for an image above MAX_PIXELS (None: above PIL's own limit, size unknown).

    Example:
        >>> too_large_message(12_000 * 12_000)
        'too large: 144 megapixels (max 40 megapixels)'
    """
    size = (
        f"over {megapixels(2 * (Image.MAX_IMAGE_PIXELS or MAX_PIXELS))}"
        if pixels is None
        else megapixels(pixels)
    )
    return f"too large: {size} megapixels (max {megapixels(MAX_PIXELS)} megapixels)"


def megapixels(pixels: int) -> str:
    """Pixels in megapixels, one decimal at most, rounded up so that a refused size never reads
    as the limit itself.

    Example:
        >>> megapixels(40_000_000), megapixels(40_000_001), megapixels(144_000_000)
        ('40', '40.1', '144')
    """
    return f"{math.ceil(pixels / 100_000) / 10:,.1f}".removesuffix(".0")


def _bomb_pixels(message: str) -> int | None:
    """The pixel count in PIL's DecompressionBombError text ("Image size (400000000 pixels)
    exceeds limit …"); None when PIL words it otherwise."""
    found = re.search(r"\((\d+) pixels\)", message)
    return int(found.group(1)) if found else None


def _read_bytes(source: str | os.PathLike | bytes | BinaryIO) -> bytes:
    if isinstance(source, bytes | bytearray):
        return bytes(source)
    if isinstance(source, str | os.PathLike):
        return Path(source).read_bytes()
    return source.read()


def _sniff_format(data: bytes) -> str:
    """The format a damaged file claims by its first bytes ("image" when none)."""
    signatures = {b"\xff\xd8": "JPEG", b"\x89PNG": "PNG", b"GIF8": "GIF", b"BM": "BMP"}
    return next((name for magic, name in signatures.items() if data.startswith(magic)), "image")


@dataclass(frozen=True)
class PreparedImage:
    """An image ready for the exported model, and the picture to show or overlay."""

    original: np.ndarray  # RGB uint8 at the image's own size
    model_input: np.ndarray  # uint8 for `ServedModel.predict/explain` (any size: resized inside)
    via_pipeline: bool  # True: decoded and resized by skin_tf.data.pipeline.decode_resize


def prepare_image(
    source: str | os.PathLike | bytes | BinaryIO,
    image_size: int | tuple[int, int],
    resize: str = "squash",
) -> PreparedImage:
    """Validate and decode a file or upload the way evaluation did; raises `ImageError`.

    Images TensorFlow decodes the same way as PIL (JPEG/PNG/GIF/BMP/WebP, RGB or grey, no EXIF
    rotation) go through `skin_tf.data.pipeline.decode_resize`, exactly as in training and
    evaluation (including the DCT-domain downscaling of large JPEGs). Others (CMYK, 16-bit, alpha,
    TIFF, rotated photos) use PIL's pixels, which the model's `serve` endpoint resizes with the same
    rule. The CLI and the Streamlit page both call this.

    Example:
        >>> prepared = prepare_image("lesion.jpg", 224)  # doctest: +SKIP
        >>> served.predict(prepared.model_input)  # doctest: +SKIP
    """
    data = _read_bytes(source)
    original, tf_decodable = _decode_checked(data)
    if not tf_decodable:
        return PreparedImage(original, original, via_pipeline=False)
    import tensorflow as tf

    try:
        decode = _graph_decode_resize(image_hw(image_size), resize)
        pixels = decode(tf.constant(data, tf.string)).numpy()
    except tf.errors.InvalidArgumentError:  # PIL read it but TensorFlow's decoder refuses
        return PreparedImage(original, original, via_pipeline=False)
    return PreparedImage(original, pixels, via_pipeline=True)


@functools.cache
def _graph_decode_resize(image_size: tuple[int, int], resize: str):
    """`skin_tf.data.pipeline.decode_resize` as one traced graph per (size, rule): the same ops,
    without eager dispatch of each (7 ms → under 2 ms per 200x150 JPEG on this project's CPU)."""
    import tensorflow as tf

    from skin_tf.data.pipeline import decode_resize

    return tf.function(
        lambda data: decode_resize(data, image_size, resize),
        input_signature=[tf.TensorSpec([], tf.string)],
    )


def _to_rgb_uint8(image: Image.Image) -> np.ndarray:
    if image.mode in {"I;16", "I;16B", "I;16L", "I"}:
        # 16-bit (or 32-bit integer) greyscale: rescale the full range to 8 bits, not clip.
        values = np.asarray(image, dtype=np.float64)
        scale = 255.0 / 65535.0 if values.max(initial=0) > 255 else 1.0
        grey = np.clip(np.round(values * scale), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode == "F":
        grey = np.clip(np.round(np.asarray(image, dtype=np.float64)), 0, 255).astype(np.uint8)
        return np.repeat(grey[..., None], 3, axis=-1)
    if image.mode in {"RGBA", "LA", "PA"} or "transparency" in image.info:
        rgba = image.convert("RGBA")
        background = Image.new("RGBA", rgba.size, (255, 255, 255, 255))
        image = Image.alpha_composite(background, rgba)
    return np.asarray(image.convert("RGB"), dtype=np.uint8)
