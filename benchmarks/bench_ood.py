"""What the out-of-distribution guard keeps and rejects on a real run: every candidate score
against the run's test split and the out-of-distribution test images, and the exported guard
through every engine.

    .venv/bin/python benchmarks/bench_ood.py runs/20261202T001251Z__demo \
        --data-root ../shared/data/ham10000 --json benchmarks/ood/demo.json

1. Exports the run twice into a temporary folder, with the guard and without it
   (`skin_tf.serving.export.export_run`), timing both: the guard's extra export time.
2. Candidates (as export fits them, `skin_tf.serving.guard_choice`): Mahalanobis on each stage
   of the backbone and on the penultimate features, and the energy score, fitted on the same
   training images, each with the threshold that keeps 95 % of the validation split. For each:
   the share of the test split kept, the share of each out-of-distribution test family rejected
   (`tests/serving/ood_images.py`: scikit-image photos, documents, flat colours, gradients, noise,
   HAM10000 corner crops of plain skin, greyscale, inverted), and the AUROC of the score, test
   split against all of them. Export chose among these on validation data only; which one it
   chose is marked.
3. The export as clients get it: `ServedModel.assess` with each engine (its own threshold) on the
   test split and the OOD images, and the largest difference between the class probabilities of
   the guarded and the unguarded export over the test split (the aim: none).

Prints markdown tables and, with --json, writes the figures.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serving.ood_images

ENGINES = ("savedmodel", "tflite", "tflite-int8")


def candidate_figures(run_dir: Path, data_root: Path, ood: dict, guard_images: int) -> dict:
    """Every candidate guard, fitted as export fits it, on test and the OOD test images."""
    import keras

    from skin_tf.serving import engines
    from skin_tf.serving.endpoints import input_side, softmax_head
    from skin_tf.serving.guard import energy_guard, fit_mahalanobis, keep_threshold
    from skin_tf.serving.guard_choice import candidate_layers, pooled_features, separation
    from skin_tf.serving.litert import to_model_size

    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    side = input_side(model)
    resize = json.loads((run_dir / "config.json").read_text()).get("resize", "squash")
    images = {
        "train": engines.run_images(run_dir, "train", side, resize, data_root, guard_images),
        "val": engines.run_images(run_dir, "val", side, resize, data_root),
        "test": engines.run_images(run_dir, "test", side, resize, data_root),
    }
    layers = [*candidate_layers(model), None]
    features = {k: pooled_features(model, v.images, layers) for k, v in images.items()}
    ood_features = {
        family: pooled_features(
            model, np.stack([to_model_size(o.pixels, side, resize) for o in members]), layers
        )
        for family, members in ood.items()
    }
    head = softmax_head(model)
    guards = {
        f"mahalanobis:{layer or 'penultimate'}": fit_mahalanobis(
            features["train"][layer], images["train"].labels, layer
        )
        for layer in layers
    }
    guards["energy"] = energy_guard(head.kernel.numpy(), head.bias.numpy())
    rows = {}
    for name, guard in guards.items():
        val = guard.score(features["val"][guard.layer])
        threshold = keep_threshold(val)
        test = guard.score(features["test"][guard.layer])
        scores = {family: guard.score(f[guard.layer]) for family, f in ood_features.items()}
        rows[name] = {"val_kept": float(np.mean(val <= threshold)), **separation(threshold, test,
                                                                               scores)}  # fmt: skip
    return rows


def engine_figures(guarded: Path, plain: Path, data_root: Path, ood: dict) -> dict:
    """The export through every engine: test kept, OOD rejected, AUROC, probability change."""
    from skin_tf.serving import engines
    from skin_tf.serving.guard_choice import separation
    from skin_tf.serving.served import load_served

    metadata = json.loads((guarded / "metadata.json").read_text())
    run_dir = Path(metadata["run_dir"])
    side, resize = metadata["input_size"][0], metadata["resize"]
    test = list(engines.run_images(run_dir, "test", side, resize, data_root).images)
    rows = {}
    for engine in ENGINES:
        served, before = load_served(guarded, engine), load_served(plain, engine)
        start = time.perf_counter()
        on_test = served.assess(test)
        scores = {family: served.assess([o.pixels for o in members]).ood_score
                  for family, members in ood.items()}  # fmt: skip
        seconds = time.perf_counter() - start
        figures = separation(served.ood_threshold, on_test.ood_score, scores)
        thresholds = metadata["ood_guard"]["thresholds"][engine]
        rows[engine] = {
            "val_kept": thresholds["val_kept"],
            **figures,
            "max_prob_change": float(np.abs(on_test.probs - before.predict_many(test)).max()),
            "assess_s": seconds,
        }
    return rows


def run(run_dir: Path, data_root: Path, guard_images: int) -> dict:
    from skin_tf.serving.export import export_run
    from tests.serving.ood_images import build_ood_set

    load_before = os.getloadavg()
    ood = build_ood_set(data_root)
    with tempfile.TemporaryDirectory() as tmp:
        export_s = {}
        for name, guard in (("with_guard", True), ("without_guard", False)):
            start = time.perf_counter()
            export_run(run_dir, Path(tmp) / name, data_root=data_root, guard=guard,
                       guard_images=guard_images)  # fmt: skip
            export_s[name] = time.perf_counter() - start
            print(f"export {name}: {export_s[name]:.1f} s", flush=True)
        guarded, plain = Path(tmp) / "with_guard", Path(tmp) / "without_guard"
        metadata = json.loads((guarded / "metadata.json").read_text())
        exported = engine_figures(guarded, plain, data_root, ood)
    candidates = candidate_figures(run_dir, data_root, ood, guard_images)
    return {
        "run": metadata["run"],
        "model": metadata["model"],
        "input_size": metadata["input_size"],
        "ood_families": {family: len(members) for family, members in ood.items()},
        "guard": {key: metadata["ood_guard"][key] for key in ("method", "layer", "fitted_on")},
        "chosen": metadata["ood_guard"]["comparison"]["chosen"],
        "ood_validation": metadata["ood_guard"]["comparison"],
        "export_s": export_s,
        "candidates": candidates,
        "engines": exported,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


def table(result: dict) -> str:
    families = list(result["ood_families"])
    head = ["| guard | val kept | test kept | " + " | ".join(families) + " | all OOD | AUROC |",
            "|---|---:|---:|" + "---:|" * (len(families) + 2)]  # fmt: skip

    def row(label: str, figures: dict) -> str:
        rejected = figures["rejected"]
        cells = " | ".join(f"{rejected[f]:.2f}" for f in families)
        return (
            f"| {label} | {figures['val_kept']:.3f} | {figures['kept']:.3f} | {cells} | "
            f"**{rejected['all']:.3f}** | {figures['auroc']:.4f} |"
        )

    lines = [
        f"Run {result['run']} ({result['model']}, {result['input_size'][0]} px); OOD test images "
        + ", ".join(f"{f} {n}" for f, n in result["ood_families"].items())
        + "; columns per family: share rejected.",
        "",
        "Candidates (float features of the Keras model; each with its own threshold keeping 95 % "
        f"of validation; * = chosen by export on validation data: {result['chosen']}):",
        "",
        *head,
    ]
    for name, figures in result["candidates"].items():
        lines.append(row(name + (" *" if name == result["chosen"] else ""), figures))
    lines += ["", "The export, through each engine (its own threshold):", "", *head]
    for engine, figures in result["engines"].items():
        lines.append(row(f"`{engine}`", figures))
    lines.append("")
    for engine, figures in result["engines"].items():
        lines.append(
            f"{engine}: largest class-probability change against the export without the guard "
            f"over the test split {figures['max_prob_change']:.1e}; assess over test + OOD "
            f"{figures['assess_s']:.1f} s."
        )
    export_s = result["export_s"]
    lines += [
        "",
        f"Export with the guard {export_s['with_guard']:.1f} s, without "
        f"{export_s['without_guard']:.1f} s "
        f"(+{export_s['with_guard'] - export_s['without_guard']:.1f} s).",
        f"Load average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a trained, calibrated, thresholded run")
    parser.add_argument("--data-root", type=Path, required=True, help="the HAM10000 folder")
    parser.add_argument("--guard-images", type=int, default=2000, help="training images")
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.run_dir, args.data_root, args.guard_images)
    print(table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
