"""Which CPU recipe: the arms of issue 30 (input shape, weight averaging, regularisation,
backbone, patient fields), trained on the real data, each timed on this machine.

Every arm is the `baseline` config under the `cpu` profile (Lite0, ImageNet, 10 epochs, AdamW 1e-3
with cosine decay, batch 32, class weights) plus the arm's `--set` overrides, trained by
`skin_tf.train` in its own process, one arm after the other. Every arm keeps an exponential moving
average of its weights (`ema_momentum`, which does not change the trajectory of the trained
weights), so one training gives two variants: `<arm>` (the trained weights, validated and
checkpointed by a callback of this script) and `<arm>+ema` (the average, which the run itself
validates and keeps as best.keras). Per epoch it records the wall time since the arm started,
the process CPU time, the load average and the validation metrics of both variants.

Time: the training runs record the wall and CPU time they took, with the load average seen; on
a shared machine those are upper bounds. `--costs` first times one training step and one
validation image of every (model, size) the chosen arms use, in rounds interleaved in one process
(ratios to Lite0 at 128 px hold under a changing load; the absolute figures need an idle
machine), and the table then also gives each arm's time estimated from those costs (steps per
epoch × step time at each epoch's size + one validation pass) and when it reached each target.

    .venv/bin/python benchmarks/bench_recipes.py --data-root ../shared/data/ham10000 \\
        [--out runs/bench_recipes] [--arms lite0_128 lite0_150x200] [--costs] \\
        [--test VARIANT ...]

Each finished arm writes `<out>/<arm>.json` (and, epoch by epoch, `<out>/<arm>.val_probs/`: the
trained weights' validation probabilities and weights, which `bench_snapshots.py` averages); a
rerun skips arms already measured, so an interrupted benchmark resumes. An arm cut off
mid-training resumes too, from its run's last finished epoch (`skin_tf.train(resume=...)`),
its epochs so far read back from `<out>/<arm>.epochs.jsonl`; wall and CPU time then count the
epochs trained, not the pause.
The tables print validation figures for every variant; test figures only for the variants named
with `--test` (chosen on validation), with their paired difference from `lite0_128` on the same
test images.
`--smoke` runs every arm on the smoke profile (tiny, 2 epochs): a check that the arms run.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

FIELDS = 'metadata=["age","sex","localization"]'  # skin_tf.data.meta_fields
BASE = "lite0_128"  # today's cpu recipe: the in-run baseline
TARGETS = (0.70, 0.75, 0.80)
HEADLINE = ("balanced_accuracy", "mel_roc_auc", "accuracy", "macro_f1")
EMA_MOMENTUM = 0.998  # ≈ the last 500 steps (2 epochs of 251 steps)
TRAIN_IMAGES = 8012  # the seed-42 lesion split's training images
VAL_IMAGES = 1001
COST_IMAGES, COST_WARMUP, COST_STEPS = 320, 3, 8  # --costs: images, warm-up and timed steps
REGULARISED = ["label_smoothing=0.1", "augment.crop_scale=[0.6,1.0]"]  # the reference's best row
# Progressive resizing (7 epochs at 112×150, the last 3 at 150×200) was an arm too; it was
# measured (benchmarks/recipes/lite0_prog_150x200.json), did not pay and left skin_tf after.
ARMS: dict[str, list[str]] = {
    BASE: [],
    "lite0_112x150": ["image_size=[112,150]"],  # the data's aspect at the baseline's pixel count
    "lite0_150x200": ["image_size=[150,200]"],  # every pixel of the 200×150 copy
    "lite0_128_20ep": ["epochs=20"],  # a longer schedule: lite0_128 was still rising at 10
    "lite0_128_reg": REGULARISED,
    "lite0_128_meta": [FIELDS],  # age, sex and site beside the image (issue 31), concatenated
    "lite0_128_metablock": [FIELDS, "metadata_fusion=metablock"],  # ... or gating the features
    "lite1_128": ["model=efficientnet_lite1"],  # a larger backbone at the size that won on Lite0
    "lite2_128": ["model=efficientnet_lite2"],
}


def arm_config(arm: str, smoke: bool):
    from skin_tf.training import load_config

    sets = [f"ema_momentum={EMA_MOMENTUM}", *ARMS[arm]]
    if smoke:  # tiny sizes and 2 epochs, the arm's shape kept
        sets = [s for s in sets if not s.startswith("image_size=")]
        sets += ["model=efficientnet_lite0", "epochs=2", "weights=null"]
        if "image_size=[150,200]" in ARMS[arm] or "image_size=[112,150]" in ARMS[arm]:
            sets.append("image_size=[48,64]")
        return load_config("baseline", profile="smoke", overrides=sets)
    return load_config("baseline", profile="cpu", overrides=sets)


def cpu_seconds() -> float:
    usage = resource.getrusage(resource.RUSAGE_SELF)
    return usage.ru_utime + usage.ru_stime


def run_arm(arm: str, args: argparse.Namespace) -> dict:
    """Train one arm in this process; per-epoch times and both variants' val metrics."""
    import keras
    import numpy as np

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.models.losses import build_loss
    from skin_tf.runs import hardware, read_json
    from skin_tf.training import train
    from skin_tf.training.fit import prepare_data
    from skin_tf.training.selection import predict_probs, validation_logs

    config = arm_config(arm, args.smoke)
    frame, _ = prepare_data(config, args.data_root)  # the split train() will make (seeded)
    val = frame[frame["split"] == "val"]
    val_images = make_dataset(
        val, config.image_size, training=False, resize=config.resize, metadata=config.metadata
    )
    loss = build_loss(config.loss, config.label_smoothing, config.focal_gamma)
    runs = args.out / "runs"
    record = args.out / f"{arm}.epochs.jsonl"
    snapshots = args.out / f"{arm}.val_probs"
    resume = unfinished_run(runs, arm)
    epochs = epochs_so_far(record, resume)
    # A resumed arm's clocks go on from its last recorded epoch (unknown CPU time stays unknown).
    wall_before = epochs[-1]["wall_s"] if epochs else 0.0
    cpu_before = epochs[-1]["cpu_s"] if epochs else 0.0
    start, cpu_start = time.monotonic(), cpu_seconds()
    sign = -1 if config.select_mode == "min" else 1
    best_raw = max((sign * e["raw"][config.select_metric] for e in epochs), default=None)

    class TrainedWeights(keras.callbacks.Callback):
        """After the run's own callbacks (which validate the average and put the trained
        weights back): validate the trained weights and record the epoch."""

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            logs = logs if logs is not None else {}
            probs = predict_probs(self.model, val_images)
            raw = validation_logs(val["label"].to_numpy(), probs, loss)
            # Every epoch's val probabilities and weights: a snapshot ensemble of the last
            # epochs is then measured on val (and, if chosen, test) without a second training.
            snapshots.mkdir(parents=True, exist_ok=True)
            np.save(snapshots / f"epoch_{epoch + 1:02d}.npy", probs)
            self.model.save_weights(snapshots / f"epoch_{epoch + 1:02d}.weights.h5")
            logs.update({f"raw_{k}": v for k, v in raw.items()})
            cpu = None if cpu_before is None else cpu_before + cpu_seconds() - cpu_start
            epochs.append(
                {
                    "epoch": epoch + 1,
                    "wall_s": round(wall_before + time.monotonic() - start, 1),
                    "cpu_s": None if cpu is None else round(cpu, 1),
                    "load_1min": round(os.getloadavg()[0], 2),
                    "ema": {k: float(v) for k, v in logs.items() if k.startswith("val_")},
                    "raw": {k: float(v) for k, v in raw.items()},
                }
            )
            with record.open("a") as out:  # read back if the arm is cut off and resumed
                out.write(json.dumps(epochs[-1]) + "\n")

    raw_checkpoint = keras.callbacks.ModelCheckpoint(  # the trained weights' own best epoch
        runs / f"{arm}_raw_best.keras",
        monitor=f"raw_{config.select_metric}",
        mode=config.select_mode,
        save_best_only=True,
        initial_value_threshold=None if best_raw is None else sign * best_raw,
    )
    callbacks = [TrainedWeights(), raw_checkpoint]
    if resume is not None:
        print(f"{arm}: resuming {resume} after epoch {len(epochs)}", flush=True)
        run_dir = train(resume=resume, data_root=args.data_root, callbacks=callbacks)
    else:
        run_dir = train(config, args.data_root, runs, run_name=arm, callbacks=callbacks)
    metrics = read_json(run_dir / "metrics.json")
    return {
        "arm": arm,
        "overrides": ARMS[arm],
        "config": config.to_dict(),
        "run_dir": run_dir.name,
        "total_wall_s": epochs[-1]["wall_s"],
        "total_cpu_s": epochs[-1]["cpu_s"],
        "epochs": epochs,
        "variants": {
            f"{arm}+ema": {
                "kept_epoch": metrics["best_epoch"],
                **{s: headline(metrics[s]) for s in ("val", "test")},
            },
            arm: raw_variant(run_dir, runs / f"{arm}_raw_best.keras", config, epochs, args),
        },
        "hardware": hardware(),
        "smoke": args.smoke,
    }


