"""The image sets export compares out-of-distribution guards on, none of them test images:

- generated out-of-distribution *validation* images (`ood_validation_images`): what a guard must
  reject (training images cut into shuffled tiles or with swapped colour channels, random
  shapes, smooth colour fields, stripes and checks);
- benign shifts of the run's *validation* split (`benign_images`): what a guard must keep. Each
  family (`skin_tf.data.shifts`: lesion-centred crops, other sizes and framings, rotations,
  blur, JPEG re-compression, hair removal, brightness, colour constancy) is applied to the
  validation images as read from disk, at their own size, and the result resized to the model's
  input exactly as `serve` resizes any image (`skin_tf.serving.endpoints.resize_images`).

`skin_tf.serving.guard_choice` fits the candidates and chooses among them on these sets;
`benchmarks/bench_ood.py` builds the same benign families from the *test* split to check the
choice.

Example:
    >>> images = np.zeros((4, 32, 32, 3), np.uint8)
    >>> {k: v.shape for k, v in ood_validation_images(images, per_family=2).items()}["shapes"]
    (2, 32, 32, 3)
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

from skin_tf.data.shifts import BENIGN_FAMILIES, shift_image, shifted
from skin_tf.serving.engines import CheckImages, class_turns, run_fields

OOD_PER_FAMILY = 48
OOD_FAMILIES = ("tiles", "channel_swap", "shapes", "colour_fields", "stripes")
SPLITS = ("train", "val", "test")
BENIGN_PER_FAMILY = 500  # validation images each benign-shift family is made from (bounded: time)
_RESIZE_BATCH = 64


@dataclass(frozen=True)
class SourceImages:
    """A split's images as read from disk (RGB uint8, each at its own size), with their labels,
    a phrase saying where they come from and, for a run with patient fields, each image's
    encoded fields (which a shift of the image keeps)."""

    images: list[np.ndarray]
    labels: np.ndarray
    source: str
    fields: np.ndarray | None = None


# ---------------------------------------------------------------- benign shifts of a split


def run_guard_images(
    run_dir: str | os.PathLike,
    size: tuple[int, int],
    resize: str,
    data_root: str | os.PathLike | None,
    n_train: int,
    n_shifted: int,
) -> tuple[CheckImages, CheckImages | None, dict[str, CheckImages]]:
    """What export fits and thresholds a run's guard on, besides its validation images:
    (`n_train` training images drawn in turn from each class, through the pipeline; the same
    images read from disk with one benign shift each; every benign-shift family of `n_shifted`
    validation images). n_shifted=0: no shifts, (train, None, {}).

    Example:
        >>> train, shifted_train, shifted = run_guard_images(  # doctest: +SKIP
        ...     "runs/x", (96, 96), "squash", None, 2000, 500)
    """
    from skin_tf.serving.engines import run_images

    train = run_images(run_dir, "train", size, resize, data_root, n_train)
    if n_shifted <= 0:
        return train, None, {}
    sources = run_source_images(run_dir, "train", data_root, n_train)
    if not np.array_equal(sources.labels, train.labels):  # both draw the same rows
        raise ValueError(f"{run_dir}: the training images read twice differ; re-run export")
    shifted_train = one_shift_each(sources, size, resize)
    shifted = benign_images(run_source_images(run_dir, "val", data_root, n_shifted), size, resize)
    return train, shifted_train, shifted


def run_source_images(
    run_dir: str | os.PathLike,
    split: str,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> SourceImages:
    """A run's `split` images at their stored size (its splits.csv; files from `data_root` or
    the run's own data folder). `limit` keeps that many, drawn in turn from each class (seeded).

    Example:
        >>> run_source_images("runs/x", "val", limit=500).source  # doctest: +SKIP
        'val split of run x (500 of 1001 images, drawn in turn from each class)'
    """
    from skin_tf.data.ham10000 import resolve_data_root
    from skin_tf.data.images import read_rgb_image
    from skin_tf.data.splits import split_frames
    from skin_tf.runs import read_json, run_name_of

    run_dir = Path(run_dir)
    if split not in SPLITS:
        raise ValueError(f"unknown split {split!r}: one of {', '.join(SPLITS)}")
    if data_root is None:
        data_root = read_json(run_dir / "meta.json").get("data", {}).get("root")
    frame = split_frames(run_dir / "splits.csv", resolve_data_root(data_root))[split]
    if frame.empty:
        raise ValueError(f"the {split} split of {run_dir} has no images")
    total = len(frame)
    if limit is not None and limit < total:
        frame = frame.iloc[class_turns(frame["label"].to_numpy(), limit, seed)]
    which = (
        f"{len(frame)} of {total} images, drawn in turn from each class"
        if len(frame) < total
        else f"{total} images"
    )
    return SourceImages(
        [read_rgb_image(path) for path in frame["path"]],
        frame["label"].to_numpy(),
        f"{split} split of run {run_name_of(run_dir)} ({which})",
        run_fields(run_dir, frame),
    )


def benign_images(
    sources: SourceImages,
    size: tuple[int, int],
    resize: str,
    families: Sequence[str] = BENIGN_FAMILIES,
    seed: int = 0,
) -> dict[str, CheckImages]:
    """Each benign-shift family applied to `sources`, at the model's input `size` (height,
    width), resized with the model's rule as `serve` resizes any image; uint8, labelled.

    Example:
        >>> sources = SourceImages([np.zeros((150, 200, 3), np.uint8)], np.array([5]), "one")
        >>> benign_images(sources, (96, 96), "squash", ["rotation"])["rotation"].images.shape
        (1, 96, 96, 3)
    """
    return {
        family: CheckImages(
            to_model_input(shifted(sources.images, family, seed), size, resize),
            sources.labels,
            f"{sources.source}, {family} (skin_tf.data.shifts)",
            sources.fields,
        )
        for family in families
    }


def one_shift_each(
    sources: SourceImages,
    size: tuple[int, int],
    resize: str,
    families: Sequence[str] = BENIGN_FAMILIES,
    seed: int = 0,
) -> CheckImages:
    """Each image of `sources` changed by one benign-shift family, the families taken in turn
    (image i: families[i % len(families)], with its own seeded draw), at the model's input
    `size`: what the '+shifts' guards are fitted on besides the plain training images.

    Example:
        >>> sources = SourceImages([np.zeros((150, 200, 3), np.uint8)] * 3, np.arange(3), "3")
        >>> one_shift_each(sources, (64, 64), "squash").images.shape
        (3, 64, 64, 3)
    """
    if not families:
        raise ValueError("name at least one benign-shift family")
    shifted_images = (
        shift_image(image, families[i % len(families)], np.random.default_rng([seed, i]))
        for i, image in enumerate(sources.images)
    )
    return CheckImages(
        to_model_input(shifted_images, size, resize),
        sources.labels,
        f"{sources.source}, each with one benign shift ({', '.join(families)} in turn)",
        sources.fields,
    )


def to_model_input(images: Iterable[np.ndarray], size: tuple[int, int], resize: str) -> np.ndarray:
    """RGB images of any sizes → uint8 (N, height, width, 3) at the model's input `size`, with
    `serve`'s resize (`skin_tf.serving.endpoints.resize_images`, which rounds to whole pixel
    values, so uint8 holds them exactly). Consecutive images of one shape are resized as one
    batch (a family's images mostly share theirs), each the same as alone.

    Example:
        >>> to_model_input([np.zeros((40, 60, 3), np.uint8)], (32, 48), "squash").shape
        (1, 32, 48, 3)
    """
    from skin_tf.serving.endpoints import resize_images

    out: list[np.ndarray] = []
    batch: list[np.ndarray] = []

    def flush() -> None:
        if batch:
            out.append(resize_images(np.stack(batch), size, resize).numpy().astype(np.uint8))
            batch.clear()

    for image in images:
        image = np.asarray(image)
        if batch and (image.shape != batch[0].shape or len(batch) == _RESIZE_BATCH):
            flush()
        batch.append(image)
    flush()
    if not out:
        raise ValueError("no images to resize")
    return np.concatenate(out)


# ---------------------------------------------------------------- the generated OOD validation set


def ood_validation_images(
    train_images: np.ndarray, per_family: int = OOD_PER_FAMILY, seed: int = 0
) -> dict[str, np.ndarray]:
    """Out-of-distribution validation images (uint8, the size of `train_images`), per family.

    tiles: a training image cut into a 4x4 grid of tiles put back in random order (its colours
    and texture without its structure); channel_swap: a training image with its colour channels
    rotated (blue or green skin); shapes: random ellipses, rectangles and lines on a random
    background; colour_fields: a 3x3 grid of random colours smoothly interpolated; stripes:
    stripes or checks of two random colours at a random period and angle. Deterministic.
    """
    rng = np.random.default_rng(seed)
    train = np.asarray(train_images, np.uint8)
    size = train.shape[1:3]
    picks = rng.choice(len(train), size=per_family, replace=len(train) < per_family)
    families = {
        "tiles": np.stack([_tiles(train[i], rng) for i in picks]),
        "channel_swap": np.stack([np.roll(train[i], int(rng.integers(1, 3)), axis=-1)
                                  for i in picks]),
        "shapes": np.stack([_shapes(size, rng) for _ in range(per_family)]),
        "colour_fields": np.stack([_colour_field(size, rng) for _ in range(per_family)]),
        "stripes": np.stack([_stripes(size, rng) for _ in range(per_family)]),
    }  # fmt: skip
    return {name: families[name] for name in OOD_FAMILIES}


def _tiles(image: np.ndarray, rng: np.random.Generator, grid: int = 4) -> np.ndarray:
    rows, cols = image.shape[0] // grid, image.shape[1] // grid
    cells = [
        image[r : r + rows, c : c + cols]
        for r in range(0, rows * grid, rows)
        for c in range(0, cols * grid, cols)
    ]
    order = rng.permutation(len(cells))
    strips = [np.concatenate([cells[j] for j in order[k : k + grid]], axis=1)
              for k in range(0, len(cells), grid)]  # fmt: skip
    out = image.copy()
    out[: rows * grid, : cols * grid] = np.concatenate(strips, axis=0)
    return out


def _shapes(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    picture = Image.new("RGB", (width, height), tuple(int(v) for v in rng.integers(0, 256, 3)))
    draw = ImageDraw.Draw(picture)
    for _ in range(int(rng.integers(3, 9))):
        corners = np.sort(rng.integers(0, [width, height], (2, 2)), axis=0)  # rows: (x, y)
        box = [*corners[0].tolist(), *(corners[1] + 1).tolist()]  # x0, y0, x1, y1
        colour = tuple(int(v) for v in rng.integers(0, 256, 3))
        kind = int(rng.integers(3))
        if kind == 0:
            draw.ellipse(box, fill=colour)
        elif kind == 1:
            draw.rectangle(box, fill=colour)
        else:
            line = max(2, min(size) // 12)
            draw.line(box, fill=colour, width=int(rng.integers(1, line)))
    return np.asarray(picture)


def _colour_field(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    grid = Image.fromarray(rng.integers(0, 256, (3, 3, 3), dtype=np.uint8))
    return np.asarray(grid.resize((size[1], size[0]), Image.Resampling.BICUBIC))


def _stripes(size: tuple[int, int], rng: np.random.Generator) -> np.ndarray:
    height, width = size
    yy, xx = np.mgrid[0:height, 0:width].astype(np.float64)
    angle, period = rng.uniform(0, np.pi), rng.uniform(4, min(size) / 2)
    u = (xx * np.cos(angle) + yy * np.sin(angle)) / period
    v = (-xx * np.sin(angle) + yy * np.cos(angle)) / period
    on = (np.floor(u) % 2 == 0) if rng.random() < 0.5 else ((np.floor(u) + np.floor(v)) % 2 == 0)
    a, b = rng.integers(0, 256, (2, 3))
    return np.where(on[..., None], a, b).astype(np.uint8)
