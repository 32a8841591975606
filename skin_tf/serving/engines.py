"""The engines of an exported model, checked at export: which are faithful, how each scores on the
run's validation split, and which one `predict` and the page use by default.

Engines: `savedmodel` (the SavedModel's `serve`), `tflite` (LiteRT float32, `model.tflite`) and
`tflite-int8` (LiteRT with an int8 backbone, `model_int8.tflite`). At export every engine scores
the same images, the run's validation split (or, for a bare model without a run, a few synthetic
probe images, which prove agreement but give no metrics), and metadata.json records:

- `tflite` is *faithful* when no probability differs from `serve`'s by more than 1e-4; it then
  shares the run's melanoma threshold;
- `tflite-int8` *passes* when its validation balanced accuracy is at most 1 point below the float
  model's and its melanoma threshold could be re-chosen on validation for it (with
  `skin_tf.evaluation.threshold.choose_operating_point`, at the run's target sensitivity);
- the default is the fastest engine that qualifies: `tflite-int8`, else `tflite`, else
  `savedmodel`.

Example:
    >>> default_engine({"tflite": {"faithful": True}, "tflite-int8": {"gate": {"passed": False}}})
    'tflite'
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skin_tf.data.ham10000 import CLASSES, MEL_INDEX

ENGINES = ("savedmodel", "tflite", "tflite-int8")
FASTEST_FIRST = ("tflite-int8", "tflite", "savedmodel")
FLOAT_TOLERANCE = 1e-4  # max |p_tflite - p_serve| for the float model to count as faithful
INT8_MAX_LOSS = 0.01  # validation balanced accuracy the int8 model may lose (1 point)
DEFAULT_CALIBRATION_IMAGES = 256


@dataclass(frozen=True)
class CheckImages:
    """Images at the model's size (uint8 (N, H, W, 3)) that every engine scores at export, with
    their labels (None for synthetic probe images), a phrase saying where they come from and,
    for a model with patient fields, each image's encoded fields (N, width)."""

    images: np.ndarray
    labels: np.ndarray | None
    source: str
    fields: np.ndarray | None = None

    def inputs(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, ...]:
        """(images,) or (images, fields) of rows start:stop: what an engine is called with."""
        rows = slice(start, stop)
        if self.fields is None:
            return (self.images[rows],)
        return self.images[rows], self.fields[rows]


def probe_images(
    size: int | tuple[int, int], n: int = 8, seed: int = 0, fields: tuple[str, ...] = ()
) -> CheckImages:
    """Synthetic smooth blobs on noisy skin-coloured backgrounds: enough to compare engines when
    a model is exported without a run (no labels, so no metrics). `fields`: the patient fields
    of a model that takes them, given as "not given" (the blank vector) for every image.

    Example:
        >>> probe_images(32, n=2).images.shape, probe_images((24, 32), n=1).images.shape
        ((2, 32, 32, 3), (1, 24, 32, 3))
    """
    from skin_tf.data.sizes import image_hw

    height, width = image_hw(size)
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:height, 0:width] / np.array([height, width])[:, None, None]
    images = []
    for _ in range(n):
        cy, cx, r = rng.uniform(0.3, 0.7), rng.uniform(0.3, 0.7), rng.uniform(0.1, 0.3)
        blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / r**2)[..., None]
        skin = rng.uniform(120, 230, 3) * (1 - rng.uniform(0.3, 0.8) * blob)
        images.append(np.clip(skin + rng.normal(0, 12, (height, width, 3)), 0, 255))
    blank = None
    if fields:
        from skin_tf.data.meta_fields import blank_vector

        blank = np.tile(blank_vector(fields), (n, 1))
    return CheckImages(
        np.stack(images).astype(np.uint8), None, f"{n} synthetic probe images", blank
    )


