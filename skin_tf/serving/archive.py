"""A Keras classifier → its export folder: a TensorFlow SavedModel with `serve` and `explain`
endpoints, LiteRT flatbuffers beside it, and metadata.json. `skin_tf.serving.export.export_run`
exports a trained run with it; `skin-tf export runs/20250101T120000Z__baseline --out
saved_models/b0` writes `saved_models/b0/`:
- the SavedModel. Both endpoints take a batch of RGB images, shape (N, H, W, 3), any H and W,
  uint8 or float32 pixels 0..255 (`skin_tf.serving.endpoints`):
  `serve(images)` → {"probs" (N, 7) class probabilities, temperature-scaled when the run has a
  temperature, "ood_score" (N,), "in_distribution" (N,)}; `explain(images)` → the same plus
  "heatmap" (N, H, W): a class-activation map of the top class computed in the graph, by the
  method `skin-tf explain-check` chose (metadata.json `explain`: which, and how it scored
  against a centred blob; Grad-CAM, unchecked, without a check). `ood_score` is the
  out-of-distribution guard's score (`skin_tf.serving.guard`; higher: less like the training
  images). TF-Serving sees one signature per endpoint (float32; `serving_default` is serve).
  Exported with guard=False, `serve` returns the probabilities alone, as before the guard
  (metadata format skin_tf.export/1).
- `model.tflite` (LiteRT, float32) and `model_int8.tflite` (int8 backbone calibrated on the run's
  training images), the same probabilities for images already resized to the model's size, and
  the penultimate features the guard scores (`skin_tf.serving.litert`);
- `ood_guard.npz`: the guard's constants, which the LiteRT engines score features with;
- for a run trained with patient fields, every endpoint and both LiteRT models take a second
  input, `metadata` (N, width) float32: the encoded fields (`skin_tf.data.meta_fields`; the
  blank vector: not given), described under `patient_fields` in metadata.json;
- `metadata.json`: classes, input size, resize rule, melanoma threshold with its validation
  sensitivity/specificity, temperature, the run's test metrics, provenance, and under `engines`
  each engine's file, size, quantisation, validation metrics, agreement with `serve` and its own
  melanoma threshold, plus the default engine (`skin_tf.serving.engines`); under `ood_guard` the
  guard's method, how it was fitted and chosen (`skin_tf.serving.guard_choice`) and each
  engine's threshold, chosen on the validation split and its benign shifts (crops, sizes,
  rotations, blur, JPEG, hair removal, lighting: `skin_tf.serving.guard_sets`).

Clients load it with `skin_tf.serving.served.load_served`, never the Keras training model.

Example:
    >>> export_model(model, "saved_models/demo", litert_models=False)  # doctest: +SKIP
    PosixPath('saved_models/demo')
"""

from __future__ import annotations

import datetime as dt
import functools
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES, MEL_INDEX
from skin_tf.data.meta_fields import describe_fields, meta_width
from skin_tf.data.pipeline import resize_rule
from skin_tf.explain.choice import unchecked_choice
from skin_tf.runs import json_ready
from skin_tf.serving import engines, litert
from skin_tf.serving.endpoints import GuardGraph, build_endpoints, fields_width, input_size
from skin_tf.serving.guard import GUARD_FILE, OodGuard
from skin_tf.serving.guard_choice import EngineScores, FittedGuard, metadata_block
from skin_tf.serving.served import DISCLAIMER, FORMAT, FORMAT_V1, METADATA_FILE

INPUT_DTYPES = (tf.float32, tf.uint8)  # float32 first: it is the TF-Serving signature
_CHECK_BATCH = 32


