"""What averaging finished recipe arms would give, on validation only (issue 30's ensemble aim).

    .venv/bin/python benchmarks/recipe_ensemble.py --out runs/bench_recipes \\
        --members lite0_128 lite0_128_reg lite0_prog_150x200

Reads the validation predictions each arm's run wrote (`predictions_val_raw.csv`, before any
temperature: the arm's row without `+ema`), checks they cover the same images,
and prints each member's validation balanced accuracy and melanoma AUC beside those of the mean
of their probabilities. Test predictions are never read: the recipe is chosen on validation.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.evaluation.metrics import PROB_COLUMNS, classification_metrics


def validation_probs(out: Path, arm: str) -> pd.DataFrame:
    """The arm's run's uncalibrated validation probabilities, one row per image, by image id."""
    run_name = Path(json.loads((out / f"{arm}.json").read_text())["run_dir"]).name
    run_dir = out / "runs" / run_name  # bench_recipes trains every arm's run there
    frame = pd.read_csv(run_dir / "predictions_val_raw.csv", dtype={"image_id": str})
    return frame.sort_values("image_id").reset_index(drop=True)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, default=Path("runs/bench_recipes"))
    parser.add_argument("--members", nargs="+", required=True, help="finished arms to average")
    args = parser.parse_args(argv)
    frames = {arm: validation_probs(args.out, arm) for arm in args.members}
    first = frames[args.members[0]]
    for arm, frame in frames.items():
        if not frame["image_id"].equals(first["image_id"]):
            raise SystemExit(f"{arm} was validated on other images than {args.members[0]}")
    labels = first["dx"].map(CLASSES.index).to_numpy()
    probs = {arm: frame[list(PROB_COLUMNS)].to_numpy(float) for arm, frame in frames.items()}
    probs["mean of " + " + ".join(args.members)] = np.mean(list(probs.values()), axis=0)
    print(f"| validation ({len(labels)} images) | balanced accuracy | melanoma AUC |")
    print("|---|---:|---:|")
    for name, p in probs.items():
        metrics = classification_metrics(labels, p)
        print(f"| {name} | {metrics['balanced_accuracy']:.3f} | {metrics['mel_roc_auc']:.3f} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
