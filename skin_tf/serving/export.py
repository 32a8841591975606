"""Export a trained run: a TensorFlow SavedModel with `serve` and `explain` endpoints, LiteRT
flatbuffers beside it, and metadata.json.

    skin-tf export runs/20250101T120000Z__baseline --out saved_models/b0

writes `saved_models/b0/`:
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
    >>> export_run("runs/20250101T120000Z__baseline", "saved_models/b0")  # doctest: +SKIP
    PosixPath('saved_models/b0')
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
from skin_tf.explain.choice import explain_choice, unchecked_choice
from skin_tf.runs import json_ready, patient_fields, read_json
from skin_tf.serving import engines, litert
from skin_tf.serving.endpoints import GuardGraph, build_endpoints, fields_width, input_size
from skin_tf.serving.guard import GUARD_FILE, OodGuard
from skin_tf.serving.guard_choice import (
    DEFAULT_GUARD_IMAGES,
    EngineScores,
    FittedGuard,
    fit_run_guard,
    metadata_block,
)
from skin_tf.serving.guard_sets import BENIGN_PER_FAMILY, run_guard_images
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
    _check_destination(out, overwrite)
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


def _check_destination(out: Path, overwrite: bool) -> None:
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


# ---------------------------------------------------------------- a run → an exported model


def export_run(
    run_dir: str | os.PathLike,
    out: str | os.PathLike,
    overwrite: bool = False,
    *,
    data_root: str | os.PathLike | None = None,
    litert_models: bool = True,
    int8: bool = True,
    calibration_images: int = engines.DEFAULT_CALIBRATION_IMAGES,
    guard: bool = True,
    guard_images: int = DEFAULT_GUARD_IMAGES,
    shifted_images: int = BENIGN_PER_FAMILY,
) -> Path:
    """Export a run's best.keras with its temperature, threshold, test metrics and provenance.

    The LiteRT models are checked on the run's validation split and the int8 model is calibrated
    on `calibration_images` of its training split (drawn in turn from each class), both read from
    `data_root` (default: the run's own data folder). When those images cannot be read, the float
    model is checked on synthetic probe images instead and no int8 model is written; metadata.json
    says why. int8=False or litert_models=False leave the int8 model or both out.

    The out-of-distribution guard (`skin_tf.serving.guard_choice`) is fitted on `guard_images`
    of the training split (drawn in turn from each class), plain and with benign shifts, and
    its thresholds are chosen on the validation split and `shifted_images` of its images in
    every benign-shift family (`skin_tf.data.shifts`: crops, sizes, rotations, blur, JPEG, hair
    removal, lighting); shifted_images=0 leaves the shifts out. guard=False leaves the guard
    out, and unreadable images leave it out with the reason in metadata.json.

    Example:
        >>> export_run("runs/20250101T120000Z__baseline", "saved_models/b0")  # doctest: +SKIP
        PosixPath('saved_models/b0')
    """
    from skin_tf.evaluation.calibration import read_temperature

    run_dir = Path(run_dir)
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train the run first (skin-tf train)")
    config = read_json(run_dir / "config.json")
    temperature = read_temperature(run_dir)
    metadata = {
        "run": _run_name(run_dir),
        "run_dir": str(run_dir.resolve()),
        "model": config.get("model"),
        "calibrated": temperature is not None,
        "mel_threshold": mel_threshold(run_dir, temperature),
        "test_metrics": _test_metrics(run_dir),
        "tta": {
            "used_in_run": bool(config.get("tta", False)),
            "in_endpoints": False,
            "note": "the endpoints score the image once; test_metrics used flip-averaging (TTA)"
            if config.get("tta")
            else None,
        },
        "provenance": _provenance(run_dir),
        "explain": explain_choice(run_dir),
    }
    _check_destination(Path(out), overwrite)  # before the slow part
    model = keras.models.load_model(model_path, compile=False)
    resize = resize_rule(str(config.get("resize", "squash")))
    check, calibration, skipped = None, None, None
    if litert_models or guard:
        n_calibration = calibration_images if int8 and litert_models else 0
        check, calibration, skipped = _run_images(
            run_dir, input_size(model), resize, data_root, n_calibration
        )
    fitted, guard_skipped = None, "not requested (guard=False / --no-guard)"
    if guard:
        fitted, guard_skipped = _fit_guard(
            model, run_dir, resize, data_root, check, guard_images, shifted_images, temperature
        )
    return export_model(
        model, out, resize=resize, temperature=temperature, metadata=metadata,
        overwrite=overwrite, litert_models=litert_models, check=check,
        calibration=calibration, int8_skipped=skipped, guard=fitted, guard_skipped=guard_skipped,
        explain_method=metadata["explain"]["method"], fields=patient_fields(run_dir),
    )  # fmt: skip


def _fit_guard(
    model: keras.Model,
    run_dir: Path,
    resize: str,
    data_root: str | os.PathLike | None,
    check: engines.CheckImages | None,
    n_images: int,
    n_shifted: int,
    temperature: float | None,
) -> tuple[FittedGuard | None, str | None]:
    """The run's out-of-distribution guard, or (None, why there is none).

    Fitted on `n_images` training images (and, each with one benign shift, the same images
    read from disk); thresholded on the validation images `check` and `n_shifted` of them in
    every benign-shift family (`skin_tf.serving.guard_sets`). n_shifted=0 leaves the shifts out.
    """
    if check is None or check.labels is None:
        return None, "the run's validation images could not be read: no threshold to choose"
    size = input_size(model)
    try:
        train, shifted_train, shifted = run_guard_images(
            run_dir, size, resize, data_root, n_images, n_shifted
        )
    except (ValueError, OSError) as err:  # DataError and ImageError are ValueErrors
        return None, f"the run's training or validation images could not be read ({err})"
    fitted = fit_run_guard(
        model, train, check, shifted, shifted_train=shifted_train, temperature=temperature
    )
    return fitted, None


def _run_images(
    run_dir: Path,
    size: tuple[int, int],
    resize: str,
    data_root: str | os.PathLike | None,
    n_calibration: int,
) -> tuple[engines.CheckImages | None, engines.CheckImages | None, str | None]:
    """(validation images, int8 calibration images, why there is no int8 model) of a run; no
    validation images either when the run's images cannot be read."""
    not_requested = "not requested (int8=False / --no-int8)"
    try:
        check = engines.run_images(run_dir, "val", size, resize, data_root)
        if n_calibration <= 0:
            return check, None, not_requested
        train = engines.run_images(run_dir, "train", size, resize, data_root, n_calibration)
    except (ValueError, OSError) as err:  # DataError is a ValueError
        unreadable = f"the run's images could not be read ({err})"
        return None, None, unreadable if n_calibration > 0 else not_requested
    return check, train, None


def mel_threshold(run_dir: Path, temperature: float | None) -> dict[str, Any]:
    """The melanoma operating point of operating_point.json, checked against the temperature."""
    path = run_dir / "operating_point.json"
    if not path.is_file():
        return {
            "value": None,
            "note": "no operating_point.json in the run: run `skin-tf threshold` to choose one "
            "on validation; until then no melanoma flag is given",
        }
    point = read_json(path)
    chosen_with = point.get("temperature")
    if point.get("calibrated") != (temperature is not None) or (
        temperature is not None and not np.isclose(chosen_with or 0.0, temperature)
    ):
        raise ValueError(
            f"{path} was chosen on {'calibrated' if point.get('calibrated') else 'raw'} "
            f"probabilities (temperature {chosen_with}) but the run's temperature is "
            f"{temperature}: re-run `skin-tf threshold` on this run, then export"
        )
    val = point.get("val", {})
    return {
        "value": float(point["threshold"]),
        "target_sensitivity": point.get("target_sensitivity"),
        "calibrated": point.get("calibrated"),
        "chosen_on": point.get("chosen_on", "val"),
        "val_sensitivity": val.get("sensitivity"),
        "val_specificity": val.get("specificity"),
        "test": {k: point.get("test", {}).get(k) for k in ("sensitivity", "specificity")},
        "rule": "melanoma flag when P(mel) >= value",
        "note": point.get("note"),
    }


def _test_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    return metrics.get("test", metrics) if isinstance(metrics, dict) else metrics


def _provenance(run_dir: Path) -> dict[str, Any]:
    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: every run directory needs its meta.json")
    from skin_tf.runs import provenance

    return {"caption": provenance(run_dir), "meta": read_json(meta_path)}


def _run_name(run_dir: Path) -> str:
    from skin_tf.runs import run_name_of

    return run_name_of(run_dir)
