"""What the explanation check's forward passes cost on the routes it has taken, in one process,
rounds interleaved (issue 33): TensorFlow (before), the same float32 network converted to LiteRT
(now: `skin_tf.explain.faithfulness.probability_function`'s default).

    .venv/bin/python benchmarks/bench_check_engine.py runs/…__baseline-cpu \\
        --data ../shared/data/ham10000 --images 20 --rounds 3 --json benchmarks/explain/X.json

For the first N images `skin-tf explain-check` picks (test split, classes in turn, seed 0), each
explained for its predicted class, every route computes the same work:
- RISE maps of the trained model with the check's masks (`rise.MASKS`): `rise_maps` (one traced
  TensorFlow call, the `explain` endpoint's route) and `rise_maps_of` (`rise_saliency` run
  eagerly, each chunk of masked copies one LiteRT call: the check's). At commit 8fa129a
  `rise_maps_of` made its copies in numpy and a third route timed the eager one against it
  (0.98x, benchmarks/explain/2026-12-07_check_passes_cpu128.json): no gain, so it was removed;
- deletion and insertion curves (16 steps, mean fill, 128 images a call) of three map families,
  RISE's, the centred Gaussian and a random map (the check has nine), on either engine;
- Score-CAM maps (64 masked copies an image): the model's TensorFlow `predict_on_batch`, or
  the copies scored on LiteRT (`gradcam_heatmaps(..., predict=...)`);
- the randomisation cascade's trunk pass (`rise.RiseOnTrunk`: every image's masked copies through
  the layers the cascade never re-initialises) on TensorFlow or on LiteRT, the LiteRT side
  including the conversion of that part, which the check pays once.
Each work's outputs are compared between routes (largest difference of the maps, of the trunk's
features, and of the curves' areas per family: RISE's maps differ by float rounding, which can
reorder near-tied pixels, while the two baselines' maps are the same on both engines). Each
round's seconds and each ratio before / now are printed with their medians; the routes of a work
take turns going first, so a change of load falls on all. The whole model's conversion, once per
check, is timed apart.

Prints the figures and, with --json, writes them.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from pathlib import Path

import numpy as np

# work: its routes, the one it is compared with first (before), the one the check runs last (now)
ROUTES = {
    "rise": ("tensorflow", "litert"),
    "curves": ("tensorflow", "litert"),
    "scorecam": ("tensorflow", "litert"),
    "trunk": ("tensorflow", "litert"),
}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("--data", type=Path, default=None, help="HAM10000 folder")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    record = measure(args)
    for work, routes in ROUTES.items():
        seconds = record["seconds"][work]
        print(
            f"{work:8s} "
            + "; ".join(f"{r} " + ", ".join(f"{s:.1f}" for s in seconds[r]) + " s" for r in routes)
            + " | median ratio "
            + ", ".join(
                f"{r} / {routes[-1]} {record['median_ratio'][work][r]:.2f}x" for r in routes[:-1]
            )
            + f" | largest difference {record['max_difference'][work]:.1e}"
        )
    print(
        "curve areas' largest difference per family: "
        + ", ".join(f"{k} {v:.1e}" for k, v in record["max_auc_difference"].items())
        + f"; conversion {record['conversion_s']:.1f} s once; {record['images']} images at "
        f"{record['input_size'][0]}x{record['input_size'][1]} px, {record['masks']} masks; on "
        f"{record['hardware']}, load average {record['load_average_start'][0]:.1f} at the "
        f"start, {record['load_average_end'][0]:.1f} at the end"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return record


def measure(args: argparse.Namespace) -> dict:
    from bench_rise import explained_images

    from skin_tf.explain import faithfulness
    from skin_tf.explain.checks import CheckConfig
    from skin_tf.explain.gradcam import gradcam_heatmaps, logit_model, normalize_heatmaps
    from skin_tf.explain.rise import MASKS, RiseOnTrunk, rise_maps, rise_maps_of
    from skin_tf.explain.sanity import trunk_split
    from skin_tf.runs import hardware

    load_start = os.getloadavg()
    model, _, images, classes = explained_images(args.run_dir, args.data, args.images)
    hw = images.shape[1:3]
    logits = logit_model(model)
    lower = trunk_split(logits, CheckConfig().cascade_depth)[0]
    tic = time.perf_counter()
    on_litert = faithfulness.probability_function(model, "litert")
    conversion = time.perf_counter() - tic
    on_tensorflow = faithfulness.probability_function(model, "tensorflow")
    baselines = {
        faithfulness.CENTRE: np.repeat(faithfulness.centred_gaussian(hw)[None], len(images), 0),
        faithfulness.RANDOM: faithfulness.random_maps(len(images), hw, (4, 4)),
    }
    rise_now = rise_maps_of(on_litert, images, classes)  # also the curves' RISE maps
    targets = classes.tolist()

    def scaled(maps) -> np.ndarray:
        return np.clip(normalize_heatmaps(maps).numpy(), 0.0, 1.0)

    def curves(predict):
        maps = {"rise": scaled(rise_now), **baselines}
        return faithfulness.deletion_insertion(predict, images, maps, classes, 16, "mean", 0, 128)

    def trunk(engine):
        features = RiseOnTrunk(lower, images, engine=engine).features
        return np.concatenate([np.concatenate(cuts).ravel() for cuts in features])

    work = {
        "rise": {
            "tensorflow": lambda: scaled(rise_maps(logits, images, targets)),
            "litert": lambda: scaled(rise_maps_of(on_litert, images, classes)),
        },
        "curves": {
            "tensorflow": lambda: curves(on_tensorflow),
            "litert": lambda: curves(on_litert),
        },
        "scorecam": {
            "tensorflow": lambda: gradcam_heatmaps(
                logits, images, targets, "scorecam", logits=True
            ),
            "litert": lambda: gradcam_heatmaps(
                logits, images, targets, "scorecam", logits=True, predict=on_litert
            ),
        },
        "trunk": {"tensorflow": lambda: trunk("tensorflow"), "litert": lambda: trunk("litert")},
    }
    seconds = {w: {r: [] for r in routes} for w, routes in ROUTES.items()}
    difference = dict.fromkeys(ROUTES, 0.0)
    auc_difference = dict.fromkeys(["rise", *baselines], 0.0)  # a family's maps alike or not
    for k in range(args.rounds):
        for name, routes in ROUTES.items():
            order = routes[k % len(routes) :] + routes[: k % len(routes)]
            outputs = {}
            for route in order:
                tic = time.perf_counter()
                outputs[route] = work[name][route]()
                seconds[name][route].append(time.perf_counter() - tic)
            now = outputs[routes[-1]]
            for route in routes[:-1]:
                if name == "curves":
                    for family, curve in outputs[route].items():
                        for area in ("deletion_auc", "insertion_auc"):
                            gap = np.abs(getattr(curve, area) - getattr(now[family], area)).max()
                            auc_difference[family] = max(auc_difference[family], float(gap))
                else:
                    gap = float(np.abs(outputs[route] - now).max())
                    difference[name] = max(difference[name], gap)
        print(f"  round {k + 1} done", flush=True)
    ratios = {
        w: {
            r: [b / n for b, n in zip(seconds[w][r], seconds[w][rs[-1]], strict=True)]
            for r in rs[:-1]
        }
        for w, rs in ROUTES.items()
    }
    difference["curves"] = max(auc_difference.values())
    return {
        "run": args.run_dir.name,
        "input_size": list(hw),
        "images": len(images),
        "masks": MASKS,
        "curve_families": ["rise", *baselines],
        "conversion_s": conversion,
        "routes": {w: list(r) for w, r in ROUTES.items()},
        "seconds": seconds,
        "ratios": ratios,
        "median_ratio": {
            w: {r: float(np.median(v)) for r, v in per.items()} for w, per in ratios.items()
        },
        "max_difference": difference,
        "max_auc_difference": auc_difference,
        "hardware": hardware(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    main()
