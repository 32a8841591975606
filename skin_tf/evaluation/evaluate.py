"""Evaluate a finished run: metrics.json with lesion-bootstrap intervals, TTA, figures, summary.

    skin-tf evaluate runs/20250101T120000Z__baseline-cpu          # from the stored predictions
    skin-tf evaluate runs/20250101T120000Z__baseline-cpu --tta    # + flips/rotations averaged

`evaluate_run` (re)computes `<run>/metrics.json` from `predictions_{val,test}.csv` with
`skin_tf.evaluation.metrics.evaluate_split` (no metric is computed here), adds per-class recall
intervals, draws the run's figures and writes `results/summary_<run-name>.md` plus the
machine-readable `results/runs/<run-name>.json` from which `skin-tf report` rebuilds
`results/README.md`.

Test-time augmentation (`tta=True`) loads best.keras, predicts val and test through the training
pipeline's preprocessing under the 8 flips/90° rotations of each image, averages the 8 softmax
outputs and writes `predictions_{val,test}_tta.csv`. Their metrics go in a separate `"tta"` block
of metrics.json (the plain argmax numbers under `"val"`/`"test"` are never replaced). Once those
files exist, later evaluations without `--tta` recompute the block from them.

Example:
    >>> result = evaluate_run("runs/20250101T120000Z__baseline-cpu")  # doctest: +SKIP
    >>> result["metrics"]["test"]["balanced_accuracy"], result["summary"]  # doctest: +SKIP
    (0.61, PosixPath('results/summary_baseline-cpu.md'))
"""

from __future__ import annotations

import datetime as dt
import math
import os
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.meta_fields import META_FIELDS
from skin_tf.data.sizes import image_hw
from skin_tf.evaluation import plots
from skin_tf.evaluation.compare import paired_difference
from skin_tf.evaluation.metrics import (
    PROB_COLUMNS,
    bootstrap_ci,
    classification_metrics,
    evaluate_split,
    frame_arrays,
    read_predictions,
)
from skin_tf.evaluation.report import write_run_record
from skin_tf.evaluation.run_summary import kept_epoch, write_summary
from skin_tf.runs import json_ready, read_json, run_caption, run_name_of, write_json

if TYPE_CHECKING:
    import keras
    import tensorflow as tf

EVAL_SPLITS = ("val", "test")
TTA_VIEWS = (
    "identity",
    "flip",
    "rot90",
    "rot90+flip",
    "rot180",
    "rot180+flip",
    "rot270",
    "rot270+flip",
)
# A non-square image keeps its shape only under the flips, which include the 180° turn.
TTA_VIEWS_NON_SQUARE = ("identity", "flip", "rot180", "rot180+flip")
DEFAULT_N_BOOT = 1000
TTA_GAIN_METRICS = ("balanced_accuracy", "mel_roc_auc")


# ---------------------------------------------------------------- metrics


def tta_predictions_path(run_dir: str | Path, split: str) -> Path:
    """`<run_dir>/predictions_<split>_tta.csv`."""
    return Path(run_dir) / f"predictions_{split}_tta.csv"


def class_recall_stats() -> dict[str, Callable[[np.ndarray, np.ndarray], float]]:
    """`bootstrap_ci` statistics: recall of each class at the argmax (NaN when it is absent)."""

    def recall_of(index: int) -> Callable[[np.ndarray, np.ndarray], float]:
        def recall(y_true: np.ndarray, probs: np.ndarray) -> float:
            is_class = y_true == index
            if not is_class.any():
                return math.nan
            return float(np.mean(probs[is_class].argmax(axis=1) == index))

        return recall

    return {code: recall_of(i) for i, code in enumerate(CLASSES)}


def evaluate_frame(frame: pd.DataFrame, n_boot: int, seed: int) -> dict[str, Any]:
    """`metrics.evaluate_split` plus lesion-bootstrap intervals of every class's recall.

    n_boot=0 gives the point metrics only (empty `ci`), as a config with `bootstrap: 0` asks.

    Example:
        >>> report = evaluate_frame(read_predictions(run_dir, "test"), 1000, 0)  # doctest: +SKIP
        >>> report["ci_per_class_recall"]["mel"]  # doctest: +SKIP
        (0.48, 0.69)
    """
    y_true, probs, lesions = frame_arrays(frame)
    if n_boot == 0:
        report = classification_metrics(y_true, probs)
        report["n_lesions"] = int(pd.Series(lesions).nunique())
        report["ci"] = {}
        report["ci_per_class_recall"] = {}
        report["ci_method"] = "none (n_boot = 0)"
        return report
    report = evaluate_split(frame, n_boot=n_boot, seed=seed)
    report["ci_per_class_recall"] = bootstrap_ci(
        y_true, probs, lesions, class_recall_stats(), n_boot=n_boot, seed=seed
    )
    return report


