"""What the patient fields add: a run trained with them against an image-only run, paired.

Both runs must be tested on the same images (the same split: fractions and seed). The run with
fields is scored twice: as it was tested (every field the data has), and with every field
withheld (its best.keras on the same images, nothing given: what a user who gives no age, sex
or site gets). Each is compared with the image-only run by a paired lesion bootstrap
(`compare.paired_difference`) on balanced accuracy, melanoma ROC AUC, accuracy, macro-F1 and
every class's recall.

    skin-tf meta-gain runs/<image-only run> runs/<run with fields> [--split val]

writes results/metadata/<run>.md, a table of the differences with their 95 % intervals, and
results/metadata/<run>.png, the change in each class's recall. `--split val` compares the
validation predictions instead (into <run>_val.md): the split to choose a recipe on, so that
test is read once, for what was chosen.

    >>> table = metadata_gain("runs/a__baseline-cpu", "runs/b__meta-cpu")  # doctest: +SKIP
    >>> table.set_index(["case", "metric"]).loc[("all given", "mel_roc_auc")]  # doctest: +SKIP
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.sizes import image_hw
from skin_tf.evaluation import plots
from skin_tf.evaluation.compare import CLASS_RECALLS, paired_difference, split_stat
from skin_tf.evaluation.evaluate import image_frames, predict_tta
from skin_tf.evaluation.metrics import PROB_COLUMNS, read_predictions
from skin_tf.runs import patient_fields, read_json, run_caption, run_name_of

GAIN_METRICS = ("balanced_accuracy", "mel_roc_auc", "accuracy", "macro_f1", *CLASS_RECALLS)
CASES = ("all given", "none given")  # the fields run as tested; with every field withheld
OUT_FOLDER = "metadata"  # below the results folder


def metadata_gain(
    image_run: str | os.PathLike,
    fields_run: str | os.PathLike,
    data_root: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "test",
) -> pd.DataFrame:
    """One row per (case, metric): the image-only run's value, the fields run's, and the paired
    difference (fields − image-only) with its 95 % lesion-bootstrap interval, on `split`.

    data_root: the images, for the withheld case (default: the fields run's own data root).
    """
    image_run, fields_run = Path(image_run), Path(fields_run)
    wrong = patient_fields(image_run)
    if wrong:
        raise ValueError(
            f"{image_run} takes patient fields {list(wrong)}: give an image-only run first, then "
            "the run with fields"
        )
    image_only = read_predictions(image_run, split)
    cases = {
        CASES[0]: read_predictions(fields_run, split),
        CASES[1]: predict_with_fields_withheld(fields_run, split, data_root),
    }
    labels = image_only["label"].to_numpy(dtype=int)
    rows = []
    for case, frame in cases.items():
        diffs = paired_difference(image_only, frame, GAIN_METRICS, n_boot, seed)
        paired = frame.set_index("image_id").loc[image_only["image_id"]]
        for metric, (change, low, high) in diffs.items():
            stat = split_stat(metric)
            rows.append({
                "case": case, "metric": metric,
                "image_only": stat(labels, image_only[list(PROB_COLUMNS)].to_numpy()),
                "with_fields": stat(labels, paired[list(PROB_COLUMNS)].to_numpy()),
                "difference": change, "low": low, "high": high,
            })  # fmt: skip
    return pd.DataFrame(rows)


def predict_with_fields_withheld(
    run_dir: str | os.PathLike,
    split: str = "test",
    data_root: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> pd.DataFrame:
    """The run's predictions of `split` (as `read_predictions` frames them) remade by its
    best.keras with no patient field given, through the pipeline the run was tested with
    (image size, resize rule, TTA when its config has it)."""
    import keras  # only now: importing TensorFlow takes seconds

    from skin_tf.data.pipeline import make_dataset

    run_dir = Path(run_dir)
    fields = patient_fields(run_dir)
    if not fields:
        raise ValueError(f"{run_dir} takes no patient fields (config metadata is empty)")
    config = read_json(run_dir / "config.json")
    base = read_predictions(run_dir, split)
    frame = image_frames(run_dir, {split: base}, data_root)[split]
    dataset = make_dataset(
        frame.drop(columns=list(fields), errors="ignore"), image_hw(config["image_size"]),
        training=False, batch_size=batch_size, resize=config.get("resize", "squash"),
        cache=False, metadata=fields,
    )  # fmt: skip
    model = keras.models.load_model(run_dir / "best.keras", compile=False)
    if config.get("tta"):
        probs = predict_tta(model, dataset)
    else:
        probs = np.asarray(model.predict(dataset, verbose=0), dtype=np.float64)
    withheld = base.copy()
    withheld[list(PROB_COLUMNS)] = probs
    return withheld


def write_metadata_gain(
    image_run: str | os.PathLike,
    fields_run: str | os.PathLike,
    results_dir: str | os.PathLike = Path("results"),
    data_root: str | os.PathLike | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    split: str = "test",
) -> Path:
    """`metadata_gain` as results/metadata/<fields run>.md (+ .png, + .csv; <fields run>_val.*
    for split "val", so a validation comparison never replaces the test one); returns the .md."""
    image_run, fields_run = Path(image_run), Path(fields_run)
    table = metadata_gain(image_run, fields_run, data_root, n_boot, seed, split)
    name = run_name_of(fields_run) + ("" if split == "test" else f"_{split}")
    out = Path(results_dir) / OUT_FOLDER
    out.mkdir(parents=True, exist_ok=True)
    table.to_csv(out / f"{name}.csv", index=False, float_format="%.4f")
    caption = run_caption(
        fields_run,
        f"skin-tf meta-gain, {split} split, {run_name_of(image_run)} vs {run_name_of(fields_run)}, "
        f"paired lesion bootstrap ({n_boot} resamples)",
    )
    figure = plots.paired_class_changes(
        _class_changes(table),
        title=f"What age, sex and site change per class: {run_name_of(fields_run)} − "
        f"{run_name_of(image_run)} ({split})",
        caption=caption,
    )
    plots.save_figure(figure, out / f"{name}.png")
    path = out / f"{name}.md"
    path.write_text(_markdown(table, image_run, fields_run, name, caption))
    return path


def _class_changes(table: pd.DataFrame) -> dict[str, pd.DataFrame]:
    """Per case: a frame indexed by class with columns change, lo, hi (recall differences)."""
    changes = {}
    for case in CASES:
        rows = table[(table["case"] == case) & table["metric"].isin(CLASS_RECALLS)]
        rows = rows.set_index(rows["metric"].str.removeprefix("recall_")).loc[list(CLASSES)]
        changes[case] = rows[["difference", "low", "high"]].set_axis(["change", "lo", "hi"], axis=1)
    return changes


def _markdown(table: pd.DataFrame, image_run: Path, fields_run: Path, name: str, caption: str):
    fields, run = ", ".join(patient_fields(fields_run)), run_name_of(fields_run)
    lines = [
        f"# What the patient fields add: {run}" + ("" if name == run else f" ({name})"),
        "",
        f"`{run}` was trained with the patient fields ({fields}) beside each image; "
        f"`{run_name_of(image_run)}` is the same recipe on the images alone, tested on the same "
        "images. **all given**: the fields run as tested, with every field the data has; "
        "**none given**: its model on the same images with every field withheld. Differences "
        "are fields run − image-only, paired (one lesion bootstrap for both), 95 % intervals.",
        "",
        f"Kept checkpoints: {_kept(image_run)} (image-only); {_kept(fields_run)} (with fields).",
        "",
        "| case | metric | image-only | with fields | difference [95 % CI] |",
        "|---|---|---:|---:|---|",
    ]
    for row in table.itertuples():
        interval = (
            f"{row.difference:+.3f} [{row.low:+.3f}, {row.high:+.3f}]"
            if np.isfinite(row.low) else f"{row.difference:+.3f}"
        )  # fmt: skip
        lines.append(
            f"| {row.case} | {row.metric} | {row.image_only:.3f} | {row.with_fields:.3f} | "
            f"{interval} |"
        )
    lines += ["", f"![per-class recall changes]({name}.png)", "", f"_{caption}_", ""]
    return "\n".join(lines)


def _kept(run_dir: Path) -> str:
    """Which epoch the run kept, and by what: e.g. "epoch 7 of 10 by val_loss"."""
    config = read_json(run_dir / "config.json")
    kept = read_json(run_dir / "metrics.json").get("best_epoch", "?")
    return f"epoch {kept} of {config.get('epochs', '?')} by {config.get('select_metric', '?')}"
