"""What the Streamlit page (`skin_tf/serving/app.py`) does besides Streamlit calls: find the
exported models, analyse one upload, and write the top-k table, melanoma flag, CSV and provenance.

Images are read and validated by `skin_tf.data.images.prepare_image`, scored by the export's chosen
engine (`skin_tf.serving.served.load_served`: the SavedModel or a LiteRT model), explained by the
SavedModel's `explain` endpoint and drawn with `skin_tf.explain.gradcam.overlay`; nothing here
loads the Keras training model. Starting the page
(`skin-tf app`) and the settings it hands over are in `skin_tf.serving.launch`.

Example:
    >>> find_models("saved_models")  # doctest: +SKIP
    ([PosixPath('saved_models/b0')], [])
    >>> top_k_frame(np.eye(7)[4], 1)["class"].tolist()
    ['mel']
"""

from __future__ import annotations

import io
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd
from PIL import Image

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES, MEL_INDEX
from skin_tf.serving.launch import PageSettings, is_exported_model

if TYPE_CHECKING:
    from skin_tf.serving.served import ServedModel

UPLOAD_TYPES = ["jpg", "jpeg", "png"]
MAX_DISPLAY_SIDE = 1024  # pictures shown in the browser; the model always sees the full image
_GREY_CAUTION = (
    "The model was trained on colour photographs, so treat its output on a greyscale image "
    "with extra caution."
)
_MODE_NOTES = {
    "1": "1-bit black-and-white image: converted to RGB. " + _GREY_CAUTION,
    "L": "greyscale image: converted to RGB (three equal channels). " + _GREY_CAUTION,
    "LA": "greyscale image with transparency: composited on white, converted to RGB. "
    + _GREY_CAUTION,
    "I": "32-bit greyscale image: converted to 8-bit RGB. " + _GREY_CAUTION,
    "I;16": "16-bit greyscale image: its range rescaled to 8 bits, converted to RGB. "
    + _GREY_CAUTION,
    "F": "floating-point greyscale image: converted to 8-bit RGB. " + _GREY_CAUTION,
    "RGBA": "image with transparency (alpha channel): composited on a white background.",
    "PA": "palette image with transparency: composited on a white background.",
    "P": "palette (indexed-colour) image: converted to RGB.",
    "CMYK": "CMYK image (print colours): converted to RGB; colours may differ slightly from "
    "the original camera's.",
    "YCbCr": "YCbCr image: converted to RGB.",
    "LAB": "Lab image: converted to RGB.",
}
for _mode in ("I;16B", "I;16L"):
    _MODE_NOTES[_mode] = _MODE_NOTES["I;16"]
_EXIF_ORIENTATION = 0x0112


# ---------------------------------------------------------------- model discovery


def find_models(models_dir: str | os.PathLike) -> tuple[list[Path], list[Path]]:
    """(exported model folders, other folders) directly inside `models_dir`, sorted by name.

    Hidden folders (an export in progress writes `.NAME.xxxx` beside its target) are skipped.

    Example:
        >>> find_models("no/such/folder")
        ([], [])
    """
    models_dir = Path(models_dir)
    if not models_dir.is_dir():
        return [], []
    folders = sorted(p for p in models_dir.iterdir() if p.is_dir() and not p.name.startswith("."))
    exported = [p for p in folders if is_exported_model(p)]
    return exported, [p for p in folders if p not in exported]


def model_choices(settings: PageSettings) -> tuple[list[Path], int, list[Path]]:
    """(options for the model picker, index of the one to open first, skipped folders).

    The `--model` folder comes first when it is not inside the models folder; it is listed
    even when it is not a valid export, so the page can say what is wrong with it.
    """
    exported, skipped = find_models(settings.models_dir)
    if settings.model is None:
        return exported, 0, skipped
    resolved = [p.resolve() for p in exported]
    if settings.model.resolve() in resolved:
        return exported, resolved.index(settings.model.resolve()), skipped
    return [settings.model, *exported], 0, skipped


