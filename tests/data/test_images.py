"""Images a user hands in: read, converted to RGB, oriented, refused with a clear reason."""

from __future__ import annotations

import io
import struct
import zlib
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from skin_tf.data import images
from skin_tf.data.images import ImageError, prepare_image, read_rgb_image
from skin_tf.data.pipeline import load_image


def encoded(image: Image.Image, fmt: str, **options) -> bytes:
    buffer = io.BytesIO()
    image.save(buffer, format=fmt, **options)
    return buffer.getvalue()


def rgb(height: int = 48, width: int = 64, seed: int = 0) -> Image.Image:
    pixels = np.random.default_rng(seed).integers(0, 256, (height, width, 3), dtype=np.uint8)
    return Image.fromarray(pixels)


DAMAGED_FIX = "re-export or re-download it"  # what to do, instead of PIL's "… not processed"


def png_header(width: int, height: int) -> bytes:
    """The first bytes of a `width`x`height` 8-bit RGB PNG (signature, IHDR, the start of one IDAT
    chunk): what a decompression bomb or a huge scan shows before its pixels are decoded."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    ihdr = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", ihdr) + chunk(b"IDAT", zlib.compress(b"\0" * 64))


# ---------------------------------------------------------------- read_rgb_image


def test_reads_paths_bytes_and_file_objects(tmp_path):
    data = encoded(rgb(), "PNG")
    (tmp_path / "a.png").write_bytes(data)
    from_path = read_rgb_image(tmp_path / "a.png")
    assert from_path.shape == (48, 64, 3) and from_path.dtype == np.uint8
    np.testing.assert_array_equal(from_path, np.asarray(rgb()))
    np.testing.assert_array_equal(read_rgb_image(data), from_path)
    np.testing.assert_array_equal(read_rgb_image(io.BytesIO(data)), from_path)


def test_converts_grey_alpha_cmyk_and_16_bit():
    grey = read_rgb_image(encoded(Image.new("L", (40, 40), 90), "PNG"))
    assert grey.shape == (40, 40, 3) and (grey == 90).all()
    clear = read_rgb_image(encoded(Image.new("RGBA", (40, 40), (255, 0, 0, 0)), "PNG"))
    assert (clear == 255).all()  # fully transparent: the white background shows
    cmyk = read_rgb_image(encoded(Image.new("CMYK", (40, 40), (0, 255, 255, 0)), "JPEG"))
    assert cmyk.shape == (40, 40, 3) and cmyk[..., 0].mean() > 200 and cmyk[..., 1].mean() < 60
    deep = Image.fromarray(np.full((40, 40), 65535, np.uint16))
    assert (read_rgb_image(encoded(deep, "PNG")) == 255).all()
    palette = read_rgb_image(encoded(rgb().convert("P"), "GIF"))
    assert palette.shape == (48, 64, 3)


def test_applies_exif_orientation():
    exif = Image.Exif()
    exif[0x0112] = 6  # rotated 90° clockwise
    pixels = read_rgb_image(encoded(rgb(48, 64), "JPEG", exif=exif))
    assert pixels.shape == (64, 48, 3)


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (b"", "empty file (0 bytes)"),
        (b"hello, this is text\n" * 10, "not an image (no known image format)"),
        (encoded(rgb(1, 1), "PNG"), "too small: 1x1 (min 32 px)"),
        (encoded(rgb(20, 200), "PNG"), "too small: 200x20 (min 32 px)"),
        # cut files: JPEGs at 300 and 12 bytes, a PNG without its last 40
        (encoded(rgb(), "JPEG")[:300], f"truncated or damaged JPEG file: {DAMAGED_FIX}"),
        (encoded(rgb(), "PNG")[:-40], f"truncated or damaged PNG file: {DAMAGED_FIX}"),
        (encoded(rgb(), "JPEG")[:12], f"truncated or damaged JPEG file: {DAMAGED_FIX}"),
    ],
)
def test_bad_input_gets_a_clear_message(data, message):
    with pytest.raises(ImageError) as raised:
        read_rgb_image(data)
    assert str(raised.value) == message


@pytest.mark.filterwarnings("error::PIL.Image.DecompressionBombWarning")  # refused, silently
@pytest.mark.parametrize(
    ("side", "message"),
    [
        # Over MAX_PIXELS: refused by skin_tf from the header, before any pixel is decoded.
        (12_000, "too large: 144 megapixels (max 40 megapixels)"),
        # Over PIL's own bomb limit (2 x 89.5 Mpx): refused by PIL while it reads the header.
        (20_000, "too large: 400 megapixels (max 40 megapixels)"),
        (6_325, "too large: 40.1 megapixels (max 40 megapixels)"),  # 40,005,625 px: just over
    ],
)
def test_too_large_is_refused_from_the_header_in_megapixels(side, message):
    with pytest.raises(ImageError) as raised:
        read_rgb_image(png_header(side, side))
    assert str(raised.value) == message


def test_megapixels_round_up_and_never_use_scientific_notation():
    assert images.megapixels(40_000_000) == "40"
    assert images.megapixels(144_000_000) == "144"
    assert images.megapixels(2**31 * 2**31) == "4,611,686,018,427.4"
    assert images.too_large_message(None) == (
        "too large: over 179 megapixels (max 40 megapixels)"  # PIL's limit, size unknown
    )


@pytest.mark.slow
@pytest.mark.parametrize("kept", [0.5, 0.9, 0.05])
def test_a_truncated_real_jpeg_is_named_as_damaged(real_data_root: Path, kept: float):
    data = (real_data_root / "images" / "ISIC_0024306.jpg").read_bytes()
    with pytest.raises(ImageError) as raised:
        read_rgb_image(data[: int(len(data) * kept)])
    assert str(raised.value) == "truncated or damaged JPEG file: re-export or re-download it"


def test_prepare_image_uses_the_pipeline_for_plain_files(tmp_path):
    path = tmp_path / "lesion.jpg"
    path.write_bytes(encoded(rgb(150, 200), "JPEG", quality=90))
    prepared = prepare_image(path, 64)
    assert prepared.via_pipeline
    np.testing.assert_array_equal(prepared.model_input, load_image(path, 64))
    assert prepared.original.shape == (150, 200, 3)
    # CMYK is read by PIL only; the exported model then resizes the pixels itself.
    cmyk = prepare_image(encoded(rgb(40, 50).convert("CMYK"), "JPEG"), 64)
    assert not cmyk.via_pipeline and cmyk.model_input.shape == (40, 50, 3)
