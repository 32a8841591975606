"""Wall time to a useful model: training recipes side by side, on the real data, in one run.

For each recipe (a base config plus `--set` overrides) this trains one run with `skin_tf.train`
and records, after every epoch, the wall time since the run started (reading and splitting the
index, building the model, decoding and caching the images all count) and the epoch's validation
metrics. It prints, per recipe, the wall time at which validation balanced accuracy first reached
each target (0.60 and 0.70 by default), the best validation balanced accuracy and melanoma ROC AUC
of the kept checkpoint, and the test figures of that checkpoint.

    .venv/bin/python benchmarks/bench_transfer.py --data-root ../shared/data/ham10000 \
        [--out runs/bench_transfer] [--recipes scratch_b0_112 lite0_finetune_128] [--epochs 6]

Every recipe runs in its own process, one after the other, so the machine's load hits each
alike only if it stays the same: quote the figures with the load you saw. Each finished recipe
writes `<out>/<recipe>.json`; a rerun skips the recipes already measured (delete a file to
measure it again), so an interrupted benchmark resumes. `--smoke` runs every recipe on the
smoke profile (64 px, a small subset, 1 epoch): a check that the recipes run, not a measurement.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

TARGETS = (0.60, 0.70)
# (A, B): printed as B − A on the same test images, 1,000 lesion-bootstrap resamples.
PAIRS = (
    ("scratch_b0_112", "lite0_finetune_128"),
    ("lite0_frozen_128", "lite0_finetune_128"),
    ("lite0_finetune_128", "lite2_finetune_128"),
)
HEADLINE = ("balanced_accuracy", "mel_roc_auc", "accuracy")
# name: (config, overrides). The same config and training length for every recipe, so the
# recipes differ only in what they name: the backbone, its weights, the image size, freezing
# (and, for the from-scratch baseline, the learning rate of today's cpu profile).
RECIPES: dict[str, tuple[str, list[str]]] = {
    # Today's cpu recipe (the in-run baseline): B0 from scratch at 112 px, constant 3e-4.
    "scratch_b0_112": (
        "baseline",
        ["weights=null", "image_size=112", "learning_rate=0.0003", "lr_schedule=constant"],
    ),
    "lite0_finetune_96": ("baseline", ["model=efficientnet_lite0", "image_size=96"]),
    "lite0_finetune_128": ("baseline", ["model=efficientnet_lite0", "image_size=128"]),
    "lite0_frozen_128": (  # recipe (a): the pretrained backbone frozen, the head trained
        "baseline",
        ["model=efficientnet_lite0", "image_size=128", "freeze_epochs={epochs}"],
    ),
    "lite0_head_then_all_128": (
        "baseline",
        ["model=efficientnet_lite0", "image_size=128", "freeze_epochs=1"],
    ),
    "lite2_finetune_128": ("baseline", ["model=efficientnet_lite2", "image_size=128"]),
}
# Recipe (b): the frozen lower blocks run once, over `views` of the 8 flips/90° turns of every
# training image (exact symmetries of a dermatoscopic image); their activations are kept in
# memory (float16) and only the blocks from `block` up, and the head, train on that cache, one
# random cached view per image and epoch. name: (config, overrides, block, views).
CACHED_RECIPES: dict[str, tuple[str, list[str], str, int]] = {
    "lite0_cached_block4_128": (
        "baseline",
        ["model=efficientnet_lite0", "image_size=128"],
        "block4",
        8,
    ),
    "lite0_cached_block6_128": (
        "baseline",
        ["model=efficientnet_lite0", "image_size=128"],
        "block6",
        8,
    ),
}
# What every recipe shares on top of its config: ImageNet weights (overridden by scratch
# recipes), the learning rate a pretrained backbone tolerates, a cosine decay over the run.
COMMON = ["weights=imagenet", "learning_rate=0.001", "lr_schedule=cosine", "bootstrap=200"]


def recipe_config(config_name: str, overrides: list[str], args: argparse.Namespace):
    """The recipe's TrainConfig: COMMON, then its overrides and the benchmark's length."""
    from skin_tf.training import load_config

    if args.smoke:  # the smoke profile's size and length, whatever the recipe says
        sets = [*COMMON, *(s for s in overrides if not s.startswith(("image_size=", "freeze_")))]
    else:
        recipe = [s.format(epochs=args.epochs) for s in overrides]
        sets = [*COMMON, *recipe, f"epochs={args.epochs}"]
    return load_config(config_name, profile="smoke" if args.smoke else "full", overrides=sets)


def run_recipe(name: str, args: argparse.Namespace) -> dict:
    """Train one recipe in this process; per-epoch wall times and metrics."""
    import keras

    from skin_tf.runs import read_json
    from skin_tf.training import train

    if name in CACHED_RECIPES:
        return run_cached_recipe(name, args)
    config = recipe_config(*RECIPES[name], args)
    epochs: list[dict] = []
    start = time.monotonic()

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs or {}
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "wall_s": round(time.monotonic() - start, 1),
                    **{k: float(v) for k, v in logs.items() if k.startswith("val_")},
                }
            )

    run_dir = train(
        config, args.data_root, args.out / "runs", run_name=name, callbacks=[EpochClock()]
    )
    metrics = read_json(run_dir / "metrics.json")
    return {
        "recipe": name,
        "config": config.to_dict(),
        "run_dir": run_dir.name,  # under <out>/runs/
        "total_wall_s": round(time.monotonic() - start, 1),
        "epochs": epochs,
        "kept_epoch": metrics["best_epoch"],
        **{split: {k: metrics[split].get(k) for k in HEADLINE} for split in ("val", "test")},
        "hardware": read_json(run_dir / "meta.json").get("hardware"),
    }


def run_cached_recipe(name: str, args: argparse.Namespace) -> dict:
    """Recipe (b): train the top of the network on cached activations of its frozen lower blocks.

    The same split, weights, loss, class weights, optimizer and schedule as `train` would use;
    the checkpoint is the epoch best by the config's select_metric, and val/test are predicted
    from images by the whole network (its lower blocks unchanged), as for every other recipe.
    """
    import keras
    import numpy as np

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.evaluation.evaluate import dihedral_views
    from skin_tf.evaluation.metrics import evaluate_split
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.losses import build_loss, build_optimizer
    from skin_tf.runs import hardware
    from skin_tf.training.fit import class_weight_for, predict_frame, prepare_data
    from skin_tf.training.selection import validation_logs

    config_name, overrides, block, views = CACHED_RECIPES[name]
    config = recipe_config(config_name, overrides, args)
    start = time.monotonic()
    keras.utils.set_random_seed(config.seed)
    frame, _ = prepare_data(config, args.data_root, None)
    frames = {split: frame[frame["split"] == split] for split in ("train", "val", "test")}
    model = build_classifier(config.model, config.image_size, config.weights, config.dropout)
    cut = model.get_layer(next(la.name for la in model.layers if la.name.startswith(block))).input
    lower, top = keras.Model(model.input, cut), keras.Model(cut, model.output)

    def cached(split: str, n_views: int) -> np.ndarray:  # (views, images, h, w, c) float16
        images = make_dataset(frames[split], config.image_size, False, 64, resize=config.resize)
        parts = []
        for batch, _ in images:
            turned = np.split(dihedral_views(batch).numpy(), 8)[:n_views]
            parts.append(np.stack([lower(v, training=False).numpy() for v in turned]))
        return np.concatenate(parts, axis=1).astype(np.float16)

    train_cache, val_cache = cached("train", views), cached("val", 1)[0].astype(np.float32)
    labels = {split: f["label"].to_numpy() for split, f in frames.items()}
    loss = build_loss(config.loss, config.label_smoothing, config.focal_gamma)
    steps = int(np.ceil(len(labels["train"]) / config.batch_size))
    top.compile(
        build_optimizer(
            config.learning_rate, config.weight_decay, total_steps=steps * config.epochs,
            warmup_steps=steps * config.warmup_epochs, schedule=config.lr_schedule,
        ),
        loss,
    )  # fmt: skip
    weights = class_weight_for(config, frames["train"])
    rng = np.random.default_rng(config.seed)
    sign = -1.0 if config.select_mode == "min" else 1.0
    epochs: list[dict] = []
    best: tuple[float, int, list] = (-np.inf, 0, [])
    for epoch in range(config.epochs):
        view = rng.integers(0, views, len(labels["train"]))
        x = train_cache[view, np.arange(len(view))].astype(np.float32)
        top.fit(
            x, labels["train"], batch_size=config.batch_size, epochs=1, verbose=0,
            class_weight=weights, shuffle=True,
        )  # fmt: skip
        logs = validation_logs(labels["val"], top.predict(val_cache, verbose=0), loss)
        epochs.append({"epoch": epoch + 1, "wall_s": round(time.monotonic() - start, 1), **logs})
        if sign * logs[config.select_metric] > best[0]:
            best = (sign * logs[config.select_metric], epoch + 1, top.get_weights())
    top.set_weights(best[2])
    report = {}
    for split in ("val", "test"):
        images = make_dataset(frames[split], config.image_size, False, 32, resize=config.resize)
        predicted = predict_frame(model, images, frames[split])
        predicted[["label", "lesion_id"]] = frames[split][["label", "lesion_id"]].to_numpy()
        metrics = evaluate_split(predicted, n_boot=config.bootstrap, seed=config.seed)
        report[split] = {k: metrics.get(k) for k in HEADLINE}
    return {
        "recipe": name,
        "config": {**config.to_dict(), "cached_from_block": block, "cached_views": views},
        "run_dir": None,  # trained in memory
        "total_wall_s": round(time.monotonic() - start, 1),
        "epochs": epochs,
        "kept_epoch": best[1],
        **report,
        "hardware": hardware(),
    }


def time_to(epochs: list[dict], target: float) -> float | None:
    """Wall seconds at the end of the first epoch whose val balanced accuracy reached target."""
    hits = [e["wall_s"] for e in epochs if e.get("val_balanced_acc", 0.0) >= target]
    return hits[0] if hits else None


def table(results: list[dict], targets: tuple[float, ...]) -> str:
    def value(v) -> str:
        if isinstance(v, dict):  # a metric with an interval
            v = v.get("value")
        return "—" if v is None else f"{v:.3f}"

    head = "| recipe | epochs | wall | " + " | ".join(f"to val bal acc {t:.2f}" for t in targets)
    head += " | kept epoch | val bal acc | val mel AUC | test bal acc | test mel AUC |"
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    for r in results:
        reach = [time_to(r["epochs"], t) for t in targets]
        rows.append(
            f"| {r['recipe']} | {len(r['epochs'])} | {r['total_wall_s'] / 60:.1f} min | "
            + " | ".join("not reached" if s is None else f"{s / 60:.1f} min" for s in reach)
            + f" | {r['kept_epoch']} | {value(r['val']['balanced_accuracy'])} | "
            f"{value(r['val']['mel_roc_auc'])} | {value(r['test']['balanced_accuracy'])} | "
            f"{value(r['test']['mel_roc_auc'])} |"
        )
    return "\n".join(rows)


def paired_table(results: list[dict], runs_dir: Path) -> str:
    """B − A on the same test images (paired lesion bootstrap) for each of PAIRS whose two runs
    kept their run folders (the cached recipe trains in memory and has none)."""
    from skin_tf.evaluation.compare import paired_difference
    from skin_tf.evaluation.metrics import read_predictions

    folders = {r["recipe"]: runs_dir / r["run_dir"] for r in results if r.get("run_dir")}
    rows = ["| B − A | balanced accuracy | melanoma ROC AUC | accuracy |", "|---|---|---|---|"]
    for a, b in [pair for pair in PAIRS if all(name in folders for name in pair)]:
        diff = paired_difference(
            read_predictions(folders[a], "test"), read_predictions(folders[b], "test"), HEADLINE
        )
        cells = [f"{v:+.3f} [{lo:+.3f}, {hi:+.3f}]" for v, lo, hi in diff.values()]
        rows.append(f"| {b} − {a} | " + " | ".join(cells) + " |")
    return "\n".join(rows) if len(rows) > 2 else "no pair of recipes with run folders measured"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/ham10000"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_transfer"))
    names = [*RECIPES, *CACHED_RECIPES]
    parser.add_argument("--recipes", nargs="+", choices=sorted(names), default=names)
    parser.add_argument("--epochs", type=int, default=6)
    parser.add_argument("--smoke", action="store_true", help="tiny runs: a check, not a figure")
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one recipe, in a child process
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.job:
        result = run_recipe(args.job, args)
        (args.out / f"{args.job}.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    for name in args.recipes:
        if (args.out / f"{name}.json").is_file():
            print(f"{name}: measured already ({args.out / name}.json), skipped", flush=True)
            continue
        print(f"{name}: training …", flush=True)
        child = [sys.executable, __file__, "--job", name, *sys.argv[1:]]
        subprocess.run(child, check=True)
    results = [
        json.loads((args.out / f"{name}.json").read_text())
        for name in args.recipes
        if (args.out / f"{name}.json").is_file()
    ]
    print(table(results, TARGETS))
    print(paired_table(results, args.out / "runs"))


if __name__ == "__main__":
    main()
