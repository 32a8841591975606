"""How many masked copies RISE needs: its maps' faithfulness, sanity and cost against the number
of masks, on one run's test images, all in one run (issue 33).

    .venv/bin/python benchmarks/bench_rise.py runs/20261207T030805Z__demo \\
        --data ../shared/data/ham10000 --counts 200 500 1000 2000 --json benchmarks/explain/X.json

For the same images `skin-tf explain-check` picks (the run's test split, as equal per class as
the classes allow, seed 0) and the class the model predicts for each:

1. RISE maps (`skin_tf.explain.rise`) with each mask count (multiples of its chunk, 100),
   seconds and model calls a second. Every count's masks come from the same seed.
2. Deletion and insertion AUC of every count's maps and of the centred Gaussian, in one call of
   `skin_tf.explain.faithfulness.deletion_insertion` (mean fill, 16 steps, as the check), with
   lesion-bootstrap intervals and the paired difference from the centred Gaussian.
3. Agreement with the largest count: each image's Spearman rank correlation between a count's
   map and the largest count's map (median over images). Sampling noise is what separates them.
4. The randomisation check at `top` (the cascade's step the check reads, on the first
   `--randomization-images`): median Spearman correlation of each count's maps before and after.
   Fewer masks add noise to both maps, which lowers this correlation by itself: read it beside 3.
5. With `--curve-batches B…`: the curves of step 2 again with B images per model call
   (`CheckConfig.batch_size`), timed in the order given in this run, their figures checked
   equal.

Prints a markdown table and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="HAM10000 folder")
    parser.add_argument("--counts", type=int, nargs="+", default=[200, 500, 1000, 2000])
    parser.add_argument("--images", type=int, default=200)
    parser.add_argument("--randomization-images", type=int, default=50)
    parser.add_argument("--n-boot", type=int, default=1000)
    parser.add_argument("--curve-batches", type=int, nargs="*", default=[])
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    record = measure(args)
    print_tables(record)
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1))
        print(f"\nwrote {args.json}")
    return record


def measure(args: argparse.Namespace) -> dict:
    import keras

    from skin_tf.explain import checks, faithfulness, sanity
    from skin_tf.explain.choice import SANITY_STEP
    from skin_tf.explain.gradcam import logit_model
    from skin_tf.explain.rise import rise_maps
    from skin_tf.runs import hardware

    started, load_start = time.time(), os.getloadavg()
    counts = sorted(set(args.counts))
    model, picked, images, classes = explained_images(args.run_dir, args.data, args.images)
    hw = images.shape[1:3]
    predict = faithfulness.probability_function(model)

    def rise_of(network: keras.Model, count: int, batch: np.ndarray, targets: np.ndarray):
        # the check's own route (gradcam_heatmaps), with `count` masks
        return rise_maps(network, batch, targets.tolist(), count=count).numpy()

    logits = logit_model(model)
    maps, seconds = {}, {}
    for count in counts:
        tic = time.time()
        maps[f"rise {count}"] = rise_of(logits, count, images, classes)
        seconds[count] = time.time() - tic
        print(f"  {count} masks: {seconds[count]:.0f} s", flush=True)
    maps[faithfulness.CENTRE] = np.repeat(faithfulness.centred_gaussian(hw)[None], len(images), 0)

    tic = time.time()
    curves = faithfulness.deletion_insertion(predict, images, maps, classes, 16, "mean", 0, 32)
    curve_seconds = time.time() - tic
    per_image = checks.auc_frame(picked, classes, curves)
    batch_seconds = []  # (images a call, seconds), in the order timed
    for batch in args.curve_batches:
        tic = time.time()
        again = faithfulness.deletion_insertion(
            predict, images, maps, classes, 16, "mean", 0, batch
        )
        batch_seconds.append((batch, time.time() - tic))
        assert all(np.allclose(again[n].deletion, curves[n].deletion, atol=1e-4) for n in maps)
        print(f"  curves, {batch} images a call: {batch_seconds[-1][1]:.0f} s", flush=True)
    faithful = checks.summarise(per_image, list(maps), picked["lesion_id"], args.n_boot, 0)

    reference = maps[f"rise {counts[-1]}"]
    subset = min(args.randomization_images, len(images))
    randomised = {}
    for step, random_model in sanity.cascade(logits, depth=2):
        if step == SANITY_STEP:
            for count in counts:
                again = rise_of(random_model, count, images[:subset], classes[:subset])
                randomised[count] = sanity.spearman_rows(maps[f"rise {count}"][:subset], again)
    rows = []
    for count in counts:
        name = f"rise {count}"
        rows.append({
            "masks": count,
            "seconds": seconds[count],
            "model_images_per_second": count * len(images) / seconds[count],
            "deletion": faithful[name]["deletion"],
            "insertion": faithful[name]["insertion"],
            "spearman_with_largest_median": float(
                np.median(sanity.spearman_rows(maps[name], reference))
            ),
            "sanity_top_median": float(np.median(randomised[count])),
        })  # fmt: skip
    return {
        "run": args.run_dir.name,
        "input_size": list(hw),
        "images": len(images),
        "lesions": int(picked["lesion_id"].nunique()),
        "randomization_images": subset,
        "centre": faithful[faithfulness.CENTRE],
        "rows": rows,
        "curve_seconds": curve_seconds,
        "curve_seconds_by_batch": batch_seconds,
        "hardware": hardware(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
        "total_seconds": time.time() - started,
    }


def explained_images(run_dir: Path, data: Path | None, n: int):
    """The images `skin-tf explain-check` picks from an image-only run (its test split, classes
    in turn, seed 0) at the model's size, and the class the model predicts for each:
    (model, picked rows, images, classes)."""
    import keras

    from skin_tf.data.pipeline import load_image, resize_rule
    from skin_tf.explain import checks, faithfulness
    from skin_tf.models.meta_fusion import image_input, metadata_shape
    from skin_tf.runs import read_json

    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    if metadata_shape(model)[0]:
        raise SystemExit("this benchmark takes image-only runs; the run was trained with fields")
    hw = tuple(int(d) for d in image_input(model).shape[1:3])
    resize = resize_rule(str(read_json(run_dir / "config.json").get("resize", "squash")))
    picked = checks.pick_images(checks.held_out_images(run_dir, data), n)
    images = np.stack([load_image(p, hw, resize) for p in picked["path"]]).astype(np.float32)
    predict = faithfulness.probability_function(model)
    classes = faithfulness.predict_in_batches(predict, images, None, 32).argmax(axis=1)
    return model, picked, images, classes


def print_tables(record: dict) -> None:
    centre = record["centre"]
    print(
        f"\nRISE on {record['images']} test images ({record['lesions']} lesions) of "
        f"{record['run']}, {record['input_size'][0]}x{record['input_size'][1]} px; "
        f"centred Gaussian deletion {centre['deletion']['auc']:.3f}, "
        f"insertion {centre['insertion']['auc']:.3f}\n"
    )
    print(
        "| masks | seconds | model img/s | deletion AUC | vs centre [95 % CI] | insertion AUC "
        "| vs centre [95 % CI] | ρ with largest (median) | ρ at top, randomised (median) |"
    )
    print("|---:|---:|---:|---:|---|---:|---|---:|---:|")
    for row in record["rows"]:
        speed = f"{row['model_images_per_second']:.0f}"
        cells = [f"{row['masks']}", f"{row['seconds']:.0f}", speed]
        for curve in ("deletion", "insertion"):
            c = row[curve]
            low, high = c["vs_centre_ci"]
            cells += [f"{c['auc']:.3f}", f"{c['vs_centre']:+.3f} [{low:+.3f}, {high:+.3f}]"]
        cells += [f"{row['spearman_with_largest_median']:.2f}", f"{row['sanity_top_median']:.2f}"]
        print("| " + " | ".join(cells) + " |")
    for batch, seconds in record["curve_seconds_by_batch"]:
        print(f"\ncurves with {batch} images a model call: {seconds:.0f} s")
    print(
        f"\ncurves {record['curve_seconds']:.0f} s; total {record['total_seconds']:.0f} s on "
        f"{record['hardware']}; load average {record['load_average_start'][0]:.1f} at the start, "
        f"{record['load_average_end'][0]:.1f} at the end"
    )


if __name__ == "__main__":
    main()