def run_images(
    run_dir: str | os.PathLike,
    split: str,
    size: int | tuple[int, int],
    resize: str,
    data_root: str | os.PathLike | None = None,
    limit: int | None = None,
    seed: int = 0,
) -> CheckImages:
    """A run's `split` images (its splits.csv, files from `data_root` or the run's own data
    folder), decoded and resized by the training pipeline, with their patient fields when the
    run was trained with some (`run_fields`). `limit` keeps that many, drawn in turn from each
    class (seeded), e.g. for int8 calibration.

    Example:
        >>> run_images("runs/x", "val", 224, "squash").source  # doctest: +SKIP
        'val split of run x (1001 images)'
    """
    from skin_tf.data.ham10000 import resolve_data_root
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.runs import read_json, run_name_of

    run_dir = Path(run_dir)
    if data_root is None:
        data_root = read_json(run_dir / "meta.json").get("data", {}).get("root")
    frame = split_frames(run_dir / "splits.csv", resolve_data_root(data_root))[split]
    if frame.empty:
        raise ValueError(f"the {split} split of {run_dir} has no images")
    if limit is not None and limit < len(frame):
        frame = frame.iloc[class_turns(frame["label"].to_numpy(), limit, seed)]
    dataset = make_dataset(frame, size, training=False, batch_size=64, resize=resize, cache=False)
    images = np.concatenate([batch.numpy().astype(np.uint8) for batch, _ in dataset])
    source = f"{split} split of run {run_name_of(run_dir)} ({len(frame)} images)"
    return CheckImages(images, frame["label"].to_numpy(), source, run_fields(run_dir, frame))


def run_fields(run_dir: str | os.PathLike, frame) -> np.ndarray | None:
    """The encoded patient fields of `frame`'s rows that the run was trained with, as given in
    the data's metadata (None for an image-only run)."""
    from skin_tf.data.meta_fields import encode_fields
    from skin_tf.runs import patient_fields

    fields = patient_fields(run_dir)
    return encode_fields(frame, fields) if fields else None


def class_turns(labels: np.ndarray, n: int, seed: int) -> np.ndarray:
    """Row positions of `n` images taken one class at a time (shuffled within each class): a
    sample in which the rare classes count (int8 calibration, the guard's fitting and shifts)."""
    rng = np.random.default_rng(seed)
    queues = [list(rng.permutation(np.flatnonzero(labels == c))) for c in range(len(CLASSES))]
    picked: list[int] = []
    while len(picked) < n:
        for queue in queues:
            if queue and len(picked) < n:
                picked.append(int(queue.pop()))
    return np.array(sorted(picked))


# ---------------------------------------------------------------- what metadata.json records


def engine_report(
    probs: dict[str, np.ndarray],
    check: CheckImages,
    files: dict[str, Path],
    mel_point: dict[str, Any] | None,
    skipped: dict[str, str] | None = None,
) -> dict[str, Any]:
    """The `engines` block of metadata.json from every engine's probabilities on `check`.

    probs: engine → (N, 7) on check.images ("savedmodel" required); files: engine → its .tflite
    file; mel_point: the run's melanoma operating point as export records it (value None or
    missing when the run has none); skipped: engine → why it was not written.
    """
    labels, base = check.labels, probs["savedmodel"]
    block: dict[str, Any] = {"checked_on": check.source}
    block["savedmodel"] = {
        "files": ["saved_model.pb", "variables/"],
        "validation": _metrics(labels, base),
    }
    run_value = (mel_point or {}).get("value")
    if "tflite" in probs:
        diff = _agreement(probs["tflite"], base)
        block["tflite"] = {
            **_file_facts(files["tflite"]),
            "quantization": "none (float32)",
            "validation": _metrics(labels, probs["tflite"]),
            "agreement_with_savedmodel": diff,
            "faithful": diff["max_abs_diff"] <= FLOAT_TOLERANCE,
            "mel_threshold": _point_at(labels, probs["tflite"], run_value),
        }
    if "tflite-int8" in probs:
        int8 = probs["tflite-int8"]
        facts = _file_facts(files["tflite-int8"])
        if "tflite" in block:
            facts["size_vs_float"] = facts["bytes"] / block["tflite"]["bytes"]
        point = _rechosen_point(labels, int8, mel_point)
        block["tflite-int8"] = {
            **facts,
            "validation": _metrics(labels, int8),
            "agreement_with_float": _agreement(int8, probs.get("tflite", base)),
            "mel_threshold": point,
            "gate": _gate(block.get("tflite", block["savedmodel"])["validation"],
                          _metrics(labels, int8), point, run_value),
        }  # fmt: skip
    for engine, reason in (skipped or {}).items():
        block[engine] = {"written": False, "reason": reason}
    block["default"] = default_engine(block)
    return block


def default_engine(block: dict[str, Any]) -> str:
    """The fastest engine that qualifies: tflite-int8 that passed its gate, else a faithful
    tflite, else savedmodel."""
    if (block.get("tflite-int8") or {}).get("gate", {}).get("passed"):
        return "tflite-int8"
    if (block.get("tflite") or {}).get("faithful"):
        return "tflite"
    return "savedmodel"