def unfinished_run(runs: Path, arm: str) -> Path | None:
    """The arm's run cut off mid-training (its backup there, its metrics not), if any."""
    cut = [
        run
        for run in sorted(runs.glob(f"*__{arm}"))
        if (run / "backup").is_dir() and not (run / "metrics.json").is_file()
    ]
    if len(cut) > 1:
        raise SystemExit(f"{arm}: several unfinished runs {cut}: delete all but one")
    return cut[0] if cut else None


def epochs_so_far(record: Path, resume: Path | None) -> list[dict]:
    """The recorded epochs a resumed run keeps (those of its last backup); none for a new run.
    Epochs recorded after the backup are trained again, so they are dropped from the file."""
    from skin_tf.runs import completed_epochs

    if resume is None:
        record.unlink(missing_ok=True)
        return []
    done = completed_epochs(resume / "backup")
    lines = record.read_text().splitlines() if record.is_file() else []
    epochs = [e for e in map(json.loads, lines) if e["epoch"] <= done]
    if [e["epoch"] for e in epochs] != list(range(1, done + 1)):
        raise SystemExit(
            f"{record} does not hold epochs 1-{done} of the cut-off run {resume}: "
            f"delete {resume} to train the arm again"
        )
    record.write_text("".join(json.dumps(e) + "\n" for e in epochs))
    return epochs


