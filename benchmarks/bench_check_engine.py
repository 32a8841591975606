"""What the explanation check's forward passes cost under TensorFlow (before) and under the same
float32 network converted to LiteRT (now: `skin_tf.explain.faithfulness.probability_function`'s
default), in one process, rounds interleaved (issue 33).

    .venv/bin/python benchmarks/bench_check_engine.py runs/…__baseline-cpu \\
        --data ../shared/data/ham10000 --images 20 --rounds 2 --json benchmarks/explain/X.json

For the first N images `skin-tf explain-check` picks (test split, classes in turn, seed 0), each
explained for its predicted class, both engines compute the two things the check spends most of
its forward passes on:
- RISE maps of the trained model with the check's masks (`rise.MASKS`): before through
  `rise_maps` (one traced TensorFlow call, the `explain` endpoint's route and the check's until
  now), now through `rise_maps_of` (each chunk of masked copies one LiteRT call);
- deletion and insertion curves (16 steps, mean fill, 128 images a call) of three map families,
  RISE's, the centred Gaussian and a random map (the check has nine).
The maps and the curves' areas of both engines are compared (largest difference; per family,
since RISE's maps differ by float rounding, which can reorder near-tied pixels, while the two
baselines' maps are the same under both engines); each round's
seconds and the ratio before / now are printed with their medians. The engines alternate
(TensorFlow first in odd rounds, LiteRT first in even ones), so a change of load falls on both.
The conversion, once per check, is timed apart.

Prints the figures and, with --json, writes them.
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
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    record = measure(args)
    for r in record["rounds"]:
        print(
            f"round {r['round']} (first: {r['first']}): RISE {r['rise_before_s']:.1f} / "
            f"{r['rise_now_s']:.1f} s = {r['rise_ratio']:.2f}x, curves {r['curves_before_s']:.1f}"
            f" / {r['curves_now_s']:.1f} s = {r['curves_ratio']:.2f}x"
        )
    print(
        f"median ratio TensorFlow / LiteRT: RISE maps {record['median_rise_ratio']:.2f}, curves "
        f"{record['median_curves_ratio']:.2f}; conversion {record['conversion_s']:.1f} s once; "
        f"largest map difference {record['max_map_difference']:.1e}, largest AUC difference "
        + ", ".join(f"{k} {v:.1e}" for k, v in record["max_auc_difference"].items())
        + f"; {record['images']} images at "
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
    from skin_tf.explain.gradcam import logit_model, normalize_heatmaps
    from skin_tf.explain.rise import MASKS, rise_maps, rise_maps_of
    from skin_tf.runs import hardware

    load_start = os.getloadavg()
    model, _, images, classes = explained_images(args.run_dir, args.data, args.images)
    hw = images.shape[1:3]
    logits = logit_model(model)
    tic = time.perf_counter()
    on_litert = faithfulness.probability_function(model, "litert")
    conversion = time.perf_counter() - tic
    on_tensorflow = faithfulness.probability_function(model, "tensorflow")
    baselines = {
        faithfulness.CENTRE: np.repeat(faithfulness.centred_gaussian(hw)[None], len(images), 0),
        faithfulness.RANDOM: faithfulness.random_maps(len(images), hw, (4, 4)),
    }

    def scaled(maps) -> np.ndarray:
        return np.clip(normalize_heatmaps(maps).numpy(), 0.0, 1.0)

    engines = {
        "tensorflow": (lambda: rise_maps(logits, images, classes.tolist()), on_tensorflow),
        "litert": (lambda: rise_maps_of(on_litert, images, classes), on_litert),
    }

    def run(name: str) -> tuple[float, float, np.ndarray, dict]:
        rise, predict = engines[name]
        tic = time.perf_counter()
        maps = scaled(rise())
        rise_s = time.perf_counter() - tic
        tic = time.perf_counter()
        curves = faithfulness.deletion_insertion(
            predict, images, {"rise": maps, **baselines}, classes, 16, "mean", 0, 128
        )
        return rise_s, time.perf_counter() - tic, maps, curves

    rounds, map_difference = [], 0.0
    auc_difference = dict.fromkeys(["rise", *baselines], 0.0)  # a family's maps alike or not
    for k in range(1, args.rounds + 1):
        order = ("tensorflow", "litert") if k % 2 else ("litert", "tensorflow")
        results = {name: run(name) for name in order}
        (rb, cb, mb, curves_b), (rn, cn, mn, curves_n) = results["tensorflow"], results["litert"]
        map_difference = max(map_difference, float(np.abs(mb - mn).max()))
        for family, curve in curves_b.items():
            for area in ("deletion_auc", "insertion_auc"):
                gap = np.abs(getattr(curve, area) - getattr(curves_n[family], area)).max()
                auc_difference[family] = max(auc_difference[family], float(gap))
        rounds.append({
            "round": k, "first": order[0], "rise_before_s": rb, "rise_now_s": rn,
            "rise_ratio": rb / rn, "curves_before_s": cb, "curves_now_s": cn,
            "curves_ratio": cb / cn,
        })  # fmt: skip
        print(f"  round {k} done", flush=True)
    return {
        "run": args.run_dir.name,
        "input_size": list(hw),
        "images": len(images),
        "masks": MASKS,
        "curve_families": ["rise", *baselines],
        "conversion_s": conversion,
        "rounds": rounds,
        "median_rise_ratio": float(np.median([r["rise_ratio"] for r in rounds])),
        "median_curves_ratio": float(np.median([r["curves_ratio"] for r in rounds])),
        "max_map_difference": map_difference,
        "max_auc_difference": auc_difference,
        "hardware": hardware(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    main()
