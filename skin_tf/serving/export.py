"""Export a trained run: its best.keras with the run's temperature, melanoma threshold, test
metrics and provenance, checked on its validation images, int8-calibrated on its training
images, with an out-of-distribution guard fitted on them; written by
`skin_tf.serving.archive.export_model` (which says what the folder holds).

    skin-tf export runs/20250101T120000Z__baseline --out saved_models/b0

Clients load it with `skin_tf.serving.served.load_served`, never the Keras training model.

Example:
    >>> export_run("runs/20250101T120000Z__baseline", "saved_models/b0")  # doctest: +SKIP
    PosixPath('saved_models/b0')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import keras
import numpy as np

from skin_tf.data.pipeline import resize_rule
from skin_tf.explain.choice import explain_choice
from skin_tf.runs import patient_fields, read_json
from skin_tf.serving import engines
from skin_tf.serving.archive import check_destination, export_model
from skin_tf.serving.endpoints import input_size
from skin_tf.serving.guard_choice import DEFAULT_GUARD_IMAGES, FittedGuard, fit_run_guard
from skin_tf.serving.guard_sets import BENIGN_PER_FAMILY, run_guard_images


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
    check_destination(Path(out), overwrite)  # before the slow part
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
