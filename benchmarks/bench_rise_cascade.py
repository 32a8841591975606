"""What RISE's share of the randomisation check costs, through the whole randomised copy at every
step (before) and through the trunk the steps share (`skin_tf.explain.rise.RiseOnTrunk`, now),
in one process, rounds interleaved (issue 33).

    .venv/bin/python benchmarks/bench_rise_cascade.py runs/…__baseline-cpu \\
        --data ../shared/data/ham10000 --images 20 --rounds 2 --json benchmarks/explain/X.json

For the first N images `skin-tf explain-check` picks (test split, classes in turn, seed 0), each
explained for its predicted class, with the check's masks (`rise.MASKS`) and cascade depth:
- before: RISE maps of the trained model (`rise_maps`, the check's route for every image
  before) and of the copy at every step of the cascade, each through the whole network;
- now: the masked copies once through the layers below `sanity.trunk_split`'s cut, then the
  upper part of the trained model and of the copy at every step.
Both routes' maps are compared (largest difference, after the check's 0..1 scaling) and timed;
the ratio before / now of each round is printed with its median. The routes alternate (before
first in odd rounds, now first in even ones), so a change of load falls on both.

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
    parser.add_argument("--depth", type=int, default=4, help="cascade steps (the check's: 4)")
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--json", type=Path, default=None)
    args = parser.parse_args(argv)
    record = measure(args)
    for r in record["rounds"]:
        print(f"round {r['round']}: before {r['before_s']:.1f} s, now {r['now_s']:.1f} s, "
              f"ratio {r['ratio']:.2f} (first: {r['first']})")  # fmt: skip
    print(
        f"median ratio before / now {record['median_ratio']:.2f}; largest map difference "
        f"{record['max_map_difference']:.1e}; {record['images']} images at "
        f"{record['input_size'][0]}x{record['input_size'][1]} px, {record['masks']} masks, "
        f"steps {', '.join(record['steps'])}; on {record['hardware']}, load average "
        f"{record['load_average_start'][0]:.1f} at the start, "
        f"{record['load_average_end'][0]:.1f} at the end"
    )
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(record, indent=1) + "\n")
        print(f"wrote {args.json}")
    return record


def measure(args: argparse.Namespace) -> dict:
    from bench_rise import explained_images

    from skin_tf.explain import sanity
    from skin_tf.explain.gradcam import logit_model, normalize_heatmaps
    from skin_tf.explain.rise import MASKS, RiseOnTrunk, rise_maps
    from skin_tf.runs import hardware

    load_start = os.getloadavg()
    model, _, images, classes = explained_images(args.run_dir, args.data, args.images)
    hw = images.shape[1:3]
    logits = logit_model(model)

    def scaled(maps) -> np.ndarray:
        return np.clip(normalize_heatmaps(maps).numpy(), 0.0, 1.0)

    def before() -> list[np.ndarray]:
        maps = [scaled(rise_maps(logits, images, classes.tolist()))]
        for _, copy in sanity.cascade(logits, args.depth):
            maps.append(scaled(rise_maps(copy, images, classes.tolist())))
        return maps

    def now() -> list[np.ndarray]:
        lower, upper = sanity.trunk_split(logits, args.depth)
        trunk = RiseOnTrunk(lower, images)
        maps = [scaled(trunk.maps(upper, classes))]
        for index, (_, copy) in enumerate(sanity.cascade(logits, args.depth)):
            if index == 0:
                upper = sanity.trunk_split(copy, args.depth)[1]
            maps.append(scaled(trunk.maps(upper, classes)))
        return maps

    rounds, difference = [], 0.0
    for k in range(1, args.rounds + 1):
        order = (("before", before), ("now", now)) if k % 2 else (("now", now), ("before", before))
        seconds, maps = {}, {}
        for name, route in order:
            tic = time.perf_counter()
            maps[name] = route()
            seconds[name] = time.perf_counter() - tic
        difference = max(
            difference,
            *(float(np.abs(a - b).max()) for a, b in zip(maps["before"], maps["now"], strict=True)),
        )
        rounds.append({
            "round": k, "first": order[0][0], "before_s": seconds["before"],
            "now_s": seconds["now"], "ratio": seconds["before"] / seconds["now"],
        })  # fmt: skip
        print(f"  round {k} done", flush=True)
    return {
        "run": args.run_dir.name,
        "input_size": list(hw),
        "images": len(images),
        "masks": MASKS,
        "steps": [step for step, _ in sanity.cascade_steps(logits, args.depth)],
        "cut": sanity.trunk_split(logits, args.depth)[0].layers[-1].name,
        "rounds": rounds,
        "median_ratio": float(np.median([r["ratio"] for r in rounds])),
        "max_map_difference": difference,
        "hardware": hardware(),
        "load_average_start": list(load_start),
        "load_average_end": list(os.getloadavg()),
    }


if __name__ == "__main__":
    main()
