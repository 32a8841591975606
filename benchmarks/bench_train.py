"""Training images/s of EfficientNet-B0 from scratch, batch 32: real input pipeline vs constants.

Run from the repository root (16 minutes with the defaults on 2 cores shared with other jobs):

    .venv/bin/python benchmarks/bench_train.py --data-root ../shared/data/ham10000

At each image size it trains EfficientNet-B0 (weights=None) with the loss, optimizer, class
weights and augmentation of `skin-tf train --config baseline --profile cpu`, fed by
  (a) pipeline: `make_dataset(training=True)` over the whole train split of the lesion split,
      decoded once into the in-memory uint8 cache before timing (as from epoch 2 of a run), then
      shuffled and augmented per batch as in training;
  (b) constant: one fixed batch of float32 tensors, repeated (no input work at all).
(a)/(b) near 1 means the model never waits for the pipeline. A second process trains on the
constant batch with jit_compile off and on.

The machine is shared, so (a) and (b) are interleaved in one process: after a warm-up (tracing),
each round trains --steps batches on (a) then --steps on (b), each arm with its own model and a
fresh `model.fit` call; the first batch of every call is not timed (iterator start, shuffle-buffer
fill). The ratio is taken per round and the median reported, so slow drifts of the load hit both
arms alike. Images per CPU-second (process CPU time, all threads) is reported beside: it moves
far less with the load, and its (a)/(b) is the share of the CPU the model keeps when the pipeline
runs beside it. Peak resident memory (ru_maxrss) is that of each process: for a size, one
training process holding the cache of the whole train split. Results go in benchmarks/README.md.
Throughput only: the wall time each recipe needs to reach validation balanced accuracy 0.60 and
0.70 (from scratch and ImageNet-pretrained) is `bench_transfer.py`'s.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import statistics
import subprocess
import sys
import time
from pathlib import Path

TARGET_RATIO = 0.95
BATCH_SIZE = 32
WARMUP_STEPS = 2


def peak_rss_mib() -> float:
    """Peak resident memory of this process so far, MiB (Linux reports ru_maxrss in KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def measure(
    size: int, arms: list[tuple[str, bool]], steps: int, rounds: int, data_root: str, seed: int
) -> dict:
    """Interleaved training of each (feed, jit_compile) arm in this process; images/s per round."""
    import keras
    import numpy as np
    import tensorflow as tf

    from skin_tf.data.ham10000 import read_metadata
    from skin_tf.data.pipeline import class_weights, make_dataset
    from skin_tf.data.splits import split_by_lesion
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.losses import build_loss, build_optimizer
    from skin_tf.training.config import load_config

    config = load_config("baseline", profile="cpu")
    keras.utils.set_random_seed(seed)
    frame = split_by_lesion(read_metadata(data_root), fractions=config.fractions, seed=seed)
    train = frame[frame["split"] == "train"].reset_index(drop=True)
    weights = class_weights(train, mel_multiplier=config.mel_multiplier)

    datasets, cache_fill_s = {}, None
    if any(feed == "pipeline" for feed, _ in arms):
        datasets["pipeline"] = make_dataset(
            train,
            size,
            training=True,
            batch_size=BATCH_SIZE,
            resize=config.resize,
            augment=config.augment,  # the config's own AugmentConfig, as in training
            cache=True,
            seed=seed,
        )
        start = time.perf_counter()
        for _ in datasets["pipeline"]:  # one full pass fills the in-memory cache (epoch 1)
            pass
        cache_fill_s = time.perf_counter() - start
    if any(feed == "constant" for feed, _ in arms):
        rng = np.random.default_rng(seed)
        images = rng.uniform(0, 255, (BATCH_SIZE, size, size, 3)).astype(np.float32)
        labels = rng.integers(0, 7, BATCH_SIZE).astype(np.int32)
        datasets["constant"] = tf.data.Dataset.from_tensors((images, labels)).repeat()

    models = {}
    for feed, jit in arms:
        model = build_classifier("efficientnet_b0", size, weights=None, dropout=config.dropout)
        model.compile(
            build_optimizer(config.learning_rate, config.weight_decay, 10**6, schedule="constant"),
            build_loss(config.loss, config.label_smoothing, config.focal_gamma),
            metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
            jit_compile=jit,
        )
        models[feed, jit] = model

    class BatchClock(keras.callbacks.Callback):
        """Wall-clock and process CPU time (all threads) at the end of every batch."""

        def __init__(self) -> None:
            super().__init__()
            self.ends: list[tuple[float, float]] = []

        def on_train_batch_end(self, batch, logs=None):
            self.ends.append((time.perf_counter(), time.process_time()))

    def fit_arm(arm: tuple[str, bool], n_steps: int) -> tuple[float, float]:
        """(images/s, images per CPU-second) over the batches after the first."""
        clock = BatchClock()
        models[arm].fit(
            datasets[arm[0]],
            epochs=1,
            steps_per_epoch=n_steps,
            class_weight=weights,
            callbacks=[clock],
            verbose=0,
        )
        (wall_0, cpu_0), (wall_1, cpu_1) = clock.ends[0], clock.ends[-1]
        images = (len(clock.ends) - 1) * BATCH_SIZE
        return images / (wall_1 - wall_0), images / (cpu_1 - cpu_0)

    warmup_s = {}
    for arm in arms:
        start = time.perf_counter()
        fit_arm(arm, WARMUP_STEPS)
        warmup_s[arm] = time.perf_counter() - start
    rates: dict[tuple[str, bool], list[float]] = {arm: [] for arm in arms}
    cpu_rates: dict[tuple[str, bool], list[float]] = {arm: [] for arm in arms}
    loads = [os.getloadavg()[0]]
    for _ in range(rounds):
        for arm in arms:
            rate, cpu_rate = fit_arm(arm, steps)
            rates[arm].append(rate)
            cpu_rates[arm].append(cpu_rate)
        loads.append(os.getloadavg()[0])
    return {
        "size": size,
        "steps_per_round": steps,
        "rounds": rounds,
        "arms": [
            {
                "feed": feed,
                "jit_compile": jit,
                "images_per_s_by_round": rates[feed, jit],
                "images_per_s": statistics.median(rates[feed, jit]),
                "images_per_cpu_s_by_round": cpu_rates[feed, jit],
                "images_per_cpu_s": statistics.median(cpu_rates[feed, jit]),
                "warmup_s": warmup_s[feed, jit],
            }
            for feed, jit in arms
        ],
        "cache_fill_s": cache_fill_s,
        "train_images": len(train),
        "peak_rss_mib": peak_rss_mib(),
        "load_1min": loads,
    }


def run_in_subprocess(job: dict, args: argparse.Namespace) -> dict:
    """One job in a fresh Python process (own memory peak, own graphs and XLA caches)."""
    command = [
        sys.executable,
        __file__,
        "--job",
        json.dumps(job),
        "--data-root",
        str(args.data_root),
        "--seed",
        str(args.seed),
    ]
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    done = subprocess.run(command, capture_output=True, text=True, env=env, check=False)
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    if done.returncode != 0 or not lines:
        raise RuntimeError(f"job {job} failed:\n{done.stderr[-3000:]}")
    return json.loads(lines[-1].removeprefix("RESULT "))


def plan(args: argparse.Namespace) -> list[dict]:
    """The jobs (one process each) of a benchmark run, in order."""
    jobs = []
    for size in args.sizes:
        large = size >= 160
        jobs.append(
            {
                "size": size,
                "arms": [["pipeline", False], ["constant", False]],
                "steps": args.steps_224 if large else args.steps,
                "rounds": args.rounds_224 if large else args.rounds,
            }
        )
    if args.jit_steps > 0:
        jobs.append(
            {
                "size": args.jit_size,
                "arms": [["constant", False], ["constant", True]],
                "steps": args.jit_steps,
                "rounds": 1,
            }
        )
    return jobs


def _ratios(first: dict, second: dict, key: str = "images_per_s_by_round") -> list[float]:
    return [a / b for a, b in zip(first[key], second[key], strict=True)]


def tables(results: list[dict]) -> str:
    """Markdown tables: pipeline vs constant per size, then jit on/off (ratios within the run)."""
    rows = [
        "| size | (a) pipeline, cached (images/s) | (b) constant tensors (images/s) | "
        "(a)/(b) per round | (a)/(b) median | (a)/(b) in images per CPU-s | "
        "peak RSS (MiB) | load (1 min) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    jit_rows = [
        "| size | jit_compile off (images/s) | jit_compile on (images/s) | on / off | "
        "on / off in images per CPU-s | peak RSS (MiB) | load (1 min) |",
        "|---|---|---|---|---|---|---|",
    ]
    for r in results:
        arms = {(a["feed"], a["jit_compile"]): a for a in r["arms"]}
        load = f"{min(r['load_1min']):.1f}–{max(r['load_1min']):.1f}"
        if ("constant", True) in arms:
            off, on = arms["constant", False], arms["constant", True]
            jit_rows.append(
                f"| {r['size']} | {off['images_per_s']:.1f} | {on['images_per_s']:.1f} | "
                f"{on['images_per_s'] / off['images_per_s']:.2f} | "
                f"{on['images_per_cpu_s'] / off['images_per_cpu_s']:.2f} | "
                f"{r['peak_rss_mib']:.0f} | {load} |"
            )
            continue
        a, b = arms["pipeline", False], arms["constant", False]
        ratios = _ratios(a, b)
        rows.append(
            f"| {r['size']} | {a['images_per_s']:.1f} | {b['images_per_s']:.1f} | "
            f"{', '.join(f'{x:.2f}' for x in ratios)} | {statistics.median(ratios):.2f} | "
            f"{statistics.median(_ratios(a, b, 'images_per_cpu_s_by_round')):.2f} | "
            f"{r['peak_rss_mib']:.0f} | {load} |"
        )
    return "\n".join(rows) + "\n\n" + "\n".join(jit_rows)


def main() -> None:
    from skin_tf.training.config import CPU_PROFILE_IMAGE_SIZE

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/ham10000"))
    parser.add_argument(
        "--sizes",
        type=int,
        nargs="+",
        default=[224, CPU_PROFILE_IMAGE_SIZE, 96],
        help="image sizes (default: 224, the cpu profile's size, and 96 as in the reference)",
    )
    parser.add_argument("--steps", type=int, default=8, help="batches per arm and round (< 160 px)")
    parser.add_argument("--rounds", type=int, default=3, help="rounds (< 160 px)")
    parser.add_argument("--steps-224", type=int, default=4, help="batches per arm and round")
    parser.add_argument("--rounds-224", type=int, default=2, help="rounds at >= 160 px")
    parser.add_argument("--jit-size", type=int, default=CPU_PROFILE_IMAGE_SIZE)
    parser.add_argument("--jit-steps", type=int, default=6, help="0 skips the jit_compile job")
    parser.add_argument("--seed", type=int, default=42)
    parser.add_argument("--json", type=Path, help="also write the raw results here")
    parser.add_argument("--job", help=argparse.SUPPRESS)
    args = parser.parse_args()

    if args.job:
        job = json.loads(args.job)
        arms = [(feed, bool(jit)) for feed, jit in job["arms"]]
        result = measure(
            job["size"], arms, job["steps"], job["rounds"], str(args.data_root), args.seed
        )
        print("RESULT " + json.dumps(result), flush=True)
        return

    if min(args.steps, args.steps_224, args.jit_steps or 2) < 2:
        parser.error("each arm needs at least 2 steps per round (the first one is not timed)")
    started = time.perf_counter()
    print(
        f"bench_train: EfficientNet-B0 from scratch, batch {BATCH_SIZE}, {os.cpu_count()} CPUs, "
        f"load {os.getloadavg()[0]:.1f}",
        flush=True,
    )
    results = []
    for job in plan(args):
        result = run_in_subprocess(job, args)
        print(json.dumps(result), flush=True)
        results.append(result)
    print()
    print(tables(results))
    print(f"\nTarget: (a)/(b) >= {TARGET_RATIO}. Total {time.perf_counter() - started:.0f} s.")
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