def export_model(
    model: keras.Model,
    out: str | os.PathLike,
    *,
    resize: str = "squash",
    temperature: float | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
    litert_models: bool = True,
    check: engines.CheckImages | None = None,
    calibration: np.ndarray | engines.CheckImages | None = None,
    int8_skipped: str | None = None,
    guard: OodGuard | FittedGuard | None = None,
    guard_skipped: str | None = None,
    explain_method: str = "gradcam",
    fields: tuple[str, ...] = (),
) -> Path:
    """Write `model` as a SavedModel with `serve` and `explain`, LiteRT flatbuffers and
    metadata.json to `out`.

    `explain_method`: the heatmap `explain` computes (`skin_tf.explain.methods`); metadata's
    `explain` block (from `skin_tf.explain.choice.explain_choice`) says how it was chosen, and
    marks it unchecked when `metadata` has none.

    litert_models=False writes the SavedModel alone. `check`: images every engine scores (the
    run's validation split; default: synthetic probe images, which show agreement but give no
    metrics). `calibration`: training images for `model_int8.tflite` (with their fields, as
    CheckImages, for a model with patient fields); without them no int8 model is written and
    `int8_skipped` (or a default reason) is recorded. `fields`: the patient fields a model with
    a second input was trained with, in order (`skin_tf.runs.patient_fields`). `guard`: the
    out-of-distribution guard (`skin_tf.serving.guard_choice.fit_run_guard` fits one for a run):
    every engine then also returns `ood_score` and `in_distribution`, with its own threshold
    chosen on `check` to keep 95 % of those images; without one, `guard_skipped` says why.

    Refuses an existing non-empty `out` unless overwrite=True, and even then only replaces a
    folder that holds an exported model. Everything is written beside `out` first and moved
    into place, so a failed export never leaves half a model behind.

    Example:
        >>> export_model(model, "saved_models/demo", metadata={"note": "test"})  # doctest: +SKIP
    """
    out = Path(out)
    check_destination(out, overwrite)
    _check_fields(model, fields)
    fitted = guard if isinstance(guard, FittedGuard) else None
    guard = fitted.guard if fitted is not None else guard
    guard_graph = None if guard is None else GuardGraph(guard)
    serve, explain = build_endpoints(
        model, resize=resize, temperature=temperature, guard=guard_graph, method=explain_method
    )
    width = fields_width(model)
    with_fields = [tf.TensorSpec([None, width], tf.float32, name="metadata")] if width else []
    for fn in (serve, explain):  # ExportArchive stores the traces a tf.function already has
        for dtype in INPUT_DTYPES:
            images = tf.TensorSpec([None, None, None, 3], dtype, name="images")
            fn.get_concrete_function(images, *with_fields)
    if check is None and (litert_models or guard is not None):
        check = engines.probe_images(input_size(model), fields=fields)
    served_check = None if check is None else _served_outputs(serve, *check.inputs())
    guard_scores = EngineScores(check, fitted.shifted if fitted is not None else {})
    if guard_graph is not None:  # the threshold of what `serve` itself scores, before saving
        guard_scores.add(
            "savedmodel",
            (served_check["probs"], served_check["ood_score"]),
            lambda *inputs: _served_guard_outputs(serve, *inputs),
        )
        guard_graph.threshold.assign(guard_scores.threshold("savedmodel"))
    # No archive.track(model): the endpoints' variables are tracked automatically, and leaving
    # the Keras layer objects out of the SavedModel makes writing it ~1.5x faster.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", serve)
    archive.add_endpoint("explain", explain)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # The endpoints already hold their gradients (explain's tape runs at trace time), so the
        # custom gradients of EfficientNet's swish need not be stored: 10x faster export.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        archive.write_out(str(staging), verbose=False, options=options)
        info = {
            "format": FORMAT if guard is not None else FORMAT_V1,
            "classes": list(CLASSES),
            "class_names": dict(CLASS_NAMES),
            "mel_index": MEL_INDEX,
            "input_size": list(input_size(model)),
            "resize": resize_rule(resize),
            "input": "RGB images (N, H, W, 3), uint8 or float32 pixels 0..255, any H and W",
            "endpoints": _endpoint_notes(guard is not None),
            "temperature": temperature,
            "explain": unchecked_choice(explain_method),
            **(metadata or {}),
        }
        if fields:
            info["input"] += "; and metadata (N, width) float32, the encoded patient fields"
            info["patient_fields"] = describe_fields(fields)
        if litert_models:
            info["engines"] = _write_litert(
                model, staging, served_check["probs"], info["resize"], temperature,
                info.get("mel_threshold"), check, calibration, int8_skipped, guard, guard_scores,
            )  # fmt: skip
        if guard is not None:
            guard.save(staging / GUARD_FILE)
            info["ood_guard"] = metadata_block(
                guard, fitted, check.source, guard_scores.val, guard_scores.shifted,
                guard_scores.correct,
            )  # fmt: skip
        elif guard_skipped:
            info["ood_guard"] = {"written": False, "reason": guard_skipped}
        info["exported_utc"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
        info["disclaimer"] = DISCLAIMER
        (staging / METADATA_FILE).write_text(
            json.dumps(json_ready(info), indent=2, allow_nan=False) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _endpoint_notes(guarded: bool) -> dict[str, str]:
    if not guarded:
        return {
            "serve": "images -> (N, 7) class probabilities (temperature-scaled if any)",
            "explain": "images -> {probs (N, 7), heatmap (N, H, W) of the top class on the "
            "input pixels, 0..1, by the method under `explain`}",
        }
    guard = (
        "ood_score (N,) (higher: less like the training images) and in_distribution (N,) "
        "(ood_score <= the savedmodel threshold of ood_guard)"
    )
    return {
        "serve": "images -> {probs (N, 7) class probabilities (temperature-scaled if any), "
        f"{guard}}}",
        "explain": "images -> {probs (N, 7), heatmap (N, H, W) of the top class on the input "
        f"pixels, 0..1, by the method under `explain`, {guard}}}",
    }


def _check_fields(model: keras.Model, fields: tuple[str, ...]) -> None:
    width = fields_width(model)
    if meta_width(fields) != width:
        raise ValueError(
            f"the model takes {width} floats of patient fields but fields={list(fields)} encode "
            f"to {meta_width(fields)}: pass the fields it was trained with "
            "(skin_tf.runs.patient_fields of its run)"
        )


def _served_guard_outputs(serve: Any, *inputs: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    out = _served_outputs(serve, *inputs)
    return out["probs"], out["ood_score"]


def _served_outputs(serve: Any, images: np.ndarray, *fields: np.ndarray) -> dict[str, np.ndarray]:
    """`serve` on images (and their fields) in batches: {"probs"} and, with a guard,
    "ood_score", "in_distribution"."""
    parts = []
    for i in range(0, len(images), _CHECK_BATCH):
        rows = slice(i, i + _CHECK_BATCH)
        out = serve(images[rows], *(f[rows] for f in fields))
        out = out if isinstance(out, dict) else {"probs": out}
        parts.append({key: value.numpy() for key, value in out.items()})
    return {key: np.concatenate([part[key] for part in parts]) for key in parts[0]}


def _write_litert(
    model: keras.Model,
    folder: Path,
    serve_probs: np.ndarray,
    resize: str,
    temperature: float | None,
    mel_point: dict[str, Any] | None,
    check: engines.CheckImages,
    calibration: np.ndarray | engines.CheckImages | None,
    int8_skipped: str | None,
    guard: OodGuard | None,
    guard_scores: EngineScores,
) -> dict[str, Any]:
    """Convert, write and check the LiteRT models: the `engines` block of metadata.json; with a
    guard, each engine's guard scores go into `guard_scores`."""
    height, width = input_size(model)
    features, layer = guard is not None, None if guard is None else guard.layer
    files = {"tflite": folder / litert.FLOAT_FILE}
    files["tflite"].write_bytes(litert.convert_float(model, temperature, features, layer))
    skipped = {}
    if isinstance(calibration, engines.CheckImages):
        calibration_fields, calibration = calibration.fields, calibration.images
    else:
        calibration_fields = None
    if calibration is not None:
        files["tflite-int8"] = folder / litert.INT8_FILE
        blob = litert.convert_int8(
            model, calibration, temperature, features, layer, calibration_fields
        )
        files["tflite-int8"].write_bytes(blob)
    else:
        skipped["tflite-int8"] = int8_skipped or "no calibration images were given"
    probs = {"savedmodel": serve_probs}
    for engine, path in files.items():
        outputs = functools.partial(_litert_outputs, litert.LiteRTModel(path), guard)
        on_check = outputs(*check.inputs())
        probs[engine] = on_check[0]
        if guard is not None:
            guard_scores.add(engine, on_check, outputs)
    report = engines.engine_report(probs, check, files, mel_point, skipped)
    if calibration is not None:
        report["tflite-int8"]["quantization"] = {
            "scheme": "int8 weights and activations (post-training, full integer) in the "
            f"backbone; {', '.join(litert.FLOAT_OPS_IN_INT8)} and input/output in float32",
            "calibration_images": int(len(calibration)),
        }
    report["runtime"] = litert.RUNTIME
    report["litert_input"] = (
        f"float32 (N, {height}, {width}, 3) pixels 0..255, resized with the `{resize}` "
        "rule exactly as serve does (skin_tf.serving.litert.to_model_size)"
    )
    return report


def _litert_outputs(
    runner: litert.LiteRTModel,
    guard: OodGuard | None,
    images: np.ndarray,
    fields: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray | None]:
    """A LiteRT model's probabilities on images at its size (given their fields, for a model
    with patient fields), in batches, and the guard's scores of the features it outputs beside
    them (None without a guard)."""
    rows = [slice(i, i + _CHECK_BATCH) for i in range(0, len(images), _CHECK_BATCH)]
    parts = [
        runner.predict_with_features(
            images[r].astype(np.float32), None if fields is None else fields[r]
        )
        for r in rows
    ]
    probs = np.concatenate([p for p, _ in parts])
    if guard is None:
        return probs, None
    return probs, guard.score(np.concatenate([f for _, f in parts]), probs)


def check_destination(out: Path, overwrite: bool) -> None:
    """Refuse `out` when it is a file, or holds anything and overwrite=False, or holds
    something other than an exported model (export_run checks it before its slow part)."""
    if out.is_file():
        raise FileExistsError(f"{out} is a file; choose a folder name for the exported model")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; choose another --out or pass "
            "--overwrite (overwrite=True) to replace the exported model there"
        )
    if not (out / "saved_model.pb").is_file():
        raise FileExistsError(
            f"{out} is not an exported model (no saved_model.pb), so it is not replaced even "
            "with overwrite; choose another --out"
        )