def _file_facts(path: Path) -> dict[str, Any]:
    return {"file": path.name, "bytes": path.stat().st_size}


def _metrics(labels: np.ndarray | None, probs: np.ndarray) -> dict[str, Any] | None:
    if labels is None:
        return None
    from skin_tf.evaluation.metrics import classification_metrics

    metrics = classification_metrics(labels, probs)
    keys = ("n_images", "balanced_accuracy", "accuracy", "macro_f1", "mel_roc_auc")
    return {key: _finite(metrics[key]) for key in keys}


def _finite(value: Any) -> Any:
    return None if isinstance(value, float) and math.isnan(value) else value


def _agreement(probs: np.ndarray, reference: np.ndarray) -> dict[str, Any]:
    diff = np.abs(np.asarray(probs, np.float64) - np.asarray(reference, np.float64))
    return {
        "images": int(len(probs)),
        "top1_agreement": float(np.mean(probs.argmax(axis=1) == reference.argmax(axis=1))),
        "max_abs_diff": float(diff.max()),
        "mean_abs_diff": float(diff.mean()),
    }


def _point_at(labels: np.ndarray | None, probs: np.ndarray, value: float | None) -> dict:
    """The run's threshold, with the validation sensitivity/specificity this engine gives it."""
    if value is None:
        return {"value": None, "note": "the run has no melanoma operating point"}
    point: dict[str, Any] = {"value": float(value), "chosen_on": "val (the run's threshold)"}
    if labels is not None and _both_kinds(labels):
        from skin_tf.evaluation.threshold import binary_metrics_at

        rates = binary_metrics_at(labels == MEL_INDEX, probs[:, MEL_INDEX], float(value))
        point.update(val_sensitivity=rates["sensitivity"], val_specificity=rates["specificity"])
    return point


def _rechosen_point(
    labels: np.ndarray | None, probs: np.ndarray, mel_point: dict[str, Any] | None
) -> dict[str, Any]:
    """The int8 model's own threshold, chosen on validation at the run's target sensitivity."""
    if (mel_point or {}).get("value") is None:
        return {"value": None, "note": "the run has no melanoma operating point"}
    if labels is None or not _both_kinds(labels):
        return {
            "value": None,
            "note": "not re-chosen: needs validation images with and without melanoma",
        }
    from skin_tf.evaluation.threshold import choose_operating_point

    target = float(mel_point.get("target_sensitivity") or 0.85)
    try:
        chosen = choose_operating_point(labels == MEL_INDEX, probs[:, MEL_INDEX], target)
    except ValueError as err:  # e.g. scores that do not separate melanoma at all
        return {"value": None, "note": f"not re-chosen: {err}"}
    return {
        "value": chosen.threshold,
        "target_sensitivity": target,
        "chosen_on": "val (re-chosen for this model)",
        "reached": chosen.reached,
        "val_sensitivity": chosen.sensitivity,
        "val_specificity": chosen.specificity,
        "note": chosen.note,
        "rule": "melanoma flag when P(mel) >= value",
    }


def _both_kinds(labels: np.ndarray) -> bool:
    is_mel = np.asarray(labels) == MEL_INDEX
    return bool(is_mel.any() and (~is_mel).any())


def _gate(
    reference: dict[str, Any] | None,
    int8: dict[str, Any] | None,
    point: dict[str, Any],
    run_value: float | None,
) -> dict[str, Any]:
    rule = (
        f"validation balanced accuracy at most {INT8_MAX_LOSS:g} below the float model's, and "
        "the melanoma threshold re-chosen on validation (when the run has one)"
    )
    if reference is None or int8 is None:
        return {"rule": rule, "passed": False, "why": "no validation images with labels"}
    loss = reference["balanced_accuracy"] - int8["balanced_accuracy"]
    threshold_ok = run_value is None or point.get("value") is not None
    passed = bool(loss <= INT8_MAX_LOSS + 1e-12 and threshold_ok)
    why = (
        "passed"
        if passed
        else f"loses {loss:.3f} balanced accuracy"
        if not loss <= INT8_MAX_LOSS + 1e-12
        else f"its melanoma threshold could not be re-chosen ({point.get('note')})"
    )
    return {
        "rule": rule,
        "float_balanced_accuracy": reference["balanced_accuracy"],
        "int8_balanced_accuracy": int8["balanced_accuracy"],
        "loss": loss,
        "passed": passed,
        "why": why,
    }