def read_tta_predictions(run_dir: str | Path, split: str, base: pd.DataFrame) -> pd.DataFrame:
    """`predictions_<split>_tta.csv` joined to `base` (read_predictions of the same split).

    The TTA file must list exactly the images of the plain predictions; label and lesion_id come
    from `base`, so the TTA frame has the same columns and row order.
    """
    path = tta_predictions_path(run_dir, split)
    tta = pd.read_csv(path, dtype={"image_id": str, "dx": str})
    missing = [c for c in ("image_id", *PROB_COLUMNS) if c not in tta.columns]
    if missing:
        raise ValueError(f"{path} lacks columns {missing}: re-run `skin-tf evaluate --tta`")
    if sorted(tta["image_id"]) != sorted(base["image_id"]):
        raise ValueError(
            f"{path} does not list the same images as predictions_{split}.csv: it comes from an "
            "older prediction; re-run `skin-tf evaluate RUN_DIR --tta`"
        )
    probs = tta.set_index("image_id").loc[base["image_id"], list(PROB_COLUMNS)].to_numpy(float)
    if not np.isfinite(probs).all() or np.abs(probs.sum(axis=1) - 1).max() > 1e-3:
        raise ValueError(f"{path} holds rows that are not probabilities: re-run with --tta")
    frame = base.copy()
    frame[list(PROB_COLUMNS)] = probs
    return frame


# ---------------------------------------------------------------- test-time augmentation


def tta_views(image_shape: Sequence[int | None]) -> tuple[str, ...]:
    """The views TTA averages for images of (height, width): all 8 flips/90° turns of a square,
    the 4 that keep a non-square image's shape (TTA_VIEWS_NON_SQUARE).

    >>> len(tta_views((128, 128))), tta_views((150, 200))[-1]
    (8, 'rot180+flip')
    """
    height, width = image_shape[:2]
    return TTA_VIEWS if height == width and height is not None else TTA_VIEWS_NON_SQUARE


def dihedral_views(images: tf.Tensor) -> tf.Tensor:
    """The views of `tta_views` of a batch (B, H, W, C), stacked: (8·B or 4·B, H, W, C).

    Order as in TTA_VIEWS: rot90 by k = 0..3 (k = 0, 2 when H ≠ W), each followed by its
    left-right mirror.

    Example:
        >>> dihedral_views(tf.zeros([2, 32, 32, 3])).shape  # doctest: +SKIP
        TensorShape([16, 32, 32, 3])
    """
    import tensorflow as tf

    turns = range(4) if len(tta_views(images.shape[1:3])) == len(TTA_VIEWS) else (0, 2)
    views = []
    for k in turns:
        turned = tf.image.rot90(images, k)
        views += [turned, tf.image.flip_left_right(turned)]
    return tf.concat(views, axis=0)


def predict_tta(model: keras.Model, dataset: tf.data.Dataset) -> np.ndarray:
    """Mean softmax over the views of `tta_views` of every image in `dataset` ((images, labels),
    or ({"image", "metadata"}, labels): each view keeps its image's fields).

    Example:
        >>> probs = predict_tta(model, make_dataset(frame, 112, training=False))  # doctest: +SKIP
    """
    import tensorflow as tf

    spec = dataset.element_spec[0]
    n_views = len(tta_views((spec["image"] if isinstance(spec, dict) else spec).shape[1:3]))

    @tf.function(reduce_retracing=True)
    def averaged(features) -> tf.Tensor:
        images = features["image"] if isinstance(features, dict) else features
        views = dihedral_views(images)
        if isinstance(features, dict):
            views = {**features, "image": views}
            views["metadata"] = tf.tile(features["metadata"], [n_views, 1])
        probs = model(views, training=False)
        probs = tf.reshape(tf.cast(probs, tf.float32), [n_views, tf.shape(images)[0], -1])
        return tf.reduce_mean(probs, axis=0)

    batches = [averaged(features).numpy() for features, _ in dataset]
    probs = np.concatenate(batches).astype(np.float64)
    return probs / probs.sum(axis=1, keepdims=True)  # float32 round-off; rows sum to 1 in CSV


