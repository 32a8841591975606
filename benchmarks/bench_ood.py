"""What the out-of-distribution guard of an export keeps and rejects on a real run: valid images
changed in benign ways beside non-lesion images, with the model's accuracy on what it keeps and
what it refuses, through every engine and for every candidate export compared (issue 32).

    .venv/bin/python benchmarks/bench_ood.py runs/20261206T061141Z__demo \\
        --data-root ../shared/data/ham10000 --json benchmarks/ood/2026-12-06_demo.json

1. Exports the run twice into a temporary folder, with the guard and without it
   (`skin_tf.serving.export.export_run`), timing both: the guard's extra export time.
2. Test sets, none of which export saw: the test split; every benign-shift family made from the
   test split (`skin_tf.data.shifts`, seed 1; export made its families from validation images
   with seed 0); the out-of-distribution test images (`tests/serving/ood_images.py`: photos,
   documents, flat colours, gradients, noise, HAM10000 corner crops of plain skin, greyscale,
   inverted). Shifted images are brought to the model's input by serve's own resize
   (`skin_tf.serving.guard_sets.to_model_input`), which is what `assess` does to any image.
3. The export as clients get it: `ServedModel.assess` with each engine (its own threshold and
   the colour check: an image is kept when its in_distribution is true): validation kept, test
   kept, each benign-shift family kept, each OOD family rejected, AUROC (test split vs OOD), the
   share of the test split and of each family refused by the colour check alone, and what each
   would keep with the colour floor at the least colourful fitted image (no margin), the
   model's accuracy on the kept and on the rejected images (test split and its shifts; a guard
   that refuses right answers more often than wrong ones is flagged; and the test split within
   each true class, where the refused images come from), and the largest class-probability
   change against the export without the guard.
4. The candidates, refitted on the same images as export fits them
   (`skin_tf.serving.guard_choice.fit_run_guard`), each at the threshold export's rule gives
   it and with the colour check, on the same test sets (float features of the Keras model); the
   chosen one is marked. Beside them, the guard the rule before issue 32 would have chosen
   (Mahalanobis on each depth or energy, fitted on training images alone, each at the threshold
   keeping 95 % of validation alone, the one rejecting the most generated images), at its own
   threshold, without a colour check.

Prints markdown tables and, with --json, writes every figure.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests.serving.ood_images

ENGINES = ("savedmodel", "tflite", "tflite-int8")
SHIFT_SEED = 1  # export draws its validation shifts with seed 0
GUARD_FACTS = ("method", "layer", "score", "fitted_on", "colour_check")  # from metadata.json
KEPT_AIM, OOD_AIM = 0.93, 0.95


# ---------------------------------------------------------------- the test sets


def test_sets(run_dir: Path, data_root: Path, size: tuple[int, int], resize: str, n: int | None):
    """(test split at the model's size, its benign-shift families at the model's size, the OOD
    test images at their own sizes), all with labels where they have them."""
    from skin_tf.data.shifts import BENIGN_FAMILIES
    from skin_tf.serving import engines
    from skin_tf.serving.guard_sets import benign_images, run_source_images
    from tests.serving.ood_images import build_ood_set

    test = engines.run_images(run_dir, "test", size, resize, data_root, n)
    sources = run_source_images(run_dir, "test", data_root, n)
    if not np.array_equal(sources.labels, test.labels):
        raise SystemExit("the test split read twice differs: is the data folder the run's?")
    shifted = benign_images(sources, size, resize, BENIGN_FAMILIES, seed=SHIFT_SEED)
    return test, shifted, build_ood_set(data_root)


# ---------------------------------------------------------------- figures


def figures(
    threshold: float,
    test: np.ndarray,
    shifted: dict[str, np.ndarray],
    ood: dict[str, np.ndarray],
    correct: dict[str, np.ndarray],
) -> dict:
    """Kept/rejected shares and accuracies of one guard at one threshold on the test sets.
    `correct`: whether the model got each test image and each shifted image right."""
    from skin_tf.serving.guard import accuracy_split, refuses_the_doubtful, separation, shifted_kept

    out = separation(threshold, test, ood)
    out["shifted_kept"] = shifted_kept(threshold, shifted)
    out["shifted_kept_min"] = min(out["shifted_kept"].values())
    out["accuracy_test"] = accuracy_split(threshold, test, correct["test"])
    pooled = np.concatenate([test, *shifted.values()])
    everything = np.concatenate([correct["test"], *(correct[f] for f in shifted)])
    out["accuracy_test_and_shifted"] = accuracy_split(threshold, pooled, everything)
    out["aims"] = {
        "shifted_families_kept_>=0.93": out["shifted_kept_min"] >= KEPT_AIM,
        "ood_rejected_>=0.95": out["rejected"]["all"] >= OOD_AIM,
        "refuses_the_doubtful": refuses_the_doubtful(out["accuracy_test_and_shifted"]),
    }
    return out


def accuracy_by_class(
    threshold: float, scores: np.ndarray, correct: np.ndarray, labels: np.ndarray
) -> dict[str, dict | None]:
    """`accuracy_split` within each true class of the test split: which classes the guard
    refuses, and whether it refuses the doubtful within each (the pooled figure mixes classes
    the model gets right at very different rates)."""
    from skin_tf.data.ham10000 import CLASSES
    from skin_tf.serving.guard import accuracy_split

    return {
        name: accuracy_split(threshold, scores[labels == k], correct[labels == k])
        for k, name in enumerate(CLASSES)
        if (labels == k).any()
    }


def engine_figures(guarded: Path, plain: Path, sets, metadata: dict) -> dict:
    """The export through every engine: what it keeps and rejects, its accuracy on each side,
    and the largest probability change against the export without the guard."""
    from skin_tf.serving.served import load_served

    test, shifted, ood = sets
    rows = {}
    for engine in ENGINES:
        served, before = load_served(guarded, engine), load_served(plain, engine)
        start = time.perf_counter()
        on_test = served.assess(list(test.images))
        on_shifted = {f: served.assess(list(s.images)) for f, s in shifted.items()}
        threshold = served.ood_threshold
        ood_scores = {family: served.assess([o.pixels for o in m]).checked_scores(threshold)
                      for family, m in ood.items()}  # fmt: skip
        seconds = time.perf_counter() - start
        correct = {"test": on_test.probs.argmax(axis=1) == test.labels}
        correct.update({f: a.probs.argmax(axis=1) == shifted[f].labels
                        for f, a in on_shifted.items()})  # fmt: skip
        test_scores = on_test.checked_scores(threshold)
        row = figures(
            threshold,
            test_scores,
            {f: a.checked_scores(threshold) for f, a in on_shifted.items()},
            ood_scores,
            correct,
        )
        row["accuracy_test_by_class"] = accuracy_by_class(
            threshold, test_scores, correct["test"], test.labels
        )
        row["colour_check"] = colour_figures(
            threshold, {"test": on_test, **on_shifted},
            {"test": test.images, **{f: s.images for f, s in shifted.items()}},
            metadata["ood_guard"].get("colour_check"),
        )  # fmt: skip
        change = np.abs(on_test.probs - before.predict_many(list(test.images))).max()
        thresholds = metadata["ood_guard"]["thresholds"][engine]
        rows[engine] = {
            "val_kept": thresholds["val_kept"],
            "val_shifted_kept": thresholds.get("shifted_kept"),
            **row,
            "max_prob_change": float(change),
            "assess_s": seconds,
        }
    return rows


def colour_figures(threshold: float, assessed: dict, images: dict, check: dict | None) -> dict:
    """Which part of the guard refused the in-distribution sets: the share of each refused by
    the colour check alone (its score within the threshold), and the share each would keep
    with the floor at the least colourful fitted image itself (no margin)."""
    from skin_tf.serving.guard import mean_saturation

    if not check:
        return {}
    out = {"floor": check["floor"], "refused_by_colour": {}, "kept_without_margin": {}}
    least = check.get("least_colourful_fitted", check["floor"])
    for name, a in assessed.items():
        out["refused_by_colour"][name] = float(np.isinf(a.checked_scores(threshold)).mean())
        unmargined = a.in_distribution & (mean_saturation(images[name]) >= least)
        out["kept_without_margin"][name] = float(unmargined.mean())
    return out


def candidate_figures(run_dir: Path, data_root: Path, sets, guard_images: int, n_shifted: int):
    """Every candidate as export fits and thresholds it, and the previous rule's pick, on the
    test sets (float Keras features)."""
    import keras
    from scipy.special import softmax

    from skin_tf.evaluation.calibration import read_temperature
    from skin_tf.serving import engines
    from skin_tf.serving.endpoints import softmax_head
    from skin_tf.serving.guard import checked_scores, keep_threshold
    from skin_tf.serving.guard_choice import candidate_layers, features_function, fit_run_guard
    from skin_tf.serving.guard_sets import ood_validation_images, run_guard_images, to_model_input

    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    size = tuple(int(d) for d in model.input_shape[1:3])
    resize = json.loads((run_dir / "config.json").read_text()).get("resize", "squash")
    temperature = read_temperature(run_dir)
    train, shifted_train, shifted_val = run_guard_images(
        run_dir, size, resize, data_root, guard_images, n_shifted
    )
    val = engines.run_images(run_dir, "val", size, resize, data_root)
    fitted = fit_run_guard(model, train, val, shifted_val, shifted_train, temperature)
    comparison = fitted.record["comparison"]

    test, shifted, ood = sets
    head = softmax_head(model)
    features_of = features_function(model, [*candidate_layers(model), None])
    images = {"test": test.images, **{f: s.images for f, s in shifted.items()}}
    images.update({f"ood/{f}": to_model_input([o.pixels for o in m], size, resize)
                   for f, m in ood.items()})  # fmt: skip
    images["val"] = val.images
    images.update({f"ood_val/{f}": i for f, i in ood_validation_images(train.images).items()})
    features = {name: features_of(batch) for name, batch in images.items()}
    probs = {name: softmax((f[None] @ head.kernel.numpy() + head.bias.numpy())
                           / (temperature or 1.0), axis=1)
             for name, f in features.items()}  # fmt: skip
    labels = {"test": test.labels, **{f: s.labels for f, s in shifted.items()}}
    correct = {name: probs[name].argmax(axis=1) == y for name, y in labels.items()}

    plain: dict[int, dict[str, np.ndarray]] = {}  # a fit's scores without its confidence term

    def scores_of(guard) -> dict[str, np.ndarray]:
        """guard.score on every set (+inf where its colour check refuses, `checked_scores`); the
        confidence variants of one fit share its plain scores."""
        key = id(next(iter(guard.arrays.values())))
        if key not in plain:
            bare = dataclasses.replace(guard, confidence_weight=0.0)
            plain[key] = {n: bare.score(f[guard.layer]) for n, f in features.items()}
        return {n: checked_scores(plain[key][n] + guard.confidence_weight
                                  * (1 - probs[n].max(axis=1)), guard.colourful(images[n]))
                for n in features}  # fmt: skip

    def on_test(threshold: float, scores: dict[str, np.ndarray]) -> dict:
        return figures(
            threshold,
            scores["test"],
            {f: scores[f] for f in shifted},
            {f: scores[f"ood/{f}"] for f in ood},
            correct,
        )

    rows = {}
    for name, guard in fitted.candidates.items():
        scores = scores_of(guard)
        rows[name] = {"val": comparison["candidates"][name], "test": on_test(
            comparison["candidates"][name]["threshold"], scores)}  # fmt: skip
    # The rule before issue 32: plain Mahalanobis (training images only) or energy, at the
    # threshold keeping 95 % of validation, the one rejecting the most generated images.
    previous = {}
    for name, guard in fitted.candidates.items():
        if "+" in name.split(":", 1)[-1] or "+shifts" in name:
            continue
        scores = scores_of(dataclasses.replace(guard, confidence_weight=0.0, colour_floor=0.0))
        threshold = keep_threshold(scores["val"])
        generated = np.concatenate([scores[n] for n in scores if n.startswith("ood_val/")])
        previous[name] = (float(np.mean(generated > threshold)), threshold, scores)
    pick = max(previous, key=lambda n: previous[n][0])
    rejected, threshold, scores = previous[pick]
    before = {"candidate": pick, "generated_rejected": rejected, "threshold": threshold,
              "test": on_test(threshold, scores)}  # fmt: skip
    return {"chosen": comparison["chosen"], "candidates": rows, "previous_rule": before}


def run(run_dir: Path, data_root: Path, guard_images: int, n_shifted: int, n_test: int | None):
    from skin_tf.serving.export import export_run

    load_before = os.getloadavg()
    with tempfile.TemporaryDirectory() as tmp:
        export_s = {}
        for name, guard in (("with_guard", True), ("without_guard", False)):
            start = time.perf_counter()
            export_run(run_dir, Path(tmp) / name, data_root=data_root, guard=guard,
                       guard_images=guard_images, shifted_images=n_shifted)  # fmt: skip
            export_s[name] = time.perf_counter() - start
            print(f"export {name}: {export_s[name]:.1f} s", flush=True)
        guarded, plain = Path(tmp) / "with_guard", Path(tmp) / "without_guard"
        metadata = json.loads((guarded / "metadata.json").read_text())
        size = tuple(metadata["input_size"])
        sets = test_sets(run_dir, data_root, size, metadata["resize"], n_test)
        exported = engine_figures(guarded, plain, sets, metadata)
    print("engines done", flush=True)
    candidates = candidate_figures(run_dir, data_root, sets, guard_images, n_shifted)
    block = metadata["ood_guard"]
    test, shifted, ood = sets
    return {
        "run": metadata["run"],
        "model": metadata["model"],
        "input_size": metadata["input_size"],
        "n_test": len(test.images),
        "shifted_families": list(shifted),
        "ood_families": {family: len(members) for family, members in ood.items()},
        "guard": {key: block.get(key) for key in GUARD_FACTS},
        "chosen": block["comparison"]["chosen"],
        "rule": block["comparison"]["rule"],
        "export_s": export_s,
        "engines": exported,
        **candidates,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
    }


# ---------------------------------------------------------------- tables


def _accuracy(acc: dict | None) -> str:
    """The cell `kept / refused (n refused)`, with – on a side that has no image (a class whose
    every image was refused still shows the refused ones); ⚠ when the refused are right more
    often."""
    from skin_tf.serving.guard import refuses_the_doubtful

    if not acc:
        return "–"
    kept, rejected = (
        "–" if acc[side] is None else f"{acc[side]:.3f}" for side in ("kept", "rejected")
    )
    flag = "" if refuses_the_doubtful(acc) else " ⚠"
    return f"{kept} / {rejected} ({acc['n_rejected']}){flag}"


def tables(result: dict) -> str:
    shifted, ood = result["shifted_families"], list(result["ood_families"])
    kept_head = ["| guard | val kept | test kept | " + " | ".join(shifted) + " | min |",
                 "|---|---:|---:|" + "---:|" * (len(shifted) + 1)]  # fmt: skip
    ood_head = ["| guard | " + " | ".join(ood) + " | all OOD | AUROC | accuracy kept / "
                "rejected (n rejected): test | test + shifts |",
                "|---|" + "---:|" * (len(ood) + 2) + "---:|---:|"]  # fmt: skip

    def kept_row(label: str, val_kept: float, f: dict) -> str:
        cells = " | ".join(f"{f['shifted_kept'][s]:.3f}" for s in shifted)
        return (f"| {label} | {val_kept:.3f} | {f['kept']:.3f} | {cells} | "
                f"**{f['shifted_kept_min']:.3f}** |")  # fmt: skip

    def ood_row(label: str, f: dict) -> str:
        cells = " | ".join(f"{f['rejected'][o]:.2f}" for o in ood)
        accuracy = [_accuracy(f["accuracy_test"]), _accuracy(f["accuracy_test_and_shifted"])]
        return (f"| {label} | {cells} | **{f['rejected']['all']:.3f}** | {f['auroc']:.4f} | "
                f"{accuracy[0]} | {accuracy[1]} |")  # fmt: skip

    lines = [
        f"Run {result['run']} ({result['model']}, input {result['input_size']}); "
        f"{result['n_test']} test images, each also in {len(shifted)} benign-shift families; "
        "OOD test images "
        + ", ".join(f"{f} {n}" for f, n in result["ood_families"].items())
        + ". Export's choice: "
        + result["chosen"]
        + f" ({result['guard']['score']}).",
        "",
        "The export through each engine (its own threshold), what it keeps (share of each "
        "benign-shift family of the test split kept):",
        "",
        *kept_head,
        *(kept_row(f"`{e}`", f["val_kept"], f) for e, f in result["engines"].items()),
        "",
        "What it rejects (share of each OOD family) and the model's accuracy on the images it "
        "keeps and on those it rejects (⚠: it refuses right answers more often than wrong ones):",
        "",
        *ood_head,
        *(ood_row(f"`{e}`", f) for e, f in result["engines"].items()),
        "",
    ]
    for engine, f in result["engines"].items():
        aims = ", ".join(f"{k} {'yes' if v else 'NO'}" for k, v in f["aims"].items())
        lines.append(f"- {engine}: {aims}; largest class-probability change against the "
                     f"export without the guard {f['max_prob_change']:.1e}; assess "
                     f"{f['assess_s']:.0f} s.")  # fmt: skip
    for engine, f in result["engines"].items():
        colour = f.get("colour_check")
        if colour:
            lines.append(
                f"- {engine}, the colour check (floor {colour['floor']:.4f}): refused alone "
                + ", ".join(f"{n} {v:.3f}" for n, v in colour["refused_by_colour"].items())
                + "; kept with the floor at the least colourful fitted image (no margin) "
                + ", ".join(f"{n} {v:.3f}" for n, v in colour["kept_without_margin"].items())
                + "."
            )
    classes = list(next(iter(result["engines"].values()))["accuracy_test_by_class"])
    lines += [
        "",
        "The test split by true class: accuracy on the kept / refused images (n refused):",
        "",
        "| engine | " + " | ".join(classes) + " |",
        "|---|" + "---:|" * len(classes),
        *(
            f"| `{e}` | "
            + " | ".join(_accuracy(f["accuracy_test_by_class"][c]) for c in classes)
            + " |"
            for e, f in result["engines"].items()
        ),
    ]
    before = result["previous_rule"]
    ranked = sorted(result["candidates"].items(),
                    key=lambda kv: -kv[1]["val"]["rejected"]["all"])  # fmt: skip
    shown = [kv for kv in ranked if kv[0] == result["chosen"]] + [
        kv for kv in ranked if kv[0] != result["chosen"]][:7]  # fmt: skip
    for name in ("mahalanobis:penultimate", "energy", before["candidate"]):
        if name not in dict(shown):
            shown.append((name, result["candidates"][name]))
    lines += [
        "",
        "Candidates (float Keras features), each at the threshold export's rule gives it; "
        f"* chosen; the 8 that rejected the most generated validation images, and a few others "
        f"(all {len(result['candidates'])} in the JSON). 'generated' is that validation share:",
        "",
        kept_head[0].replace("| guard |", "| guard | generated |"),
        kept_head[1].replace("|---|", "|---|---:|", 1),
    ]
    for name, f in shown:
        label = name + (" *" if name == result["chosen"] else "")
        lines.append(kept_row(label, f["val"]["kept"], f["test"]).replace(
            f"| {label} |", f"| {label} | {f['val']['rejected']['all']:.3f} |", 1))  # fmt: skip
    lines += ["", *ood_head, *(ood_row(n, f["test"]) for n, f in shown), ""]
    lines += [
        f"The rule before issue 32 (each candidate at the threshold keeping 95 % of validation "
        f"alone, the most generated images rejected) picks {before['candidate']} "
        f"({before['generated_rejected']:.3f} of the generated images) at threshold "
        f"{before['threshold']:.3f}:",
        "",
        *kept_head,
        kept_row(before["candidate"], 0.95, before["test"]),
        "",
        *ood_head,
        ood_row(before["candidate"], before["test"]),
        "",
    ]
    export_s = result["export_s"]
    lines += [
        f"Export with the guard {export_s['with_guard']:.1f} s, without "
        f"{export_s['without_guard']:.1f} s "
        f"(+{export_s['with_guard'] - export_s['without_guard']:.1f} s).",
        f"Load average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores.",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    from skin_tf.serving.guard_choice import DEFAULT_GUARD_IMAGES
    from skin_tf.serving.guard_sets import BENIGN_PER_FAMILY

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path, help="a trained, calibrated, thresholded run")
    parser.add_argument("--data-root", type=Path, required=True, help="the HAM10000 folder")
    parser.add_argument(
        "--guard-images",
        type=int,
        default=DEFAULT_GUARD_IMAGES,
        help="training images the guard is fitted on (export's default)",
    )
    parser.add_argument(
        "--shifted-images",
        type=int,
        default=BENIGN_PER_FAMILY,
        help="validation images per benign-shift family (export's default)",
    )
    parser.add_argument("--test-images", type=int, default=None,
                        help="test images (default: the whole test split), drawn in turn "
                        "from each class when fewer")  # fmt: skip
    parser.add_argument("--json", type=Path, help="also write the figures to this file")
    args = parser.parse_args(argv)
    result = run(args.run_dir, args.data_root, args.guard_images, args.shifted_images,
                 args.test_images)  # fmt: skip
    print(tables(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