def model_version(path: Path) -> float | None:
    """Modification time of the export's metadata.json (None when missing): a cache key that
    changes when a model is exported again into the same folder."""
    try:
        return (Path(path) / "metadata.json").stat().st_mtime
    except OSError:
        return None


def model_label(path: Path) -> str:
    """Picker label: folder name, run and backbone from metadata.json (without loading the graph).

    Example:
        >>> model_label(Path("saved_models/missing"))
        'missing (not an exported model)'
    """
    try:
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError):
        return f"{path.name} (not an exported model)"
    details = [str(metadata[k]) for k in ("run", "model") if metadata.get(k)]
    size = metadata.get("input_size")
    if size:
        details.append(f"{size[0]} px")
    return f"{path.name} ({', '.join(details)})" if details else path.name


def no_model_instructions(settings: PageSettings) -> str:
    """Markdown telling how to get a model onto the page."""
    where = settings.models_dir
    exported, skipped = find_models(where)
    lines = [
        f"**No exported model found** in `{where}`"
        + (f" (the folder `{where}` does not exist)." if not where.is_dir() else "."),
    ]
    if skipped:
        names = ", ".join(f"`{p.name}`" for p in skipped)
        lines.append(f"Folders there without `saved_model.pb` + `metadata.json`: {names}.")
    lines += [
        "",
        "To get one:",
        "1. Train a run: `skin-tf train --config baseline` (writes `runs/<time>__<name>/`).",
        "2. Optionally choose the melanoma threshold on validation: `skin-tf threshold RUN_DIR`.",
        f"3. Export it: `skin-tf export RUN_DIR --out {where}/NAME`.",
        f"4. Start the page again: `skin-tf app` (or `skin-tf app --model {where}/NAME`).",
    ]
    return "\n".join(lines)


# ---------------------------------------------------------------- one upload


@dataclass(frozen=True)
class UploadResult:
    """What the page shows for one uploaded file: either an error or a prediction."""

    name: str
    error: str | None = None
    probs: np.ndarray | None = None  # (7,) probabilities in CLASSES order, from the engine
    display: np.ndarray | None = None  # RGB uint8, longest side <= MAX_DISPLAY_SIDE
    heatmap: np.ndarray | None = None  # Grad-CAM, 0..1 (model grid or display)
    heatmap_class: str | None = None  # the class the Grad-CAM is for (the SavedModel's top class)
    size: tuple[int, int] | None = None  # original (width, height)
    notes: tuple[str, ...] = field(default_factory=tuple)

    @property
    def top_class(self) -> str | None:
        return None if self.probs is None else CLASSES[int(np.argmax(self.probs))]


def analyse_upload(served: ServedModel, name: str, data: bytes) -> UploadResult:
    """Validate, predict and explain one upload; an unreadable file gives `error`, not a raise.

    The probabilities come from the served engine; the Grad-CAM map from the SavedModel's
    `explain` endpoint, for its own top class (which a LiteRT engine almost always shares).

    Example:
        >>> analyse_upload(served, "a.jpg", b"hello").error  # doctest: +SKIP
        'not an image (no known image format)'
    """
    from skin_tf.data.images import ImageError, prepare_image

    height, width = served.image_size
    if height != width:
        raise ValueError(
            f"the model's input is {height}x{width}; skin_tf's pipeline only prepares square "
            "inputs: export a model trained with one image_size"
        )
    try:
        prepared = prepare_image(data, int(height), served.resize)
    except ImageError as err:
        return UploadResult(name=name, error=str(err))
    explained, heatmaps = served.explain(prepared.model_input)
    probs = (
        explained if served.engine == "savedmodel" else served.predict_many([prepared.model_input])
    )
    original = prepared.original
    display = _fit_side(original, MAX_DISPLAY_SIDE)
    heatmap = heatmaps[0]
    if heatmap.shape == original.shape[:2] and display.shape != original.shape:
        # A full-size map (the model got the full image): shrink it with the picture.
        heatmap = _resize_float(heatmap, display.shape[:2])
    return UploadResult(
        name=name,
        probs=probs[0],
        display=display,
        heatmap=heatmap,
        heatmap_class=CLASSES[int(np.argmax(explained[0]))],
        size=(original.shape[1], original.shape[0]),
        notes=tuple(conversion_notes(data)),
    )


