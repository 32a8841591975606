"""The one resize behind `lite_reference_logits.npz`, shared by its script and the tests.

HAM10000 images are CC BY-NC and never committed, so the fixture keeps only each image's id and
the sha256 of its resized pixels: the tests rebuild those pixels from the data folder with the
same function and check the digest before comparing logits. Needs numpy and Pillow only (no
torch, no scikit-image), so the reference venv and the project's venv both run it.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path

import numpy as np
from PIL import Image


def reference_pixels(image: str | os.PathLike[str] | np.ndarray, size: int) -> np.ndarray:
    """Decode (a JPEG path) or take (a uint8 array) an RGB image; squash to size x size, bilinear.

    >>> reference_pixels(np.zeros((150, 200, 3), np.uint8), 224).shape
    (224, 224, 3)
    """
    with Image.fromarray(image) if isinstance(image, np.ndarray) else Image.open(image) as pil:
        resized = pil.convert("RGB").resize((size, size), Image.BILINEAR)
    return np.asarray(resized, dtype=np.uint8)


def pixel_sha256(pixels: np.ndarray) -> str:
    """sha256 of the uint8 pixels in C order: what the fixture records for each HAM10000 image."""
    return hashlib.sha256(np.ascontiguousarray(pixels, np.uint8).tobytes()).hexdigest()


def find_ham_images(root: Path, image_ids: list[str]) -> dict[str, Path]:
    """`<image_id>.jpg` anywhere under the HAM10000 folder (its images sit in subfolders)."""
    wanted = set(image_ids)
    found = {p.stem: p for p in sorted(Path(root).rglob("*.jpg")) if p.stem in wanted}
    if missing := sorted(wanted - found.keys()):
        raise FileNotFoundError(f"{', '.join(missing)}: no such .jpg under {root}")
    return found
