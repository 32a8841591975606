"""One run in words: its facts, its headline numbers and `results/summary_<run-name>.md`.

`skin-tf evaluate` (skin_tf.evaluation.evaluate.evaluate_run) calls `write_summary` after computing
the metrics: a markdown page with the run's provenance (`run_facts`: config, data, epochs, the kept
epoch, hardware, git sha), the headline and per-class tables with their lesion-bootstrap intervals,
the melanoma operating point and temperature when chosen, links to the figures and the disclaimer.
The same facts, numbers and formatting (`fmt`, `fmt_ci`, HEADLINE) serve the JSON run records and
the results/README.md index (skin_tf.evaluation.report), the model card and the notebooks.

Example:
    >>> run_facts("runs/20250101T120000Z__baseline-cpu")["kept_epoch"]  # doctest: +SKIP
    7
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import pandas as pd

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES
from skin_tf.data.sizes import size_label
from skin_tf.runs import (
    data_label,
    ensemble_label,
    epochs_trained,
    provenance,
    read_json,
    run_name_of,
)

DISCLAIMER = (
    "Research and teaching only: not a medical device. These numbers come from one retrospective "
    "dataset (HAM10000) and say nothing about performance on other cameras, clinics or "
    "populations; never use them to diagnose or to rule out melanoma."
)
# (key in metrics.json, label): the headline numbers, each with a lesion-bootstrap interval
# except average precision, which metrics.SPLIT_STATS does not resample.
HEADLINE = (
    ("accuracy", "accuracy"),
    ("macro_f1", "macro-F1"),
    ("balanced_accuracy", "balanced accuracy (ISIC 2018 metric)"),
    ("mel_sensitivity", "melanoma sensitivity"),
    ("mel_specificity", "melanoma specificity"),
    ("mel_roc_auc", "melanoma ROC AUC"),
    ("mel_average_precision", "melanoma average precision"),
)


# ---------------------------------------------------------------- formatting


def fmt(value: float | None, digits: int = 3) -> str:
    """A number for a table; None/NaN (undefined, e.g. no melanoma in the split) is "n/a"."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    return f"{value:.{digits}f}"


def fmt_ci(value: float | None, interval: list[float | None] | None) -> str:
    """ "0.812 [0.781, 0.842]", or the bare number when there is no interval."""
    if interval is None or interval[0] is None or interval[1] is None:
        return fmt(value)
    return f"{fmt(value)} [{fmt(interval[0])}, {fmt(interval[1])}]"


def fmt_change(value: float | None, low: float | None, high: float | None) -> str:
    """ "+0.043 [+0.012, +0.073]": a signed difference and its interval (bare without one).

    >>> fmt_change(0.0431, 0.012, None), fmt_change(None, None, None)
    ('+0.043', 'n/a')
    """
    if value is None or math.isnan(value):
        return "n/a"  # undefined, e.g. melanoma AUC on a split without melanoma
    if low is None or high is None or math.isnan(low) or math.isnan(high):
        return f"{value:+.3f}"
    return f"{value:+.3f} [{low:+.3f}, {high:+.3f}]"


def relative_link(path: Path | str, folder: Path) -> str:
    """`path` as a link from a file in `folder` (POSIX, relative when inside it)."""
    path = Path(path)
    return (path.relative_to(folder) if path.is_relative_to(folder) else path).as_posix()


# ---------------------------------------------------------------- what a run is


