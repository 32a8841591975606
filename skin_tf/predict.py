"""Command-line inference with an exported SavedModel: read images, predict, print or emit JSON.

Only the SavedModel and its metadata.json are used (`skin_tf.export.load_served`), never the Keras
training model, so what is printed here is what the Streamlit page and any other client get.

    skin-tf predict saved_models/b0 lesion.jpg more_images/ --top-k 3
    skin-tf predict saved_models/b0 lesion.jpg --json

Each file or upload goes through `prepare_image` (the Streamlit page uses it too): validated by
`read_rgb_image`, which says clearly why a file cannot be used ("not an image", "truncated/corrupt
JPEG", "too small …"), then decoded and resized by `skin_tf.pipeline.decode_resize` exactly as in
evaluation. A file that fails is reported on its own line; the others still run.

Example:
    >>> served = load_served("saved_models/b0")  # doctest: +SKIP
    >>> print(format_predictions(predict_files(served, ["lesion.jpg"])))  # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, BinaryIO

import numpy as np
from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from skin_tf.data import CLASSES, MEL_INDEX

if TYPE_CHECKING:
    from skin_tf.export import ServedModel

MIN_SIDE = 32  # EfficientNets need a few pixels per 32-px stride; smaller inputs mean nothing
# 40 megapixels: above any dermatoscope photo; keeps a decompression bomb from filling memory.
MAX_PIXELS = 40_000_000
# What skin_tf.pipeline.decode_resize decodes to the same picture as PIL.
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
    "not an image", "truncated/corrupt JPEG", "too small: 1x1 (min 32 px)",
    "too large: … pixels (max …)".

    Example:
        >>> read_rgb_image("ISIC_0024306.jpg").shape  # doctest: +SKIP
        (450, 600, 3)
    """
    return _decode_checked(source)[0]


def _decode_checked(source: str | os.PathLike | bytes | BinaryIO) -> tuple[np.ndarray, bool]:
    """(RGB uint8 pixels, whether TensorFlow's decoder would give the same picture)."""
    data = _read_bytes(source)
    try:
        image = Image.open(io.BytesIO(data))
    except UnidentifiedImageError:
        raise ImageError("not an image (no known image format)") from None
    except Image.DecompressionBombError as err:
        raise ImageError(f"too large: {err}") from None
    except (OSError, SyntaxError, ValueError) as err:  # the header itself is cut or damaged
        raise ImageError(f"truncated/corrupt {_sniff_format(data)} ({err})") from None
    with image:
        kind = image.format or "image"
        width, height = image.size
        if width * height > MAX_PIXELS:
            raise ImageError(f"too large: {width * height} pixels (max {MAX_PIXELS})")
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
        except (OSError, SyntaxError, ValueError) as err:
            raise ImageError(f"truncated/corrupt {kind} ({err})") from None
        finally:
            ImageFile.LOAD_TRUNCATED_IMAGES = previous


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
    via_pipeline: bool  # True: decoded and resized by skin_tf.pipeline.decode_resize


def prepare_image(
    source: str | os.PathLike | bytes | BinaryIO, image_size: int, resize: str = "squash"
) -> PreparedImage:
    """Validate and decode a file or upload the way evaluation did; raises `ImageError`.

    Images TensorFlow decodes the same way as PIL (JPEG/PNG/GIF/BMP/WebP, RGB or grey, no EXIF
    rotation) go through `skin_tf.pipeline.decode_resize`, exactly as in training and evaluation
    (including the DCT-domain downscaling of large JPEGs). Others (CMYK, 16-bit, alpha, TIFF,
    rotated photos) use PIL's pixels, which the model's `serve` endpoint resizes with the same
    rule. The CLI and the Streamlit page both call this.

    Example:
        >>> prepared = prepare_image("lesion.jpg", 224)  # doctest: +SKIP
        >>> served.predict(prepared.model_input)  # doctest: +SKIP
    """
    from skin_tf.pipeline import decode_resize

    data = _read_bytes(source)
    original, tf_decodable = _decode_checked(data)
    if not tf_decodable:
        return PreparedImage(original, original, via_pipeline=False)
    import tensorflow as tf

    try:
        pixels = decode_resize(tf.constant(data, tf.string), image_size, resize).numpy()
    except tf.errors.InvalidArgumentError:  # PIL read it but TensorFlow's decoder refuses
        return PreparedImage(original, original, via_pipeline=False)
    return PreparedImage(original, pixels, via_pipeline=True)


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


