"""Synthetic HAM10000-layout folders for fast unit tests (never instead of real data)."""

from __future__ import annotations

import csv
from pathlib import Path

import numpy as np
from PIL import Image

CLASSES = ("akiec", "bcc", "bkl", "df", "mel", "nv", "vasc")
COLUMNS = ["lesion_id", "image_id", "dx", "dx_type", "age", "sex", "localization"]


def make_fake_ham10000(
    root: Path,
    per_class: int = 4,
    images_per_lesion: int = 2,
    size: tuple[int, int] = (200, 150),
    layout: str = "images",
    fmt: str = "jpg",
    dataverse: bool = False,
    seed: int = 0,
) -> Path:
    """Write `per_class` images of each class plus a metadata CSV below `root`; return `root`.

    layout: "images" (one images/ folder), "parts" (HAM10000_images_part_1/_part_2),
    "parts_lower" (ham10000_images_part_1/_part_2), "kaggle" (both letter cases, every image
    twice, as the Kaggle download ships) or "nested" (images a few folders deep). size is
    (width, height). Each class gets its own mean colour so a model can tell them apart.
    dataverse=True adds the Dataverse CSV's extra `dataset` column.
    """
    rng = np.random.default_rng(seed)
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    rows = []
    n = 0
    for c, dx in enumerate(CLASSES):
        for i in range(per_class):
            image_id = f"ISIC_{9000000 + n:07d}"
            lesion_id = f"HAM_{c:02d}{i // images_per_lesion:05d}"
            if layout == "images":
                folder = root / "images"
            elif layout in ("parts", "parts_lower", "kaggle"):
                part = "HAM10000_images_part_1" if n % 2 == 0 else "HAM10000_images_part_2"
                folder = root / (part.lower() if layout == "parts_lower" else part)
            elif layout == "nested":
                folder = root / "downloads" / "ham" / f"batch{n % 3}"
            else:
                raise ValueError(f"unknown layout {layout!r}")
            folder.mkdir(parents=True, exist_ok=True)
            base = np.array([30 + 30 * c, 200 - 25 * c, 120], dtype=np.float32)
            pixels = base + rng.normal(0, 20, size=(size[1], size[0], 3))
            img = Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8))
            img.save(folder / f"{image_id}.{fmt}")
            if layout == "kaggle":
                twin = root / folder.name.lower()
                twin.mkdir(exist_ok=True)
                (twin / f"{image_id}.{fmt}").write_bytes(
                    (folder / f"{image_id}.{fmt}").read_bytes()
                )
            row = {
                "lesion_id": lesion_id,
                "image_id": image_id,
                "dx": dx,
                "dx_type": "histo",
                "age": str(float(20 + n % 60)),
                "sex": "male" if n % 2 else "female",
                "localization": "back",
            }
            if dataverse:
                row["dataset"] = "vidir_modern"
            rows.append(row)
            n += 1
    columns = COLUMNS + (["dataset"] if dataverse else [])
    with open(root / "HAM10000_metadata.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        writer.writeheader()
        writer.writerows(rows)
    return root


def small_classifier(hw: tuple[int, int] = (32, 48), metadata_width: int = 0, seed: int = 0):
    """A softmax classifier of a few layers in `build_classifier`'s layout (an `image` input,
    a `metadata` one when metadata_width > 0, a Dense softmax head): for tests of what runs a
    model, which a Lite0 would only make slower to trace and convert."""
    import keras

    from skin_tf.models.meta_fusion import META_INPUT

    keras.utils.set_random_seed(seed)
    image = keras.Input((*hw, 3), name="image")
    x = keras.layers.Rescaling(1.0 / 255.0)(image)
    x = keras.layers.Conv2D(8, 3, strides=2, activation="relu")(x)
    x = keras.layers.Conv2D(16, 3, strides=2, activation="relu")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    inputs = image
    if metadata_width:
        fields = keras.Input((metadata_width,), name=META_INPUT)
        x = keras.layers.Concatenate()([x, keras.layers.Dense(8, activation="relu")(fields)])
        inputs = {"image": image, META_INPUT: fields}
    outputs = keras.layers.Dense(7, activation="softmax", name="predictions")(x)
    return keras.Model(inputs, outputs)