def raw_variant(run_dir: Path, checkpoint: Path, config, epochs: list[dict], args) -> dict:
    """The trained weights' kept epoch, predicted on val and test like the run's own model;
    their predictions go beside the run's as predictions_{val,test}_raw.csv."""
    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.evaluation.metrics import evaluate_split
    from skin_tf.training.fit import predict_frame

    model = keras.saving.load_model(checkpoint, compile=False)
    frames = split_frames(run_dir / "splits.csv", args.data_root)
    sign = -1 if config.select_mode == "min" else 1
    kept = max(epochs, key=lambda e: sign * e["raw"][config.select_metric])["epoch"]
    variant: dict = {"kept_epoch": kept}
    for split in ("val", "test"):
        images = make_dataset(
            frames[split], config.image_size, False, resize=config.resize, metadata=config.metadata
        )
        predicted = predict_frame(model, images, frames[split])
        predicted.to_csv(run_dir / f"predictions_{split}_raw.csv", index=False, float_format="%.6f")
        predicted[["label", "lesion_id"]] = frames[split][["label", "lesion_id"]].to_numpy()
        metrics = evaluate_split(predicted, n_boot=config.bootstrap, seed=config.seed)
        variant[split] = headline(metrics)
    checkpoint.unlink()  # 20-60 MB; the predictions are what the tables need
    return variant


