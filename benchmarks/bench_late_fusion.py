"""Patient fields after the fact: an image-only run's probabilities times what age, sex and site
alone say (late fusion), the yardstick issue 31 sets for a model trained on both.

A multinomial logistic regression on the encoded fields (`skin_tf.data.meta_fields`: age/100
with a missing flag, sex and body site one-hots with `unknown`) is fitted on the run's own
training split. Each image's probabilities then become p ∝ p_image · (p_fields / prior)^w, the
fields' likelihood ratio against the training split's class shares (Bayes' rule, with the image
model's answer as the prior; w damps or strengthens it); an image with no field given keeps
p_image, so the fused model without fields is the image-only model. w is chosen on validation
(lowest log loss on a grid), then test is read once: the paired lesion-bootstrap differences
against the image-only run that `skin-tf meta-gain` reports for a run trained with the fields.

    PYTHONPATH=.:benchmarks .venv/bin/python benchmarks/bench_late_fusion.py RUN_DIR \\
        --data-root ../shared/data/ham10000 [--test]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd

WEIGHTS = np.round(np.arange(0.0, 2.01, 0.1), 2)  # w on validation's grid
SHOWN = ("balanced_accuracy", "mel_roc_auc", "accuracy", "macro_f1")


def fields_model(train: pd.DataFrame):
    """The logistic regression of the label on the encoded fields, fitted on `train`."""
    from sklearn.linear_model import LogisticRegression

    from skin_tf.data.meta_fields import META_FIELDS, encode_fields

    model = LogisticRegression(max_iter=5000)
    return model.fit(encode_fields(train, META_FIELDS), train["label"].to_numpy())


def likelihood_ratio(image: pd.DataFrame, frame: pd.DataFrame, model, prior: np.ndarray):
    """Per row of `image` (a predictions frame): p_fields / prior for the images of `frame` with
    any field given, 1 for the rest."""
    from skin_tf.data.meta_fields import META_FIELDS, blank_vector, encode_fields

    rows = frame.set_index("image_id").loc[image["image_id"]].reset_index()
    encoded = encode_fields(rows, META_FIELDS)
    given = (encoded != blank_vector(META_FIELDS)).any(axis=1)
    return np.where(given[:, None], model.predict_proba(encoded) / prior, 1.0)


def fused(image: pd.DataFrame, ratio: np.ndarray, w: float) -> pd.DataFrame:
    """`image` with p ∝ p_image · ratio^w."""
    from skin_tf.evaluation.metrics import PROB_COLUMNS

    probs = image[list(PROB_COLUMNS)].to_numpy() * ratio**w
    out = image.copy()
    out[list(PROB_COLUMNS)] = probs / probs.sum(axis=1, keepdims=True)
    return out


def choose_weight(image: pd.DataFrame, ratio: np.ndarray) -> pd.DataFrame:
    """Per w of WEIGHTS: validation log loss and balanced accuracy of the fused probabilities."""
    from sklearn.metrics import balanced_accuracy_score, log_loss

    from skin_tf.evaluation.metrics import PROB_COLUMNS

    labels = image["label"].to_numpy()
    rows = []
    for w in WEIGHTS:
        probs = fused(image, ratio, w)[list(PROB_COLUMNS)].to_numpy()
        rows.append({
            "w": w, "val_log_loss": log_loss(labels, probs, labels=range(probs.shape[1])),
            "val_balanced_accuracy": balanced_accuracy_score(labels, probs.argmax(axis=1)),
        })  # fmt: skip
    return pd.DataFrame(rows)


def differences(image: pd.DataFrame, fused_frame: pd.DataFrame) -> str:
    """The fused minus the image-only figures, paired, as a markdown table."""
    from skin_tf.evaluation.compare import CLASS_RECALLS, paired_difference, split_stat
    from skin_tf.evaluation.metrics import PROB_COLUMNS

    metrics = (*SHOWN, *CLASS_RECALLS)
    diff = paired_difference(image, fused_frame, metrics)
    labels, columns = image["label"].to_numpy(dtype=int), list(PROB_COLUMNS)
    lines = ["| metric | image-only | late fusion | difference [95 % CI] |", "|---|---:|---:|---|"]
    for name, (d, low, high) in diff.items():
        a, b = (split_stat(name)(labels, f[columns].to_numpy()) for f in (image, fused_frame))
        lines.append(f"| {name} | {a:.3f} | {b:.3f} | {d:+.3f} [{low:+.3f}, {high:+.3f}] |")
    return "\n".join(lines)


def main() -> None:
    from skin_tf.data.splits import split_frames
    from skin_tf.evaluation.metrics import read_predictions
    from skin_tf.runs import patient_fields

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", type=Path, help="an image-only run")
    parser.add_argument("--data-root", type=Path, default=Path("data/ham10000"))
    parser.add_argument("--test", action="store_true", help="read test once, at the chosen w")
    args = parser.parse_args()
    if patient_fields(args.run_dir):
        raise SystemExit(f"{args.run_dir} was trained with patient fields: give an image-only run")
    frames = split_frames(args.run_dir / "splits.csv", args.data_root)
    model = fields_model(frames["train"])
    prior = np.bincount(frames["train"]["label"], minlength=len(model.classes_))
    prior = prior / prior.sum()
    val = read_predictions(args.run_dir, "val")
    val_ratio = likelihood_ratio(val, frames["val"], model, prior)
    grid = choose_weight(val, val_ratio)
    chosen = float(grid.loc[grid["val_log_loss"].idxmin(), "w"])
    print(f"{args.run_dir.name}: fields model fitted on {len(frames['train'])} training images")
    print(grid.to_string(index=False, float_format="%.4f"))
    print(f"\nchosen on validation (lowest log loss): w = {chosen}")
    print(differences(val, fused(val, val_ratio, chosen)))
    if args.test:
        test = read_predictions(args.run_dir, "test")
        print(f"\ntest, once, w = {chosen}")
        test_ratio = likelihood_ratio(test, frames["test"], model, prior)
        print(differences(test, fused(test, test_ratio, chosen)))


if __name__ == "__main__":
    main()