def expand_image_paths(arguments: Iterable[str | os.PathLike]) -> list[Path]:
    """Files as given, and folders expanded to the image files directly inside them (sorted).

    Files are kept whatever their suffix (a wrong file is then reported, not skipped); a
    missing path is kept too, so it gets its own "file not found" line.
    """
    paths: list[Path] = []
    for argument in arguments:
        path = Path(argument)
        if path.is_dir():
            inside = sorted(
                p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES
            )
            if not inside:
                raise ValueError(
                    f"folder {path} has no image files ({', '.join(sorted(IMAGE_SUFFIXES))})"
                )
            paths.extend(inside)
        else:
            paths.append(path)
    return paths


def predict_files(
    served: ServedModel, paths: Iterable[str | os.PathLike], top_k: int = 3
) -> list[dict[str, Any]]:
    """Predict every image file (folders expand to their images); one dict per file, in order.

    Each dict has: image, probs {class: p}, top [(class, p), … top_k], top_class, mel_flag
    (P(mel) ≥ the model's operating threshold; None when the model has no threshold, with `note`
    saying so) and error (None, or why the file could not be read; then probs etc. are None).

    Example:
        >>> [r["top_class"] for r in predict_files(served, ["a.jpg", "b.jpg"])]  # doctest: +SKIP
        ['nv', 'mel']
    """
    if not 1 <= top_k <= len(CLASSES):
        raise ValueError(f"top_k must be between 1 and {len(CLASSES)}, got {top_k}")
    size, resize = served.image_size[0], served.resize
    results: list[dict[str, Any]] = []
    for path in expand_image_paths(paths):
        try:
            if not path.is_file():
                raise ImageError("file not found" if not path.exists() else "not a file")
            prepared = prepare_image(path, size, resize)
        except ImageError as err:
            results.append(_error_result(path, str(err)))
            continue
        except OSError as err:  # unreadable file (permissions, …)
            results.append(_error_result(path, f"cannot read file ({err.strerror or err})"))
            continue
        # One image per call: images differ in size until resized.
        probs = served.predict(prepared.model_input)[0]
        results.append(_result(path, probs, served.threshold, top_k))
    return results


def _result(path: Path, probs: np.ndarray, threshold: float | None, top_k: int) -> dict[str, Any]:
    order = np.argsort(-probs, kind="stable")[:top_k]
    p_mel = float(probs[MEL_INDEX])
    return {
        "image": str(path),
        "probs": {c: float(p) for c, p in zip(CLASSES, probs, strict=True)},
        "top": [(CLASSES[i], float(probs[i])) for i in order],
        "top_class": CLASSES[int(order[0])],
        "mel_flag": None if threshold is None else bool(p_mel >= threshold),
        "note": None if threshold is not None else "model has no melanoma operating threshold",
        "error": None,
    }


def _error_result(path: Path, message: str) -> dict[str, Any]:
    return {
        "image": str(path),
        "probs": None,
        "top": None,
        "top_class": None,
        "mel_flag": None,
        "note": None,
        "error": message,
    }


def format_predictions(
    results: Sequence[dict[str, Any]], json: bool = False, threshold: float | None = None
) -> str:
    """Human-readable lines per image, or (json=True) one JSON object per line.

    Example of the text form (one line per image):
        ISIC_0024306.jpg: nv 0.912 | mel 0.051 | bkl 0.020 | melanoma flag: no
        (P(mel) 0.051 < 0.312)
    """
    if json:
        return "\n".join(_json_line(r) for r in results)
    lines = []
    for r in results:
        if r["error"] is not None:
            lines.append(f"{r['image']}: ERROR {r['error']}")
            continue
        top = " | ".join(f"{c} {p:.3f}" for c, p in r["top"])
        p_mel = r["probs"]["mel"]
        if r["mel_flag"] is None:
            flag = "melanoma flag: n/a (model has no operating threshold)"
        else:
            relation = ">=" if r["mel_flag"] else "<"
            at = "" if threshold is None else f" {relation} {threshold:.3f}"
            flag = f"melanoma flag: {'YES' if r['mel_flag'] else 'no'} (P(mel) {p_mel:.3f}{at})"
        lines.append(f"{r['image']}: {top} | {flag}")
    return "\n".join(lines)


def _json_line(result: dict[str, Any]) -> str:
    record = dict(result)
    if record["top"] is not None:
        record["top"] = [{"class": c, "p": p} for c, p in record["top"]]
    return json.dumps(record)