def headline(metrics: dict) -> dict:
    """The HEADLINE metrics of one split, each as {value, low, high} (the 95 % interval)."""
    ci = metrics.get("ci", {})
    return {
        k: {
            "value": metrics.get(k),
            "low": ci.get(k, [None])[0],
            "high": ci.get(k, [None, None])[1],
        }
        for k in HEADLINE
    }


# ------------------------------------------------------------------------------ epoch costs


def shape_of(arm: str) -> tuple[str, tuple[int, int]]:
    """The (model, size) an arm trains and validates at."""
    from skin_tf.data.sizes import image_hw

    config = arm_config(arm, smoke=False)
    return config.model, image_hw(config.image_size)


def measure_costs(args: argparse.Namespace) -> dict:
    """Seconds per training step and per validation image of every (model, size) the chosen
    arms use, interleaved in rounds in this one process (a change of load hits all alike)."""
    import statistics

    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.losses import build_loss, build_optimizer
    from skin_tf.runs import hardware
    from skin_tf.training.fit import prepare_data

    config = arm_config(BASE, smoke=False)
    frame, _ = prepare_data(config, args.data_root)
    train = frame[frame["split"] == "train"].sample(COST_IMAGES, random_state=0)
    val = frame[frame["split"] == "val"].head(COST_IMAGES)
    shapes = sorted({shape_of(arm) for arm in args.arms})
    benches = {}
    for model_name, size in shapes:
        model = build_classifier(model_name, size, "imagenet")
        model.compile(build_optimizer(1e-3, 1e-4, total_steps=10_000), build_loss())
        images = make_dataset(train, size, True, config.batch_size, augment=config.augment)
        images = images.cache().repeat()  # the augmented batches, made once: time the model
        val_images = make_dataset(val, size, False, config.batch_size)
        model.fit(images, steps_per_epoch=COST_WARMUP, verbose=0)  # trace, fill the caches
        model.predict(val_images, verbose=0)
        benches[(model_name, size)] = (model, images, val_images)
    rounds: dict = {shape: {"step_s": [], "val_image_s": []} for shape in shapes}
    for _ in range(args.cost_rounds):
        for shape, (model, images, val_images) in benches.items():
            start = time.perf_counter()
            model.fit(images, steps_per_epoch=COST_STEPS, verbose=0)
            rounds[shape]["step_s"].append((time.perf_counter() - start) / COST_STEPS)
            start = time.perf_counter()
            model.predict(val_images, verbose=0)
            rounds[shape]["val_image_s"].append((time.perf_counter() - start) / len(val))
    base = (config.model, (config.image_size,) * 2)
    costs = {}
    for shape, r in rounds.items():
        ratio = [a / b for a, b in zip(r["step_s"], rounds[base]["step_s"], strict=True)]
        costs[f"{shape[0]}@{shape[1][0]}x{shape[1][1]}"] = {
            "step_s": statistics.median(r["step_s"]),
            "val_image_s": statistics.median(r["val_image_s"]),
            "step_ratio_to_base": statistics.median(ratio),
            "rounds": r,
        }
    del benches
    keras.backend.clear_session()
    return {"costs": costs, "load_1min": os.getloadavg()[0], "hardware": hardware()}