def run_facts(run_dir: str | os.PathLike) -> dict[str, Any]:
    """Provenance fields of a run from meta.json, config.json and history.csv, for the tables.

    Example:
        >>> run_facts("runs/20250101T120000Z__baseline-cpu")["epochs"]  # doctest: +SKIP
        '10'
    """
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "meta.json")
    config = read_json(run_dir / "config.json") if (run_dir / "config.json").is_file() else {}
    data = meta.get("data", {})
    size = data.get("source_size")
    planned = meta.get("epochs", config.get("epochs"))
    image_size = meta.get("image_size", config.get("image_size"))
    trained = epochs_trained(run_dir)
    epochs = str(planned) if trained in (None, planned) else f"{trained} of {planned}"
    ensemble = meta.get("ensemble")
    if ensemble:  # no epochs of its own
        epochs = ensemble_label(ensemble)
    return {
        "run_name": run_name_of(run_dir),
        "run_id": run_dir.name,
        "config": meta.get("config_name", config.get("name")),
        "profile": meta.get("profile", config.get("profile")),
        "model": meta.get("model", config.get("model")),
        "weights": meta.get("weights"),
        "image_size": None if image_size is None else size_label(image_size),
        "epochs": epochs,
        "train_seconds": meta.get("train_seconds"),
        "select_metric": config.get("select_metric"),
        "kept_epoch": kept_epoch(run_dir),
        "tta_in_training": bool(config.get("tta", False)),
        "members": [m["run_id"] for m in ensemble["members"]] if ensemble else None,
        "data": data_label(size),
        "n_images": data.get("n_images"),
        "hardware": meta.get("hardware"),
        "git_sha": meta.get("git_sha"),
        "created_utc": meta.get("created_utc"),
        "command": meta.get("command"),
        "provenance": provenance(run_dir),
    }


def train_time(seconds: float | None) -> str:
    """Minutes of training (meta.json's train_seconds: every epoch, validation included), or a
    dash for runs trained before it was recorded.

    >>> train_time(2712.4), train_time(None)
    ('45.2 min', '—')
    """
    return "—" if seconds is None else f"{seconds / 60:.1f} min"


def kept_epoch(run_dir: str | os.PathLike) -> int | None:
    """The 1-based epoch best.keras was saved at: metrics.json's `best_epoch` (written by
    training), else the best `select_metric` row of history.csv; None if neither tells."""
    run_dir = Path(run_dir)
    metrics_path = run_dir / "metrics.json"
    if metrics_path.is_file():
        best = read_json(metrics_path).get("best_epoch")
        if isinstance(best, int):
            return best
    config_path, history_path = run_dir / "config.json", run_dir / "history.csv"
    if not (config_path.is_file() and history_path.is_file()):
        return None
    metric = read_json(config_path).get("select_metric")
    history = pd.read_csv(history_path)
    if metric not in history.columns or history[metric].isna().all():
        return None
    row = history[metric].idxmin() if metric == "val_loss" else history[metric].idxmax()
    return int(history["epoch"][row]) + 1 if "epoch" in history.columns else int(row) + 1