def gradcam_caption(result: UploadResult) -> str:
    """The caption under the Grad-CAM overlay; says so when the map is for another class than the
    engine's top class.

    Example:
        >>> gradcam_caption(UploadResult("a", probs=np.eye(7)[4], heatmap_class="mel"))[:34]
        'Grad-CAM for the top class (mel): '
    """
    if result.heatmap_class in (None, result.top_class):
        return f"Grad-CAM for the top class ({result.top_class}): where the model looked, not why"
    return (
        f"Grad-CAM for {result.heatmap_class}, the SavedModel's top class (this engine's top "
        f"class is {result.top_class}): where the model looked, not why"
    )


def conversion_notes(data: bytes) -> list[str]:
    """What reading the image changed (colour mode, EXIF rotation), for a note under it.

    Reads only the header; the image is assumed to have passed `prepare_image` already.

    Example:
        >>> conversion_notes(_png_bytes(np.zeros((40, 40), np.uint8)))[0][:15]
        'greyscale image'
    """
    try:
        with Image.open(io.BytesIO(data)) as image:
            mode = image.mode
            rotated = image.getexif().get(_EXIF_ORIENTATION, 1) not in (None, 1)
            transparent = "transparency" in image.info
    except (OSError, SyntaxError, ValueError):
        return []
    notes = []
    if mode in _MODE_NOTES:
        notes.append(_MODE_NOTES[mode])
    elif mode != "RGB":
        notes.append(f"{mode} image: converted to RGB.")
    if transparent and mode not in {"RGBA", "LA", "PA"}:
        notes.append("transparent pixels composited on a white background.")
    if rotated:
        notes.append("rotated upright following the image's EXIF orientation tag.")
    return notes


def _png_bytes(pixels: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format="PNG")
    return buffer.getvalue()


def _fit_side(image: np.ndarray, max_side: int) -> np.ndarray:
    height, width = image.shape[:2]
    scale = max_side / max(height, width)
    if scale >= 1:
        return image
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    return np.asarray(Image.fromarray(image).resize(size, Image.Resampling.LANCZOS))


def _resize_float(values: np.ndarray, shape: tuple[int, int]) -> np.ndarray:
    picture = Image.fromarray(np.asarray(values, np.float32), mode="F")
    resized = picture.resize((shape[1], shape[0]), Image.Resampling.BILINEAR)
    return np.clip(np.asarray(resized, np.float32), 0.0, 1.0)


# ---------------------------------------------------------------- what the page writes


def top_k_frame(probs: np.ndarray, k: int) -> pd.DataFrame:
    """The k most probable classes, most probable first: columns class, name, probability.

    Example:
        >>> top_k_frame(np.eye(7)[4], 2)["class"].tolist()
        ['mel', 'akiec']
    """
    if not 1 <= k <= len(CLASSES):
        raise ValueError(f"k must be between 1 and {len(CLASSES)}, got {k}")
    order = np.argsort(-np.asarray(probs), kind="stable")[:k]
    return pd.DataFrame(
        {
            "class": [CLASSES[i] for i in order],
            "name": [CLASS_NAMES[CLASSES[i]] for i in order],
            "probability": [float(probs[i]) for i in order],
        }
    )


def top_k_chart(top: pd.DataFrame):
    """Horizontal Altair bars of `top_k_frame` on a fixed 0..1 axis, melanoma in red.

    Example:
        >>> top_k_chart(top_k_frame(np.eye(7)[4], 3)).to_dict()["layer"][0]["mark"]["type"]
        'bar'
    """
    import altair as alt

    data = top.assign(is_mel=top["class"] == CLASSES[MEL_INDEX])
    base = alt.Chart(data).encode(
        y=alt.Y("class:N", sort="-x", title=None, axis=alt.Axis(labelFontSize=13)),
        x=alt.X("probability:Q", scale=alt.Scale(domain=[0, 1]), title="probability"),
        tooltip=["class", "name", alt.Tooltip("probability:Q", format=".3f")],
    )
    bars = base.mark_bar().encode(
        color=alt.condition(alt.datum.is_mel, alt.value("#c0392b"), alt.value("#4c78a8"))
    )
    labels = base.mark_text(align="left", dx=3).encode(text=alt.Text("probability:Q", format=".3f"))
    return (bars + labels).properties(height=chart_height(len(top)))