def epoch_seconds(arm: str, costs: dict, steps: int = TRAIN_IMAGES // 32 + 1) -> list[float]:
    """Estimated seconds of each epoch of an arm: steps × step time at its size, plus one
    validation pass over the 1,001 val images."""
    model, (h, w) = shape_of(arm)
    cost = costs[f"{model}@{h}x{w}"]
    epoch = steps * cost["step_s"] + cost["val_image_s"] * VAL_IMAGES
    return [epoch] * arm_config(arm, smoke=False).epochs


# ------------------------------------------------------------------------------ tables


def value(v) -> str:
    if isinstance(v, dict):  # a metric with an interval
        v = v.get("value")
    return "—" if v is None else f"{v:.3f}"


def interval(v) -> str:
    if not isinstance(v, dict) or v.get("low") is None:
        return value(v)
    return f"{v['value']:.3f} [{v['low']:.3f}, {v['high']:.3f}]"


def epoch_to(result: dict, variant: str, target: float) -> int | None:
    """The first epoch (1-based) whose val balanced accuracy reached target, None if none did."""
    key = "ema" if variant.endswith("+ema") else "raw"
    hits = [e["epoch"] for e in result["epochs"] if e[key]["val_balanced_acc"] >= target]
    return hits[0] if hits else None


def val_table(results: list[dict], costs: dict | None, runs_dir: Path) -> str:
    """Per variant: measured wall and CPU time (with the load seen), the time estimated from the
    idle epoch costs of `--costs` when measured, time to each target, the kept epoch's val
    figures, and its val balanced accuracy minus the baseline's on the same images with the
    paired lesion interval (when both runs' predictions are in runs_dir)."""
    head = (
        "| variant | wall (measured) | CPU | load | est. idle | "
        + " | ".join(f"to {t:.2f} (est. idle)" for t in TARGETS)
        + " | kept | val bal acc | val mel AUC | val acc | val macro-F1 | "
        + f"Δ val bal acc vs {BASE} |"
    )
    rows = [head, "|" + "---|" * (head.count("|") - 1)]
    base = next((r for r in results if r["arm"] == BASE), None)
    for r in results:
        loads = [e["load_1min"] for e in r["epochs"] if e["load_1min"] is not None]
        estimate = None if costs is None else epoch_seconds(r["arm"], costs["costs"])
        for name, v in r["variants"].items():
            reach = [epoch_to(r, name, t) for t in TARGETS]
            if estimate is None:
                idle, to = "—", ["—" if e is None else f"epoch {e}" for e in reach]
            else:
                idle = f"{sum(estimate) / 60:.1f} min"
                to = ["—" if e is None else f"{sum(estimate[:e]) / 60:.1f} min" for e in reach]
            rows.append(
                f"| {name} | {minutes(r['total_wall_s'])} | {minutes(r['total_cpu_s'])} | "
                f"{min(loads):.1f}–{max(loads):.1f} | {idle} | " + " | ".join(to)
                + f" | {v['kept_epoch']} | "
                + " | ".join(value(v["val"][k]) for k in HEADLINE)
                + f" | {val_difference(runs_dir, base, r, name)} |"
            )  # fmt: skip
    return "\n".join(rows)


def val_difference(runs_dir: Path, base: dict | None, result: dict, variant: str) -> str:
    """The variant's val balanced accuracy minus the baseline's, paired on the same images."""
    from skin_tf.evaluation.compare import paired_difference

    if base is None or variant == BASE:
        return "—"
    runs = [runs_dir / r["run_dir"] for r in (base, result)]
    if not all((run / "predictions_val.csv").is_file() for run in runs):
        return "—"  # runs trained elsewhere: the committed records hold no predictions
    pair = predictions(runs_dir, base, BASE, "val"), predictions(runs_dir, result, variant, "val")
    d, low, high = paired_difference(*pair, ("balanced_accuracy",))["balanced_accuracy"]
    return f"{d:+.3f} [{low:+.3f}, {high:+.3f}]"


def minutes(seconds: float | None) -> str:
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def cost_table(costs: dict) -> str:
    rows = [
        "| model @ size | s per training step (batch 32) | × lite0@128 | ms per val image |",
        "|---|---|---|---|",
    ]
    for key, c in costs["costs"].items():
        rows.append(
            f"| {key} | {c['step_s']:.3f} | {c['step_ratio_to_base']:.2f} | "
            f"{1000 * c['val_image_s']:.1f} |"
        )
    return "\n".join(rows)


def test_table(results: list[dict], chosen: list[str], runs_dir: Path) -> str:
    """Test figures of the chosen variants, and each minus the baseline on the same images."""
    from skin_tf.evaluation.compare import paired_difference

    by_variant = {name: (r, v) for r in results for name, v in r["variants"].items()}
    base = by_variant.get(BASE)
    rows = [
        "| variant | test bal acc | test mel AUC | test acc | test macro-F1 | "
        f"Δ bal acc vs {BASE} | Δ mel AUC vs {BASE} |",
        "|---|---|---|---|---|---|---|",
    ]
    for name in chosen:
        if name not in by_variant:
            rows.append(f"| {name} | not measured |")
            continue
        r, v = by_variant[name]
        cells = [interval(v["test"][k]) for k in HEADLINE]
        if base is not None and name != BASE:
            diff = paired_difference(
                predictions(runs_dir, base[0], BASE), predictions(runs_dir, r, name),
                ("balanced_accuracy", "mel_roc_auc"),
            )  # fmt: skip
            cells += [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in diff.values()]
        else:
            cells += ["—", "—"]
        rows.append(f"| {name} | " + " | ".join(cells) + " |")
    return "\n".join(rows)


def predictions(runs_dir: Path, result: dict, variant: str, split: str = "test"):
    """The predictions of a variant on a split, as read_predictions frames them."""
    import pandas as pd

    from skin_tf.evaluation.metrics import read_predictions

    run_dir = runs_dir / result["run_dir"]
    frame = read_predictions(run_dir, split)
    if not variant.endswith("+ema"):  # the trained weights: same rows, their probabilities
        raw = pd.read_csv(run_dir / f"predictions_{split}_raw.csv").set_index("image_id")
        columns = [c for c in raw.columns if c.startswith("p_")]
        frame[columns] = raw.loc[frame["image_id"], columns].to_numpy()
    return frame


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data-root", type=Path, default=Path("data/ham10000"))
    parser.add_argument("--out", type=Path, default=Path("runs/bench_recipes"))
    parser.add_argument("--arms", nargs="+", choices=list(ARMS), default=list(ARMS))
    parser.add_argument("--test", nargs="*", default=[], metavar="VARIANT",
                        help="variants chosen on val whose test figures to print")  # fmt: skip
    parser.add_argument("--smoke", action="store_true", help="tiny runs: a check, not a figure")
    parser.add_argument("--costs", action="store_true",
                        help="first time every (model, size) of the arms, interleaved, into "
                        "<out>/costs.json (run it on an idle machine)")  # fmt: skip
    parser.add_argument("--cost-rounds", type=int, default=3)
    parser.add_argument("--job", help=argparse.SUPPRESS)  # one arm, in a child process
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    if args.job:
        result = run_arm(args.job, args)
        (args.out / f"{args.job}.json").write_text(json.dumps(result, indent=1) + "\n")
        return
    costs_path = args.out / "costs.json"
    if args.costs:
        costs_path.write_text(json.dumps(measure_costs(args), indent=1) + "\n")
    costs = json.loads(costs_path.read_text()) if costs_path.is_file() else None
    for arm in args.arms:
        if (args.out / f"{arm}.json").is_file():
            print(f"{arm}: measured already ({args.out / arm}.json), skipped", flush=True)
            continue
        print(f"{arm}: training …", flush=True)
        child = [sys.executable, __file__, "--job", arm, *sys.argv[1:]]
        subprocess.run(child, check=True)
    results = [
        json.loads((args.out / f"{arm}.json").read_text())
        for arm in args.arms
        if (args.out / f"{arm}.json").is_file()
    ]
    if costs is not None:
        print(cost_table(costs))
    print(val_table(results, costs, args.out / "runs"))
    if args.test:
        print(test_table(results, args.test, args.out / "runs"))


if __name__ == "__main__":
    main()
