"""What the Streamlit page (`skin_tf/serving/app.py`) does besides Streamlit calls: find the
exported models, and write the top-k chart, the melanoma box, provenance and engine notes. The
"All predictions" table and its CSV download are in `skin_tf.serving.table`.

One upload is analysed in `skin_tf.serving.upload` (scored by the export's chosen engine,
`skin_tf.serving.served.load_served`, explained by the SavedModel's `explain` endpoint). Starting
the page (`skin-tf app`) and the settings it hands over are in `skin_tf.serving.launch`.

Example:
    >>> find_models("saved_models")  # doctest: +SKIP
    ([PosixPath('saved_models/b0')], [])
    >>> top_k_frame(np.eye(7)[4], 1)["class"].tolist()
    ['mel']
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES, MEL_INDEX
from skin_tf.serving.launch import PageSettings, is_exported_model
from skin_tf.serving.verdict import verdict

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
    """Picker label, short enough for the sidebar: folder name · backbone and input size, from
    metadata.json (without loading the graph). The run and the rest are under Provenance.

    Example:
        >>> model_label(Path("saved_models/missing"))
        'missing (not an exported model)'
    """
    try:
        metadata = json.loads((path / "metadata.json").read_text())
    except (OSError, json.JSONDecodeError):
        return f"{path.name} (not an exported model)"
    details = [backbone_short_name(str(metadata["model"]))] if metadata.get("model") else []
    size = metadata.get("input_size")
    if size:
        details.append(f"{size[0]} px")
    return " · ".join([path.name, " ".join(details)]) if details else path.name


def backbone_short_name(model: str) -> str:
    """ "Lite0" for efficientnet_lite0, "B0" for efficientnet_b0; other names as they are.

    Example:
        >>> backbone_short_name("efficientnet_lite0"), backbone_short_name("efficientnet_b3")
        ('Lite0', 'B3')
    """
    if not model.startswith("efficientnet_"):
        return model
    variant = model.removeprefix("efficientnet_")
    return variant[:1].upper() + variant[1:]


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


def mel_flag_text(
    probs: np.ndarray,
    point: Mapping[str, Any],
    run_point: Mapping[str, Any] | None = None,
    in_distribution: bool | None = None,
    ood_score: float | None = None,
    ood_threshold: float | None = None,
) -> str:
    """One markdown paragraph: P(mel) against the engine's validated threshold
    (`ServedModel.mel_point`), with that threshold's test figures beside its validation ones.
    Whether the flag is raised is the image's `verdict` (the rule `skin-tf predict` and the
    table follow): never for an image the guard rejected (`in_distribution` False; the
    score and the engine's threshold say why).

    Below the threshold it says how many melanomas the threshold misses (from the test
    sensitivity), so that it does not read as an all-clear. `run_point` (metadata.json's
    `mel_threshold`) gives the test figures when the engine's own threshold has none: the int8
    engine re-chooses its threshold on validation at export and is never scored on test.

    Example:
        >>> point = {"value": 0.3, "val_sensitivity": 0.86, "val_specificity": 0.7}
        >>> mel_flag_text(np.eye(7)[4], point)[:58]
        '**Melanoma flag raised**: P(mel) = 1.000 ≥ threshold 0.300'
    """
    point = point or {}
    threshold = point.get("value")
    p_mel = float(probs[MEL_INDEX])
    answer = verdict(probs, threshold, in_distribution, None, ood_score, ood_threshold)
    if not answer.answered:
        return f"**No melanoma flag**: this picture is {answer.reason}."
    if answer.mel_flag is None:
        return (
            f"P(mel) = {p_mel:.3f}. **No melanoma flag**: this model has no validated operating "
            "point (run `skin-tf threshold` on its run, then export it again)."
        )
    test, run_value = _test_figures(point, run_point)
    figures = (
        (
            f"test sensitivity {_number(test['sensitivity'])}, "
            f"specificity {_number(test.get('specificity'))}"
            + ("" if run_value is None else f" at the run's threshold {run_value:.3f}")
            if test
            else "not measured on the test split"
        )
        + f"; validation sensitivity {_number(point.get('val_sensitivity'))}, "
        f"specificity {_number(point.get('val_specificity'))}"
    )
    if answer.mel_flag:
        return (
            f"**Melanoma flag raised**: P(mel) = {p_mel:.3f} ≥ threshold {threshold:.3f} "
            f"({figures}). Not a diagnosis: have this lesion looked at by a doctor."
        )
    return (
        f"**Below the melanoma threshold**, which is not an all-clear: P(mel) = {p_mel:.3f} < "
        f"threshold {threshold:.3f}. {_missed_sentence(point, test, run_value is None)} "
        f"({figures}). Not a diagnosis: see a doctor about any skin change that worries you."
    )


def _test_figures(
    point: Mapping[str, Any], run_point: Mapping[str, Any] | None
) -> tuple[Mapping[str, Any], float | None]:
    """(test sensitivity/specificity to quote, None when they are this threshold's or the run's
    threshold when they are the run's); ({}, None) when neither was measured on test."""
    if (point.get("test") or {}).get("sensitivity") is not None:
        return point["test"], None
    run_point = run_point or {}
    run_test = run_point.get("test") or {}
    if run_test.get("sensitivity") is not None and run_point.get("value") is not None:
        return run_test, float(run_point["value"])
    return {}, None


def _missed_sentence(point: Mapping[str, Any], test: Mapping[str, Any], own: bool) -> str:
    """How many melanomas in 100 were missed, from the test sensitivity (else validation's);
    `own`: the test figures are this threshold's, not the run's."""
    sensitivity, split = (
        (test["sensitivity"], "the test split")
        if test
        else (point.get("val_sensitivity"), "the validation split")
    )
    if not isinstance(sensitivity, int | float):
        return "How many melanomas it misses was not measured"
    who = "At this threshold the model" if own else "The model"
    missed = round(100 * (1 - sensitivity))
    if missed == 0:
        return f"{who} missed none of the melanomas of {split} (a small sample)"
    return f"{who} missed about {missed} in 100 melanomas on {split}"


def _number(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


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
    """Picker label of an engine, short enough for the sidebar: its name and file size (what it
    is and how it scored on validation: `engine_details`, in the picker's help).

    Example:
        >>> engine_label({"engines": {"tflite": {"bytes": 16e6}}}, "tflite")
        'tflite · 16.0 MB'
    """
    facts = (metadata.get("engines") or {}).get(engine) or {}
    return f"{engine} · {facts['bytes'] / 1e6:.1f} MB" if facts.get("bytes") else engine


def engine_details(metadata: Mapping[str, Any], engine: str) -> str:
    """What an engine is, its file size and validation balanced accuracy.

    Example:
        >>> engine_details({"engines": {"tflite": {"bytes": 16e6}}}, "tflite")
        'LiteRT float32, 16.0 MB'
    """
    kinds = {"savedmodel": "SavedModel", "tflite": "LiteRT float32", "tflite-int8": "LiteRT int8"}
    facts = (metadata.get("engines") or {}).get(engine) or {}
    details = [kinds.get(engine, engine)]
    if facts.get("bytes"):
        details.append(f"{facts['bytes'] / 1e6:.1f} MB")
    balanced = (facts.get("validation") or {}).get("balanced_accuracy")
    if isinstance(balanced, int | float):
        details.append(f"val balanced accuracy {balanced:.3f}")
    return ", ".join(details)


def explanation_note(metadata: Mapping[str, Any]) -> str | None:
    """What the page says instead of a heatmap that was checked and is no explanation (no method
    beat a centred blob, or none passed the randomisation test): the check's own sentence. None
    when the map may be shown (it beat the centre, or the export was not checked, which its
    caption says).

    Example:
        >>> explanation_note({"explain": {"checked": True, "explanation": False,
        ...                               "headline": "No heatmap method beat a centred blob"}})
        'No heatmap method beat a centred blob. The map is shown below only on request.'
        >>> explanation_note({}) is None
        True
    """
    explain = metadata.get("explain") or {}
    if not explain.get("checked") or explain.get("explanation"):
        return None
    return f"{explain['headline']}. The map is shown below only on request."


def engine_help(metadata: Mapping[str, Any], engines: Sequence[str]) -> str:
    """The engine picker's help: every engine with `engine_details`; Grad-CAM's source.

    Example:
        >>> print(engine_help({}, ["savedmodel"]))
        - `savedmodel`: SavedModel
        <BLANKLINE>
        The heatmap always comes from the SavedModel's explain endpoint.
    """
    lines = [f"- `{engine}`: {engine_details(metadata, engine)}" for engine in engines]
    source = "The heatmap always comes from the SavedModel's explain endpoint."
    return "\n".join([*lines, "", source])


def engine_markdown(metadata: Mapping[str, Any], engine: str) -> str:
    """Markdown bullets on the engine that scores: agreement with the SavedModel and its own
    melanoma threshold; the heatmap (Grad-CAM or the method the checks chose) always comes from
    the SavedModel.

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
    lines.append("- Heatmap: SavedModel `explain`")
    return "\n".join(lines)