def chart_height(k: int) -> int:
    """Pixels for a top-k bar chart: a fixed band per class plus the axis."""
    return 50 + 32 * k


def mel_flag(probs: np.ndarray, threshold: float | None) -> bool | None:
    """P(mel) >= threshold (the exported rule); None when the model has no operating point."""
    return None if threshold is None else bool(float(probs[MEL_INDEX]) >= threshold)


def mel_flag_text(probs: np.ndarray, point: Mapping[str, Any]) -> str:
    """One markdown line: P(mel) against the engine's validated threshold (`ServedModel.mel_point`)
    and its validation figures.

    Example:
        >>> point = {"value": 0.3, "val_sensitivity": 0.86, "val_specificity": 0.7}
        >>> mel_flag_text(np.eye(7)[4], point)[:58]
        '**Melanoma flag raised**: P(mel) = 1.000 ≥ threshold 0.300'
    """
    point = point or {}
    threshold = point.get("value")
    p_mel = float(probs[MEL_INDEX])
    if threshold is None:
        return (
            f"P(mel) = {p_mel:.3f}. **No melanoma flag**: this model has no validated operating "
            "point (run `skin-tf threshold` on its run, then export it again)."
        )
    figures = (
        f"validation sensitivity {_number(point.get('val_sensitivity'))}, "
        f"specificity {_number(point.get('val_specificity'))}"
    )
    if p_mel >= threshold:
        return (
            f"**Melanoma flag raised**: P(mel) = {p_mel:.3f} ≥ threshold {threshold:.3f} "
            f"({figures})"
        )
    return f"No melanoma flag: P(mel) = {p_mel:.3f} < threshold {threshold:.3f} ({figures})"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


def predictions_frame(
    results: Sequence[UploadResult],
    threshold: float | None,
    model_name: str,
    engine: str = "savedmodel",
) -> pd.DataFrame:
    """One row per upload: image, model, engine, p_<class>…, top_class, mel_threshold, mel_flag,
    notes, error (failed uploads keep their row, with empty probabilities and the reason).

    Example:
        >>> predictions_frame([UploadResult("x.jpg", error="not an image")], 0.3, "b0").error[0]
        'not an image'
    """
    rows = []
    for result in results:
        row: dict[str, Any] = {"image": result.name, "model": model_name, "engine": engine}
        probs = result.probs
        for i, code in enumerate(CLASSES):
            row[f"p_{code}"] = None if probs is None else round(float(probs[i]), 6)
        row["top_class"] = result.top_class
        row["mel_threshold"] = threshold
        row["mel_flag"] = None if probs is None else mel_flag(probs, threshold)
        row["notes"] = " ".join(result.notes) or None
        row["error"] = result.error
        rows.append(row)
    return pd.DataFrame(rows)