def image_frames(
    run_dir: Path, bases: dict[str, pd.DataFrame], data_root: str | os.PathLike | None
) -> dict[str, pd.DataFrame]:
    """Each split's predicted images (row order of `bases`) with their file paths, labels and
    patient fields (age, sex, localization: what a run with `metadata` reads)."""
    from skin_tf.data.ham10000 import read_metadata, resolve_data_root
    from skin_tf.data.splits import index_rows

    if data_root is None:
        data_root = read_json(run_dir / "meta.json").get("data", {}).get("root")
    root = resolve_data_root(data_root)
    index = read_metadata(root).set_index("image_id")
    frames = {}
    for split, base in bases.items():
        frame = index_rows(index, base["image_id"], f"{split} images of {run_dir.name}", root)
        columns = ["image_id", "path", *[c for c in META_FIELDS if c in frame.columns]]
        frames[split] = frame[columns].assign(label=base["label"].to_numpy())
    return frames


def write_tta_predictions(
    run_dir: str | Path,
    bases: dict[str, pd.DataFrame],
    data_root: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> dict[str, Path]:
    """Predict each split of `bases` with TTA from best.keras; write predictions_<split>_tta.csv.

    Images go through `skin_tf.data.pipeline.make_dataset(training=False)` at the run's image size
    and resize mode, exactly as the plain predictions did.
    """
    run_dir = Path(run_dir)
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: TTA needs the run's trained model")
    import keras  # only now: importing TensorFlow takes seconds

    from skin_tf.data.pipeline import make_dataset

    config = read_json(run_dir / "config.json")
    image_size = image_hw(config["image_size"])
    resize = config.get("resize", "squash")
    model = keras.models.load_model(model_path, compile=False)
    paths = {}
    for split, frame in image_frames(run_dir, bases, data_root).items():
        dataset = make_dataset(
            frame, image_size, training=False, batch_size=batch_size, resize=resize, cache=False,
            metadata=config.get("metadata", ()),
        )  # fmt: skip
        probs = predict_tta(model, dataset)
        out = bases[split][["image_id", "dx"]].copy()
        out[list(PROB_COLUMNS)] = probs
        paths[split] = tta_predictions_path(run_dir, split)
        out.to_csv(paths[split], index=False, float_format="%.6g")
    return paths


# ---------------------------------------------------------------- the whole evaluation


def evaluate_run(
    run_dir: str | Path,
    tta: bool = False,
    results_dir: str | Path = Path("results"),
    n_boot: int | None = None,
    seed: int = 0,
    data_root: str | os.PathLike | None = None,
    batch_size: int = 32,
) -> dict[str, Any]:
    """Recompute metrics.json, draw the figures, write the summary and the results record.

    n_boot: bootstrap resamples (None: the run config's `bootstrap`, else 1000). tta=True first
    predicts val/test with test-time augmentation (needs best.keras and the images: data_root
    defaults to the run's meta.json data root). Returns {"metrics", "summary", "record",
    "figures"}.

    Example:
        >>> result = evaluate_run("runs/20250101T120000Z__baseline-cpu", tta=True)  # doctest: +SKIP
        >>> result["metrics"]["tta"]["test"]["accuracy"]  # doctest: +SKIP
    """
    run_dir, results_dir = Path(run_dir), Path(results_dir)
    if not run_dir.is_dir():
        raise FileNotFoundError(f"run directory {run_dir} not found: pass a folder under runs/")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    if n_boot is None:
        n_boot = int(config.get("bootstrap", DEFAULT_N_BOOT))
    if n_boot < 0:
        raise ValueError(f"n_boot must be >= 0 (0 = no intervals), got {n_boot}")

    bases = {split: read_predictions(run_dir, split) for split in EVAL_SPLITS}
    # Keep what training recorded beside the metrics (checkpoint selection, epochs trained).
    metrics_path = run_dir / "metrics.json"
    previous = read_json(metrics_path) if metrics_path.is_file() else {}
    metrics: dict[str, Any] = {
        key: value
        for key, value in previous.items()
        if key not in (*EVAL_SPLITS, "tta", "evaluation")
    }
    metrics.update({split: evaluate_frame(frame, n_boot, seed) for split, frame in bases.items()})
    if tta:
        write_tta_predictions(run_dir, bases, data_root, batch_size)
    if all(tta_predictions_path(run_dir, split).is_file() for split in EVAL_SPLITS):
        tta_frames = {
            split: read_tta_predictions(run_dir, split, base) for split, base in bases.items()
        }
        block: dict[str, Any] = {
            split: evaluate_frame(frame, n_boot, seed) for split, frame in tta_frames.items()
        }
        # The same images with and without TTA: the paired interval says whether averaging
        # helped, on val (where adopting it would be decided) as well as on test.
        block["gain"] = {
            split: paired_difference(bases[split], frame, TTA_GAIN_METRICS, n_boot, seed)
            for split, frame in tta_frames.items()
        }
        views = tta_views(image_hw(config["image_size"]))
        block["views"] = list(views)
        block["method"] = (
            f"mean softmax over the {len(views)} flips/rotations of each image that keep its "
            "shape, best.keras, predictions_{val,test}_tta.csv"
        )
        metrics["tta"] = block
    metrics["evaluation"] = {
        "by": "skin_tf.evaluation.evaluate.evaluate_run",
        "utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "decision": "argmax of the 7 class probabilities (uncalibrated)",
        # config tta=true makes training write flip-averaged predictions_{val,test}.csv
        "plain_predictions_tta": bool(config.get("tta", False)),
        "n_boot": n_boot,
        "seed": seed,
    }
    metrics = json_ready(metrics)
    write_json(metrics_path, metrics)

    figures = draw_figures(run_dir, metrics, results_dir)
    summary = write_summary(run_dir, metrics, figures, results_dir)
    record = write_run_record(run_dir, metrics, figures, summary, results_dir)
    return {"metrics": metrics, "summary": summary, "record": record, "figures": figures}


# ---------------------------------------------------------------- figures


def draw_figures(run_dir: Path, metrics: dict[str, Any], results_dir: Path) -> dict[str, Path]:
    """Confusion matrix (test), training curves (when history.csv exists), per-class recall.

    Files: `<results_dir>/figures/<run-name>_{confusion,curves,recall}.png`.
    """
    run_name = run_name_of(run_dir)
    folder = results_dir / "figures"
    test = metrics["test"]
    figures = {
        "confusion": plots.save_figure(
            plots.confusion_matrices(
                np.asarray(test["confusion_matrix"]),
                CLASSES,
                title=f"Confusion matrix on test (argmax, {test['n_images']} images): {run_name}",
                caption=run_caption(
                    run_dir, "skin_tf.evaluation.evaluate.evaluate_run, test split"
                ),
            ),
            folder / f"{run_name}_confusion.png",
        )
    }
    history_path = run_dir / "history.csv"
    if history_path.is_file():
        history = pd.read_csv(history_path)
        if not history.empty:
            figures["curves"] = plots.save_figure(
                plots.training_curves(
                    history,
                    kept_epoch=kept_epoch(run_dir),
                    title=f"Training curves: {run_name}",
                    caption=run_caption(run_dir, "skin_tf.training.fit, the run's history.csv"),
                ),
                folder / f"{run_name}_curves.png",
            )
    recalls = {}
    for split in EVAL_SPLITS:
        per_class = metrics[split]["per_class"]
        ci = metrics[split].get("ci_per_class_recall", {})
        recalls[split] = pd.DataFrame(
            {
                "recall": [per_class[c]["recall"] for c in CLASSES],
                "lo": [_ci_end(ci, c, 0) for c in CLASSES],
                "hi": [_ci_end(ci, c, 1) for c in CLASSES],
                "support": [per_class[c]["support"] for c in CLASSES],
            },
            index=list(CLASSES),
        )
    figures["recall"] = plots.save_figure(
        plots.per_class_recall(
            recalls,
            title=f"Per-class recall (argmax) with 95% lesion-bootstrap intervals: {run_name}",
            caption=run_caption(
                run_dir, "skin_tf.evaluation.evaluate.evaluate_run, val and test splits"
            ),
        ),
        folder / f"{run_name}_recall.png",
    )
    return figures


def _ci_end(ci: dict[str, Any], code: str, end: int) -> float:
    interval = ci.get(code)
    if interval is None or interval[end] is None:
        return math.nan
    return float(interval[end])


# ---------------------------------------------------------------- command line
