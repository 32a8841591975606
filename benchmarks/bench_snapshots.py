"""Snapshot ensembles: one run's last epochs averaged, against the epoch the run keeps.

Issue 30 asks to consider snapshot ensembles (several checkpoints of one run), which cost no
extra training. `bench_recipes.py` keeps every epoch's validation probabilities and weights of
an arm's trained weights (`<out>/<arm>.val_probs/epoch_NN.npy` and `.weights.h5`); this script
averages the last K epochs' probabilities and compares that, on the same validation images with
a paired lesion interval, against the trained weights' kept epoch (chosen by the run's
validation loss, as `bench_recipes` keeps it) and, with `--base-run`, against an image-only run
of today's recipe trained on the same machine (`skin-tf train --config baseline --profile cpu`).
`--test K` then predicts the test split with each of the last K epochs' weights, once, for the
K that validation chose.

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/bench_snapshots.py \\
        --out runs/bench_recipes --arm lite0_150x200 --last 2 3 5 \\
        [--base-run runs/<baseline-cpu run>] [--test K]
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
from bench_recipes import arm_config, headline, interval, predictions

DIFFERENCES = ("balanced_accuracy", "mel_roc_auc")


def epoch_probabilities(out: Path, arm: str) -> dict[int, np.ndarray]:
    """Every recorded epoch's validation probabilities of the arm's trained weights."""
    folder = out / f"{arm}.val_probs"
    found = {int(p.stem.removeprefix("epoch_")): np.load(p) for p in folder.glob("epoch_*.npy")}
    if not found:
        raise SystemExit(f"no epoch probabilities in {folder}: train the arm with bench_recipes.py")
    return dict(sorted(found.items()))


def val_frame(arm: str, data_root: Path, smoke: bool) -> pd.DataFrame:
    """The validation images in the order the arm's callback predicted them (the seeded split)."""
    from skin_tf.training.fit import prepare_data

    frame, _ = prepare_data(arm_config(arm, smoke), data_root)
    return frame[frame["split"] == "val"].reset_index(drop=True)


def with_probabilities(frame: pd.DataFrame, probs: np.ndarray) -> pd.DataFrame:
    """image_id, lesion_id, label and p_<class> columns, as the metrics read them."""
    from skin_tf.evaluation.metrics import PROB_COLUMNS

    out = frame[["image_id", "lesion_id", "label"]].copy()
    out[list(PROB_COLUMNS)] = probs
    return out


def same_order(recorded: pd.DataFrame, predicted: pd.DataFrame) -> None:
    """The callback's probabilities of the kept epoch are the run's own val predictions of it,
    row by row: else the images are not in the order this script assumes."""
    from skin_tf.evaluation.metrics import PROB_COLUMNS

    columns = list(PROB_COLUMNS)
    again = predicted.set_index("image_id").loc[recorded["image_id"], columns].to_numpy()
    gap = float(np.abs(recorded[columns].to_numpy() - again).max())
    if gap > 1e-4:
        raise SystemExit(f"recorded val probabilities differ from the kept epoch's by {gap:.2g}")


def row(name: str, frame: pd.DataFrame, references: dict[str, pd.DataFrame], seed: int) -> str:
    """One table row: the headline figures with intervals, then the paired differences."""
    from skin_tf.evaluation.compare import paired_difference
    from skin_tf.evaluation.metrics import evaluate_split

    figures = headline(evaluate_split(frame, seed=seed))
    cells = [interval(figures[k]) for k in ("balanced_accuracy", "mel_roc_auc")]
    for reference in references.values():
        if reference is frame:
            cells += ["—", "—"]
            continue
        diff = paired_difference(reference, frame, DIFFERENCES, seed=seed)
        cells += [f"{d:+.3f} [{lo:+.3f}, {hi:+.3f}]" for d, lo, hi in diff.values()]
    return f"| {name} | " + " | ".join(cells) + " |"


def table(rows: list[str], references: list[str]) -> str:
    head = "| variant | bal acc | mel AUC | " + " | ".join(
        f"Δ bal acc vs {r} | Δ mel AUC vs {r}" for r in references
    )
    return "\n".join([head + " |", "|" + "---|" * (3 + 2 * len(references)), *rows])


def test_probabilities(out: Path, result: dict, epochs: list[int], data_root: Path, smoke: bool):
    """The mean test probabilities of the trained weights of `epochs`, and the test frame."""
    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.training.selection import predict_probs

    config = arm_config(result["arm"], smoke)
    run_dir = out / "runs" / result["run_dir"]
    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    test = split_frames(run_dir / "splits.csv", data_root)["test"].reset_index(drop=True)
    images = make_dataset(test, config.image_size, False, resize=config.resize,
                          metadata=config.metadata)  # fmt: skip
    probs = []
    for epoch in epochs:
        model.load_weights(out / f"{result['arm']}.val_probs" / f"epoch_{epoch:02d}.weights.h5")
        probs.append(predict_probs(model, images))
    return test, np.mean(probs, axis=0)


def main() -> None:
    from skin_tf.evaluation.metrics import read_predictions

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_recipes"))
    parser.add_argument("--arm", required=True)
    parser.add_argument("--data-root", type=Path, default=Path("data/ham10000"))
    parser.add_argument("--last", type=int, nargs="+", default=[2, 3, 5])
    parser.add_argument("--base-run", type=Path, help="an image-only run of today's recipe")
    parser.add_argument("--test", type=int, metavar="K", help="test the last K epochs, once")
    parser.add_argument("--smoke", action="store_true", help="an arm run with --smoke")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    result = json.loads((args.out / f"{args.arm}.json").read_text())
    kept = result["variants"][args.arm]["kept_epoch"]
    by_epoch = epoch_probabilities(args.out, args.arm)
    last = max(by_epoch)
    val = val_frame(args.arm, args.data_root, args.smoke)
    references = {f"epoch {kept} (kept)": with_probabilities(val, by_epoch[kept])}
    same_order(references[f"epoch {kept} (kept)"], predictions(args.out / "runs", result,
                                                                args.arm, "val"))  # fmt: skip
    if args.base_run:
        references[args.base_run.name] = read_predictions(args.base_run, "val")
    rows = [row(name, frame, references, args.seed) for name, frame in references.items()]
    for k in args.last:
        chosen = [e for e in by_epoch if e > last - k]
        mean = np.mean([by_epoch[e] for e in chosen], axis=0)
        rows.append(row(f"last {k} (epochs {chosen[0]}–{last})", with_probabilities(val, mean),
                        references, args.seed))  # fmt: skip
    print(f"validation, {len(val)} images; {args.arm}, {len(by_epoch)} epochs")
    print(table(rows, list(references)))
    if args.test:
        chosen = [e for e in by_epoch if e > last - args.test]
        test, mean = test_probabilities(args.out, result, chosen, args.data_root, args.smoke)
        test_refs = {f"epoch {kept} (kept)": predictions(args.out / "runs", result, args.arm)}
        if args.base_run:
            test_refs[args.base_run.name] = read_predictions(args.base_run, "test")
        rows = [row(name, frame, test_refs, args.seed) for name, frame in test_refs.items()]
        rows.append(row(f"last {args.test} (epochs {chosen[0]}–{last})",
                        with_probabilities(test, mean), test_refs, args.seed))  # fmt: skip
        print(f"\ntest, once, {len(test)} images")
        print(table(rows, list(test_refs)))


if __name__ == "__main__":
    main()