def provenance_markdown(metadata: Mapping[str, Any]) -> str:
    """Markdown bullets: what produced the model, how it was validated, when it was exported.

    Example:
        >>> provenance_markdown({"run": "b0", "model": "efficientnet_b0"}).splitlines()[0]
        '- Run: `b0` (efficientnet_b0)'
    """
    lines = [f"- Run: `{metadata.get('run', '?')}` ({metadata.get('model', '?')})"]
    caption = (metadata.get("provenance") or {}).get("caption")
    if caption:
        lines.append(f"- Trained on: {caption}")
    sha = ((metadata.get("provenance") or {}).get("meta") or {}).get("git_sha")
    if sha:
        lines.append(f"- Code: git `{str(sha)[:10]}`")
    size = metadata.get("input_size")
    if size:
        lines.append(f"- Input: {size[0]}×{size[1]} px, resize rule `{metadata.get('resize')}`")
    temperature = metadata.get("temperature")
    lines.append(
        f"- Calibration: temperature {temperature:.3f} (fitted on validation)"
        if isinstance(temperature, int | float)
        else "- Calibration: none (raw softmax probabilities)"
    )
    point = metadata.get("mel_threshold") or {}
    if point.get("value") is not None:
        target = point.get("target_sensitivity")
        lines.append(
            f"- Melanoma threshold {point['value']:.3f}, chosen on {point.get('chosen_on', 'val')}"
            + (f" for sensitivity ≥ {target:.2f}" if isinstance(target, int | float) else "")
            + f": validation sensitivity {_number(point.get('val_sensitivity'))}, "
            f"specificity {_number(point.get('val_specificity'))}"
        )
        test = point.get("test") or {}
        if test.get("sensitivity") is not None:
            lines.append(
                f"- Same threshold on test: sensitivity {_number(test.get('sensitivity'))}, "
                f"specificity {_number(test.get('specificity'))}"
            )
        if point.get("note"):
            lines.append(f"- Threshold note: {point['note']}")
    else:
        lines.append("- Melanoma threshold: none (no validated operating point)")
    test_metrics = metadata.get("test_metrics") or {}
    shown = [
        f"{label} {_number(test_metrics[key])}"
        for key, label in (
            ("balanced_accuracy", "balanced accuracy"),
            ("accuracy", "accuracy"),
            ("macro_f1", "macro-F1"),
            ("mel_roc_auc", "melanoma AUC"),
        )
        if isinstance(test_metrics.get(key), int | float)
    ]
    if shown:
        lines.append(f"- Test set: {', '.join(shown)}")
    tta_note = (metadata.get("tta") or {}).get("note")
    if tta_note:
        lines.append(f"- Note: {tta_note}")
    if metadata.get("exported_utc"):
        lines.append(f"- Exported: {metadata['exported_utc']}")
    return "\n".join(lines)


def engine_label(metadata: Mapping[str, Any], engine: str) -> str:
    """Picker label of an engine: what it is, its file size and validation balanced accuracy.

    Example:
        >>> engine_label({"engines": {"tflite": {"bytes": 16e6}}}, "tflite")
        'tflite (LiteRT float32, 16.0 MB)'
    """
    kinds = {"savedmodel": "SavedModel", "tflite": "LiteRT float32", "tflite-int8": "LiteRT int8"}
    facts = (metadata.get("engines") or {}).get(engine) or {}
    details = [kinds.get(engine, engine)]
    if facts.get("bytes"):
        details.append(f"{facts['bytes'] / 1e6:.1f} MB")
    balanced = (facts.get("validation") or {}).get("balanced_accuracy")
    if isinstance(balanced, int | float):
        details.append(f"val balanced accuracy {balanced:.3f}")
    return f"{engine} ({', '.join(details)})"


def engine_markdown(metadata: Mapping[str, Any], engine: str) -> str:
    """Markdown bullets on the engine that scores: agreement with the SavedModel and its own
    melanoma threshold; Grad-CAM always comes from the SavedModel.

    Example:
        >>> engine_markdown({}, "savedmodel").splitlines()[0]
        '- Probabilities: SavedModel `serve`'
    """
    if engine == "savedmodel":
        lines = ["- Probabilities: SavedModel `serve`"]
    else:
        facts = (metadata.get("engines") or {}).get(engine) or {}
        lines = [f"- Probabilities: LiteRT `{facts.get('file', engine)}`"]
        for key, what in (
            ("agreement_with_savedmodel", "SavedModel"),
            ("agreement_with_float", "float model"),
        ):
            agreement = facts.get(key)
            if agreement:
                lines.append(
                    f"- Agreement with the {what} on {agreement['images']} images: top-1 "
                    f"{agreement['top1_agreement']:.3f}, max probability difference "
                    f"{agreement['max_abs_diff']:.2g}"
                )
        point = facts.get("mel_threshold") or {}
        if point.get("value") is not None and "re-chosen" in str(point.get("chosen_on")):
            lines.append(
                f"- Its own melanoma threshold {point['value']:.3f}, re-chosen on validation"
            )
    lines.append("- Grad-CAM: SavedModel `explain`")
    return "\n".join(lines)