def operating_point(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The val-chosen melanoma threshold and its val/test rates from operating_point.json."""
    path = Path(run_dir) / "operating_point.json"
    if not path.is_file():
        return None
    point = read_json(path)
    test = point.get("test", {})
    return {
        "threshold": point["threshold"],
        "target_sensitivity": point.get("target_sensitivity"),
        "reached": point.get("reached"),
        "calibrated": point.get("calibrated"),
        "chosen_on": point.get("chosen_on", "val"),
        "val": {k: point.get("val", {}).get(k) for k in ("sensitivity", "specificity")},
        "test": {k: test.get(k) for k in ("sensitivity", "specificity", "precision")},
        "test_ci": {k: test.get("ci", {}).get(k) for k in ("sensitivity", "specificity")},
    }


def temperature(run_dir: str | os.PathLike) -> dict[str, Any] | None:
    """The val-fitted temperature and test NLL/ECE before/after from temperature.json."""
    path = Path(run_dir) / "temperature.json"
    if not path.is_file():
        return None
    stored = read_json(path)
    return {"value": stored["temperature"], "fitted_on": stored.get("fitted_on", "val"),
            "test": stored.get("test", {})}  # fmt: skip


def headline(split_metrics: dict[str, Any]) -> dict[str, Any]:
    """{metric: {"value", "ci"}} of one split's metrics.json block, plus image/lesion counts."""
    ci = split_metrics.get("ci", {})
    out: dict[str, Any] = {
        key: {"value": split_metrics.get(key), "ci": ci.get(key)} for key, _ in HEADLINE
    }
    out["n_images"] = split_metrics.get("n_images")
    out["n_lesions"] = split_metrics.get("n_lesions")
    return out


# ---------------------------------------------------------------- per-run summary (markdown)


def write_summary(
    run_dir: str | os.PathLike,
    metrics: dict[str, Any],
    figures: dict[str, Path],
    results_dir: str | os.PathLike = Path("results"),
) -> Path:
    """Write `results/summary_<run-name>.md`: provenance, headline and per-class tables,
    melanoma operating point and temperature when present, figure links, disclaimer."""
    run_dir, results_dir = Path(run_dir), Path(results_dir)
    facts = run_facts(run_dir)
    name = facts["run_name"]
    evaluation = metrics.get("evaluation", {})
    lines = [
        f"# Run `{name}`: evaluation summary",
        "",
        f"_Produced by `skin-tf evaluate` (skin_tf.evaluation.evaluate.evaluate_run) at "
        f"{evaluation.get('utc', '?')} · {facts['provenance']}_",
        "",
        f"> {DISCLAIMER}",
        "",
        "| | |",
        "|---|---|",
        f"| config | `{facts['config']}` (profile {facts['profile']}) |",
        f"| model | {facts['model']}, {facts['image_size']} px, weights: {facts['weights']} |",
        f"| data | {facts['data']}, {facts['n_images']} images, split by lesion |",
        f"| members | {len(facts['members'])} calibrated runs, pooled (each its own kept "
        f"epoch): {', '.join(f'`{m}`' for m in facts['members'])} |"
        if facts["members"]
        else f"| epochs | {facts['epochs']}; best.keras is epoch {facts['kept_epoch'] or '?'}, "
        f"chosen on val by {facts['select_metric']} |",
        f"| training time | {train_time(facts['train_seconds'])} |",
        f"| hardware | {facts['hardware']} |",
        f"| code | git {facts['git_sha'] or 'unknown'} |",
        f"| run directory | `{facts['run_id']}` |",
        "",
        "## Headline metrics (argmax of the 7 probabilities)",
        "",
        *(
            [
                "The run's config has `tta: true`: training wrote flip-averaged predictions, "
                "so these numbers already include test-time augmentation.",
                "",
            ]
            if facts["tta_in_training"]
            else []
        ),
        *_headline_table(metrics["val"], metrics["test"]),
        "",
        f"Intervals: {metrics['test'].get('ci_method', 'none')}. Balanced accuracy is the mean "
        "per-class recall, the ISIC 2018 challenge metric.",
    ]
    if "tta" in metrics:
        tta = metrics["tta"]
        lines += [
            "",
            "## With test-time augmentation (reported separately)",
            "",
            f"{tta.get('method', 'TTA')}.",
            "",
            *_headline_table(tta["val"], tta["test"]),
        ]
        if "gain" in tta:
            lines += ["", *_tta_gain_lines(tta["gain"])]
    lines += ["", "## Per class (test; recall also on val)", "", *_per_class_table(metrics)]
    lines += ["", "## Melanoma", "", *_melanoma_lines(run_dir, metrics, results_dir, name)]
    lines += ["", "## Figures", ""]
    captions = {
        "confusion": "Confusion matrix on test: counts and row-normalised (recall on the diagonal)",
        "curves": "Training curves (history.csv)",
        "recall": "Per-class recall with 95% lesion-bootstrap intervals, val and test",
    }
    for key, path in figures.items():
        lines.append(f"![{captions.get(key, key)}]({relative_link(path, results_dir)})")
        lines.append("")
    path = results_dir / f"summary_{name}.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def _headline_table(val: dict[str, Any], test: dict[str, Any]) -> list[str]:
    rows = [
        f"| metric | val ({val.get('n_images')} images, {val.get('n_lesions')} lesions) "
        f"| test ({test.get('n_images')} images, {test.get('n_lesions')} lesions) |",
        "|---|---|---|",
    ]
    for key, label in HEADLINE:
        cells = [fmt_ci(m.get(key), m.get("ci", {}).get(key)) for m in (val, test)]
        rows.append(f"| {label} | {cells[0]} | {cells[1]} |")
    return rows


def _tta_gain_lines(gain: dict[str, dict[str, list[float]]]) -> list[str]:
    labels = dict(HEADLINE)
    rows = [
        "TTA minus the plain prediction on the same images (paired lesion bootstrap). Adopt TTA "
        "for a run only if it helps on **val**; a gain on test alone is not a reason to.",
        "",
        "| change with TTA | val | test |",
        "|---|---|---|",
    ]
    for key in gain["val"]:
        cells = [fmt_change(*gain[split][key]) for split in ("val", "test")]
        rows.append(f"| {labels.get(key, key)} | {cells[0]} | {cells[1]} |")
    return rows


def _per_class_table(metrics: dict[str, Any]) -> list[str]:
    rows = [
        "| class | | test images | precision | recall [95% CI] | F1 | val recall [95% CI] |",
        "|---|---|---|---|---|---|---|",
    ]
    test, val = metrics["test"], metrics["val"]
    for code in CLASSES:
        t, v = test["per_class"][code], val["per_class"][code]
        t_ci = test.get("ci_per_class_recall", {}).get(code)
        v_ci = val.get("ci_per_class_recall", {}).get(code)
        recall = fmt_ci(t["recall"], t_ci) if t["support"] else "n/a (absent)"
        val_recall = fmt_ci(v["recall"], v_ci) if v["support"] else "n/a (absent)"
        rows.append(
            f"| {code} | {CLASS_NAMES[code]} | {t['support']} | {fmt(t['precision'])} | "
            f"{recall} | {fmt(t['f1'])} | {val_recall} |"
        )
    return rows


def _melanoma_lines(
    run_dir: Path, metrics: dict[str, Any], results_dir: Path, name: str
) -> list[str]:
    test = metrics["test"]
    ci = test.get("ci", {})
    lines = [
        f"At the argmax, test melanoma sensitivity is "
        f"{fmt_ci(test['mel_sensitivity'], ci.get('mel_sensitivity'))} and specificity "
        f"{fmt_ci(test['mel_specificity'], ci.get('mel_specificity'))}; ROC AUC "
        f"{fmt_ci(test['mel_roc_auc'], ci.get('mel_roc_auc'))}, average precision "
        f"{fmt(test['mel_average_precision'])}.",
        "",
    ]
    point = operating_point(run_dir)
    if point is None:
        lines.append(
            "No melanoma operating point yet (no operating_point.json): `skin-tf threshold` "
            "chooses one on validation."
        )
    else:
        test_ci = point["test_ci"]
        lines += [
            f"Operating point chosen on **{point['chosen_on']}**: flag melanoma when P(mel) >= "
            f"**{fmt(point['threshold'], 4)}** (target sensitivity "
            f"{point['target_sensitivity']}, reached on val: "
            f"{'yes' if point['reached'] else 'no'}; "
            f"{'temperature-scaled' if point['calibrated'] else 'raw'} probabilities).",
            "",
            "| at the val-chosen threshold | val | test [95% CI] |",
            "|---|---|---|",
            f"| sensitivity | {fmt(point['val']['sensitivity'])} | "
            f"{fmt_ci(point['test']['sensitivity'], test_ci['sensitivity'])} |",
            f"| specificity | {fmt(point['val']['specificity'])} | "
            f"{fmt_ci(point['test']['specificity'], test_ci['specificity'])} |",
        ]
        report = results_dir / f"mel_threshold_{name}.md"
        if report.is_file():
            lines += ["", f"Details: [{report.name}]({relative_link(report, results_dir)})."]
    scaling = temperature(run_dir)
    lines.append("")
    if scaling is None:
        lines.append("No temperature scaling (no temperature.json): probabilities are raw.")
    else:
        after = scaling["test"]
        lines.append(
            f"Temperature fitted on {scaling['fitted_on']}: T = {fmt(scaling['value'])}; test "
            f"ECE {fmt(after.get('ece_before'))} → {fmt(after.get('ece_after'))}, NLL "
            f"{fmt(after.get('nll_before'))} → {fmt(after.get('nll_after'))} (argmax unchanged)."
        )
    return lines
