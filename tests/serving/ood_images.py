"""The out-of-distribution *test* images: what the guard must reject, built deterministically at
test time, never committed as pixels.

Families (`build_ood_set`):

- `photos`: scikit-image's bundled sample images (a dev dependency; `skimage.data`), each whole
  and as its four quadrants. Licences, from their docstrings in scikit-image 0.26: astronaut,
  rocket, hubble_deep_field and clock public domain; camera, chelsea, coffee, horse, brick, grass,
  gravel and retina CC0; coins and immunohistochemistry "no known copyright restrictions". Two
  are medical pictures that are not dermatoscopy: a fundus photograph (retina) and a stained
  tissue section (immunohistochemistry).
- `documents`: text pages and tables of numbers rendered with Pillow's bundled font.
- `flat_colours`, `gradients`, `noise`: generated with numpy from fixed seeds.
- `skin_crops`, `greyscale`, `inverted`: HAM10000 test-split images listed by id in
  `ood_manifest.json` (a 48x48 corner of plain skin; the whole image in grey; its negative),
  made from the data folder at test time (HAM10000 is CC BY-NC: only ids are committed).

None of these families is among the generated out-of-distribution *validation* images on which
export chooses the guard's method (`skin_tf.serving.guard_choice.ood_validation_images`).

    >>> images = synthetic_families()
    >>> sorted(images), len(images["flat_colours"])
    (['documents', 'flat_colours', 'gradients', 'noise'], 12)
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw, ImageFont

MANIFEST = Path(__file__).with_name("ood_manifest.json")
PHOTOS = (
    "astronaut", "camera", "chelsea", "coffee", "rocket", "hubble_deep_field", "coins", "clock",
    "horse", "brick", "grass", "gravel", "retina", "immunohistochemistry",
)  # fmt: skip
SYNTHETIC = ("documents", "flat_colours", "gradients", "noise")
HAM_FAMILIES = ("skin_crops", "greyscale", "inverted")
FAMILIES = ("photos", *SYNTHETIC, *HAM_FAMILIES)
SIZE = (200, 150)  # (width, height) of the generated images: the HAM10000 copy's shape


@dataclass(frozen=True)
class OodImage:
    """One out-of-distribution test image: RGB uint8 pixels with a name saying what it is."""

    name: str
    family: str
    pixels: np.ndarray


def build_ood_set(data_root: str | os.PathLike | None) -> dict[str, list[OodImage]]:
    """Every family: the photos (scikit-image), the synthetic ones, and, when `data_root` (the
    HAM10000 folder) is given, the three made from HAM10000 images."""
    families = {"photos": photos(), **synthetic_families()}
    if data_root is not None:
        families.update(ham_families(data_root))
    return families


def as_rgb(pixels: np.ndarray) -> np.ndarray:
    """uint8 (H, W, 3) of a grey, boolean, RGBA or float image."""
    array = np.asarray(pixels)
    if array.dtype == bool:
        array = array.astype(np.uint8) * 255
    elif array.dtype != np.uint8:
        array = np.clip(np.round(array * 255 if array.max() <= 1 else array), 0, 255)
        array = array.astype(np.uint8)
    if array.ndim == 2:
        array = np.repeat(array[..., None], 3, axis=-1)
    return array[..., :3]


# ---------------------------------------------------------------- scikit-image photos


def photos() -> list[OodImage]:
    """Each of PHOTOS whole and as its four quadrants (70 images)."""
    import skimage.data

    out = []
    for name in PHOTOS:
        image = as_rgb(getattr(skimage.data, name)())
        out.append(OodImage(name, "photos", image))
        h, w = image.shape[0] // 2, image.shape[1] // 2
        for label, (r, c) in {"tl": (0, 0), "tr": (0, w), "bl": (h, 0), "br": (h, w)}.items():
            out.append(OodImage(f"{name}_{label}", "photos", image[r : r + h, c : c + w].copy()))
    return out


# ---------------------------------------------------------------- generated families


def synthetic_families() -> dict[str, list[OodImage]]:
    return {
        "documents": documents(),
        "flat_colours": flat_colours(),
        "gradients": gradients(),
        "noise": noise(),
    }


_WORDS = (
    "the", "quick", "brown", "fox", "jumps", "over", "lazy", "dog", "invoice", "total", "amount",
    "due", "date", "patient", "record", "page", "summary", "results", "method", "table", "figure",
    "number", "reference", "account", "report",
)  # fmt: skip


def documents(n: int = 12, seed: int = 0) -> list[OodImage]:
    """Text pages in several type sizes and ink and paper colours, and tables of numbers
    (Pillow's bundled font, so the pixels depend only on the Pillow version)."""
    rng = np.random.default_rng(seed)
    papers = [(255, 255, 255), (250, 246, 232), (235, 235, 235), (255, 255, 240)]
    inks = [(0, 0, 0), (20, 30, 120), (60, 60, 60), (120, 0, 0)]
    out = []
    for i in range(n):
        width, height = (400, 560) if i % 3 else (600, 450)
        page = Image.new("RGB", (width, height), papers[i % len(papers)])
        draw = ImageDraw.Draw(page)
        size = int(rng.integers(12, 30))
        font = ImageFont.load_default(size=size)
        ink = inks[i % len(inks)]
        y = 20
        if i % 4 == 3:  # a table: grid lines and numbers
            for _row in range(12):
                draw.line([(20, y), (width - 20, y)], fill=ink, width=1)
                for col in range(4):
                    x = 30 + col * (width - 40) // 4
                    draw.text((x, y + 4), f"{rng.integers(0, 10000):,}", fill=ink, font=font)
                y += size + 12
        else:
            while y < height - size:
                words = rng.choice(_WORDS, size=int(rng.integers(3, 9)))
                draw.text((20, y), " ".join(words), fill=ink, font=font)
                y += int(size * 1.5)
        out.append(OodImage(f"document_{i:02d}", "documents", np.asarray(page)))
    return out


def flat_colours() -> list[OodImage]:
    """Single-colour images, skin tones among them."""
    colours = {
        "white": (255, 255, 255), "black": (0, 0, 0), "grey": (128, 128, 128),
        "red": (220, 30, 30), "green": (30, 160, 60), "blue": (30, 60, 200),
        "yellow": (240, 220, 40), "purple": (120, 40, 160), "pink": (240, 180, 190),
        "light_skin": (233, 190, 170), "tan_skin": (200, 150, 120), "brown": (110, 70, 50),
    }  # fmt: skip
    width, height = SIZE
    return [
        OodImage(f"flat_{name}", "flat_colours", np.full((height, width, 3), rgb, np.uint8))
        for name, rgb in colours.items()
    ]


def gradients(n: int = 12, seed: int = 1) -> list[OodImage]:
    """Linear (horizontal, vertical, diagonal) and radial gradients between two random colours."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height - 1, width - 1])[:, None, None]
    ramps = {
        "horizontal": xx, "vertical": yy, "diagonal": (xx + yy) / 2,
        "radial": np.clip(np.hypot(xx - 0.5, yy - 0.5) / 0.71, 0, 1),
    }  # fmt: skip
    out = []
    for i in range(n):
        kind = list(ramps)[i % len(ramps)]
        a, b = rng.integers(0, 256, (2, 3))
        pixels = a + (b - a) * ramps[kind][..., None]
        out.append(OodImage(f"gradient_{kind}_{i:02d}", "gradients", pixels.astype(np.uint8)))
    return out


def noise(n: int = 12, seed: int = 2) -> list[OodImage]:
    """Uniform RGB noise, Gaussian noise around a random colour, salt and pepper, and blurred
    (low-frequency) colour noise, three of each."""
    rng = np.random.default_rng(seed)
    width, height = SIZE
    out = []
    for i in range(n):
        kind = ("uniform", "gaussian", "salt_pepper", "blurred")[i % 4]
        if kind == "uniform":
            pixels = rng.integers(0, 256, (height, width, 3))
        elif kind == "gaussian":
            pixels = rng.normal(rng.integers(60, 200, 3), 40, (height, width, 3))
        elif kind == "salt_pepper":
            pixels = np.where(rng.random((height, width, 1)) < 0.5, 0, 255).repeat(3, axis=-1)
        else:
            small = rng.integers(0, 256, (height // 10, width // 10, 3), dtype=np.uint8)
            pixels = np.asarray(Image.fromarray(small).resize(SIZE, Image.Resampling.BILINEAR))
        pixels = np.clip(pixels, 0, 255).astype(np.uint8)
        out.append(OodImage(f"noise_{kind}_{i:02d}", "noise", pixels))
    return out


# ---------------------------------------------------------------- from HAM10000, by id


def ham_families(data_root: str | os.PathLike) -> dict[str, list[OodImage]]:
    """The manifest's HAM10000 images made into non-lesions: corner crops of plain skin,
    greyscale copies, negatives."""
    manifest = json.loads(MANIFEST.read_text())
    side = int(manifest["crop_side"])
    ids = [i for i, _ in manifest["skin_crops"]] + manifest["greyscale"] + manifest["inverted"]
    paths = find_images(Path(data_root), ids)
    crops = []
    for image_id, corner in manifest["skin_crops"]:
        image = read(paths[image_id])
        r = 0 if corner[0] == "t" else image.shape[0] - side
        c = 0 if corner[1] == "l" else image.shape[1] - side
        crops.append(
            OodImage(f"{image_id}_{corner}", "skin_crops", image[r : r + side, c : c + side])
        )
    greys = []
    for image_id in manifest["greyscale"]:
        grey = np.asarray(Image.fromarray(read(paths[image_id])).convert("L"))
        greys.append(OodImage(f"{image_id}_grey", "greyscale", as_rgb(grey)))
    inverted = [
        OodImage(f"{image_id}_inverted", "inverted", 255 - read(paths[image_id]))
        for image_id in manifest["inverted"]
    ]
    return {"skin_crops": crops, "greyscale": greys, "inverted": inverted}


def find_images(root: Path, image_ids: list[str]) -> dict[str, Path]:
    """`<image_id>.jpg` under the HAM10000 folder (its images may sit in subfolders)."""
    wanted = set(image_ids)
    found = {p.stem: p for p in sorted(root.rglob("*.jpg")) if p.stem in wanted}
    if missing := sorted(wanted - found.keys()):
        raise FileNotFoundError(f"{', '.join(missing)}: no such .jpg under {root}")
    return found


def read(path: Path) -> np.ndarray:
    with Image.open(path) as image:
        return np.asarray(image.convert("RGB"))
