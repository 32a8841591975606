"""Images/second of the skin_tf input pipeline against a PIL + Python-generator baseline.

Run from the repository root (2-3 minutes on 2 CPU cores with the defaults):

    .venv/bin/python benchmarks/bench_pipeline.py --data-root ../shared/data/ham10000

It measures, at --image-size with the default training augmentation, on a random subset of the
shared 200×150 JPEGs and on 600×450 JPEG copies of it (bicubic upscales made in a temp folder):
  - baseline: PIL open + resize + numpy augment per image in a Python generator, fed through
    tf.data.Dataset.from_generator (the kind of loader the PyTorch reference used);
  - ours, uncached: make_dataset(..., cache=False): read, decode (DCT-downscaled), resize, augment;
  - ours, cached, epochs 2+: make_dataset(..., cache=True): decoded uint8 from memory, augment;
  - on 600×450 only: augmentation variants on the cache, and decode + resize on their own.
Each figure is the best of --repeats passes, each timed from its first batch on (tracing and the
shuffle-buffer fill excluded). Results and the command go in benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import pandas as pd
import tensorflow as tf
from PIL import Image

from skin_tf.data.augment import AugmentConfig, augment_batch
from skin_tf.data.ham10000 import read_metadata
from skin_tf.data.pipeline import AUTOTUNE, decode_resize, make_dataset


def load_subset(data_root: Path, count: int, seed: int) -> pd.DataFrame:
    """`count` random rows of read_metadata(data_root) (paths and label indices included)."""
    frame = read_metadata(data_root)
    return frame.sample(n=min(count, len(frame)), random_state=seed).reset_index(drop=True)


def make_large_copies(frame: pd.DataFrame, folder: Path, quality: int) -> pd.DataFrame:
    """600×450 JPEG copies (bicubic upscale of the 200×150 images) standing in for originals."""
    paths = []
    for path in frame["path"]:
        target = folder / Path(path).name
        with Image.open(path) as image:
            image.convert("RGB").resize((600, 450), Image.BICUBIC).save(target, quality=quality)
        paths.append(str(target))
    return frame.assign(path=paths)


def images_per_second(
    dataset: tf.data.Dataset, warmup_epochs: int = 0, repeats: int = 2
) -> tuple[float, float]:
    """(images per wall-clock second, images per CPU-second of this process): the best of
    `repeats` timed passes, after `warmup_epochs` untimed ones (which fill caches).

    Each pass starts its clock after its first batch (tracing, shuffle-buffer fill). The CPU
    figure counts every thread of this process and is steadier when other jobs share the cores;
    on idle cores the wall figure approaches it times the cores the pipeline can keep busy."""
    for _ in range(warmup_epochs):
        for _ in dataset:
            pass
    best = (0.0, 0.0)
    for _ in range(repeats):
        iterator = iter(dataset)
        next(iterator)
        count, wall, cpu = 0, time.perf_counter(), time.process_time()
        for images, _ in iterator:
            count += int(images.shape[0])
        rates = (count / (time.perf_counter() - wall), count / (time.process_time() - cpu))
        best = max(best, rates)
    return best


def baseline_dataset(frame: pd.DataFrame, size: int, batch: int, seed: int) -> tf.data.Dataset:
    """PIL open + squash resize + numpy flips/rot90/brightness/contrast, one image at a time."""
    paths, labels = frame["path"].tolist(), frame["label"].to_numpy()

    def generate():
        rng = np.random.default_rng(seed)
        for i in rng.permutation(len(paths)):
            with Image.open(paths[i]) as image:
                pixels = np.asarray(image.convert("RGB").resize((size, size), Image.BILINEAR))
            if rng.random() < 0.5:
                pixels = pixels[:, ::-1]
            if rng.random() < 0.5:
                pixels = pixels[::-1]
            pixels = np.rot90(pixels, rng.integers(4)).astype(np.float32)
            pixels *= rng.uniform(0.9, 1.1)  # brightness
            mean = pixels.mean()
            pixels = (pixels - mean) * rng.uniform(0.9, 1.1) + mean  # contrast
            yield np.clip(pixels, 0, 255), labels[i]

    signature = (
        tf.TensorSpec((size, size, 3), tf.float32),
        tf.TensorSpec((), tf.int64),
    )
    ds = tf.data.Dataset.from_generator(generate, output_signature=signature)
    return ds.batch(batch).prefetch(AUTOTUNE)


def per_image_dataset(frame: pd.DataFrame, size: int, batch: int, seed: int) -> tf.data.Dataset:
    """Our pipeline with augmentation placed before batching (one image per call)."""
    config = AugmentConfig()
    ds = tf.data.Dataset.from_tensor_slices((frame["path"].to_numpy(), frame["label"].to_numpy()))
    ds = ds.map(lambda p, y: (decode_resize(tf.io.read_file(p), size), y), AUTOTUNE).cache()
    ds = ds.shuffle(len(frame), seed=seed)
    keys = tf.data.Dataset.random(seed=seed, rerandomize_each_iteration=True)
    ds = tf.data.Dataset.zip(ds, keys).map(
        lambda xy, key: (augment_batch(xy[0][None], config, tf.stack([key, 0]))[0], xy[1]),
        AUTOTUNE,
    )
    return ds.batch(batch).prefetch(AUTOTUNE)


def decode_only(frame: pd.DataFrame, size: int, batch: int, dct: bool) -> tf.data.Dataset:
    """Read + decode + resize only: decode_resize (DCT-scaled) vs a full decode then resize."""

    def full(path):
        image = tf.io.decode_jpeg(tf.io.read_file(path), channels=3)
        return tf.cast(tf.round(tf.image.resize(image, [size, size], antialias=True)), tf.uint8)

    def scaled(path):
        return decode_resize(tf.io.read_file(path), size)

    ds = tf.data.Dataset.from_tensor_slices(frame["path"].to_numpy())
    ds = ds.map(scaled if dct else full, AUTOTUNE).batch(batch)
    return ds.map(lambda x: (x, 0)).prefetch(AUTOTUNE)


def loaders(frame: pd.DataFrame, name: str, args: argparse.Namespace):
    """(row label, dataset, untimed warm-up epochs) for one image set."""
    size, batch, seed = args.image_size, args.batch_size, args.seed

    def ours(**options) -> tf.data.Dataset:
        return make_dataset(frame, size, True, batch, seed=seed, **options)

    cached = "ours, cached, epochs 2+"
    no_colour = AugmentConfig(brightness=0, contrast=0, saturation=0, hue=0)
    yield (
        "baseline: PIL + numpy in a Python generator",
        baseline_dataset(frame.iloc[: args.baseline_images], size, batch, seed),
        0,
    )
    yield "ours, uncached", ours(cache=False), 0
    yield cached, ours(), 1
    if name == "200x150":
        return  # the variants below only differ in what happens after the cache
    yield f"{cached}, augment per image", per_image_dataset(frame, size, batch, seed), 1
    yield f"{cached}, + rotation ±15°", ours(augment=AugmentConfig(rotation_degrees=15)), 1
    yield f"{cached}, no colour jitter", ours(augment=no_colour), 1
    yield f"{cached}, no augmentation", ours(augment=None), 1
    yield "decode+resize only: decode_resize (DCT ratio)", decode_only(frame, size, batch, True), 0
    yield (
        "decode+resize only: full decode, antialiased resize",
        decode_only(frame, size, batch, False),
        0,
    )


def run(args: argparse.Namespace) -> list[dict]:
    subset = load_subset(args.data_root, args.images, args.seed)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        sets = {
            "200x150": subset,
            "600x450": make_large_copies(subset, Path(tmp), args.jpeg_quality),
        }
        for name, frame in sets.items():
            mean_kb = np.mean([os.path.getsize(p) for p in frame["path"]]) / 1024
            print(f"{name}: {len(frame)} images, mean JPEG {mean_kb:.0f} KB", flush=True)
            for loader, dataset, warmup in loaders(frame, name, args):
                rate, cpu_rate = images_per_second(dataset, warmup, args.repeats)
                rows.append({"images": name, "loader": loader, "img/s": rate, "cpu": cpu_rate})
                print(f"  {loader:52s} {rate:7.0f} img/s {cpu_rate:7.0f} img/CPU-s", flush=True)
    return rows


def print_table(rows: list[dict]) -> None:
    """Each row against the baseline loader measured in the same run (no figure from elsewhere)."""
    print("\n| images | loader | img/s | × baseline | img/CPU-s |")
    print("|---|---|---:|---:|---:|")
    for row in rows:
        base = next(r["img/s"] for r in rows if r["images"] == row["images"])
        print(
            f"| {row['images']} | {row['loader']} | {row['img/s']:.0f} | "
            f"{row['img/s'] / base:.1f} | {row['cpu']:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument("--images", type=int, default=1500, help="subset size per image set")
    parser.add_argument("--baseline-images", type=int, default=600, help="baseline is slow")
    parser.add_argument("--image-size", type=int, default=224)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--jpeg-quality", type=int, default=95, help="of the 600x450 copies")
    parser.add_argument("--repeats", type=int, default=2, help="timed passes; the best counts")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    load = os.getloadavg()
    print(f"TensorFlow {tf.__version__}, {os.cpu_count()} CPUs, load average before {load[0]:.2f}")
    start = time.perf_counter()
    rows = run(args)
    print_table(rows)
    load = os.getloadavg()
    print(f"\nTotal {time.perf_counter() - start:.0f} s; load average after: {load[0]:.2f}")


if __name__ == "__main__":
    main()
