"""The melanoma operating point's report: figures and markdown for `threshold.threshold_run`."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import pandas as pd

from skin_tf.evaluation import plots


def threshold_figures(
    result: dict[str, Any],
    sweeps: dict[str, pd.DataFrame],
    run_name: str,
    results_dir: Path,
    caption: str,
) -> list[Path]:
    curves = [
        plots.ScoreCurve(
            split=split,
            label=(
                f"{split} (AUC {result['curves'][split]['roc_auc']:.3f}, "
                f"AP {result['curves'][split]['average_precision']:.3f})"
            ),
            sweep=sweeps[split],
            point=result[split],
            point_label=f"t = {result['threshold']:.3f}",
        )
        for split in ("val", "test")
    ]
    target = result["target_sensitivity"]
    roc_pr = plots.melanoma_roc_pr(
        curves,
        title=f"Melanoma vs rest, threshold chosen on val (sensitivity >= {target:g}): {run_name}",
        caption=caption,
    )
    by_threshold = plots.threshold_curves(
        curves,
        result["threshold"],
        title=f"Melanoma rates by threshold (val solid, test dashed): {run_name}",
        caption=caption,
    )
    figures = results_dir / "figures"
    return [
        plots.save_figure(roc_pr, figures / f"mel_roc_pr_{run_name}.png"),
        plots.save_figure(by_threshold, figures / f"mel_threshold_curve_{run_name}.png"),
    ]


def _fmt(value: float | None, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if math.isinf(value):
        return "unbounded"
    return f"{value:.{digits}f}"


def threshold_markdown(
    result: dict[str, Any],
    grid_rows: list[tuple[float, dict[str, Any], dict[str, Any]]],
    run_name: str,
    caption: str,
    figures: list[Path],
    results_dir: Path,
) -> str:
    """The mel_threshold_<run>.md text; `grid_rows` = (t, val rates, test rates) per sweep row."""
    t, val, test, ref = (
        result["threshold"],
        result["val"],
        result["test"],
        result["test_chosen_reference"],
    )
    ci = test["ci"]
    probs_kind = (
        f"temperature-scaled probabilities (T = {result['temperature']:.3f}, fitted on val)"
        if result["calibrated"]
        else "raw (uncalibrated) probabilities: no temperature.json in the run"
    )
    lines = [
        f"# Melanoma operating point: {run_name}",
        "",
        f"_{caption}_",
        "",
        f"Threshold on P(mel) **chosen on validation only**: **t = {t:.4f}**, the highest "
        f"specificity with sensitivity >= {result['target_sensitivity']:g} (ties: precision, "
        f"then sensitivity), from {probs_kind}. Target reached on val: "
        f"**{'yes' if result['reached'] else 'NO'}**: {result['note']}. "
        "It was then applied once to test.",
        "",
        "## Melanoma vs rest at the chosen threshold",
        "",
        "| | val (where t was chosen) | test | test 95% CI (lesion bootstrap) |",
        "|---|---|---|---|",
    ]
    for name, label in (
        ("sensitivity", "sensitivity"),
        ("specificity", "specificity"),
        ("precision", "precision (PPV)"),
        ("npv", "NPV"),
        ("nnb", "number needed to biopsy (1/PPV)"),
    ):
        lo, hi = ci[name]
        lines.append(
            f"| {label} | {_fmt(val[name])} | {_fmt(test[name])} | {_fmt(lo)} – {_fmt(hi)} |"
        )
    lines.append(
        f"| TP / FP / TN / FN | {val['tp']} / {val['fp']} / {val['tn']} / {val['fn']} "
        f"| {test['tp']} / {test['fp']} / {test['tn']} / {test['fn']} | |"
    )
    boot, curves = result["bootstrap"], result["curves"]
    lines += [
        "",
        f"Intervals: percentile bootstrap over test lesions, {boot['n_boot']} resamples, "
        f"seed {boot['seed']}; the threshold is held fixed. Melanoma ROC AUC val "
        f"{_fmt(curves['val']['roc_auc'])}, test {_fmt(curves['test']['roc_auc'])}; "
        f"average precision val {_fmt(curves['val']['average_precision'])}, test "
        f"{_fmt(curves['test']['average_precision'])}.",
        "",
        "## For comparison only: the threshold chosen on test",
        "",
        f"Choosing the threshold on test itself (the same rule) gives t = {ref['threshold']:.4f} "
        f"(target reached: {'yes' if ref['reached'] else 'no'}) with test sensitivity "
        f"{_fmt(ref['sensitivity'])}, specificity {_fmt(ref['specificity'])}, precision "
        f"{_fmt(ref['precision'])}. **This is optimistic** (the test set was used to tune it) and "
        "is shown only to make the val-to-test gap visible; the reported operating point is the "
        f"validation-chosen t = {t:.4f}.",
        "",
        "## The 7-class decision rule it implies",
        "",
        f"Rule: {result['decision_rule']}, with t = {t:.4f}; compared with the plain argmax.",
        "",
        "| split | rule | accuracy | macro-F1 | balanced accuracy | mel sens. | mel spec. |",
        "|---|---|---|---|---|---|---|",
    ]
    for split in ("val", "test"):
        for rule, label in (("argmax", "argmax"), ("threshold_rule", f"mel if P(mel) >= {t:.3f}")):
            m = result["seven_class"][split][rule]
            lines.append(
                f"| {split} | {label} | {_fmt(m['accuracy'])} | {_fmt(m['macro_f1'])} | "
                f"{_fmt(m['balanced_accuracy'])} | {_fmt(m['mel_sensitivity'])} | "
                f"{_fmt(m['mel_specificity'])} |"
            )
    lines += [
        "",
        "## Sweep",
        "",
        "Melanoma vs rest at a grid of thresholds (flag if P(mel) >= t); ◀ val-chosen, "
        "▷ test-chosen (optimistic).",
        "",
        "| t | val sens | val spec | val PPV | test sens | test spec | test PPV | test NPV |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for g, v, s in grid_rows:
        mark = (" ◀" if g == t else "") + (" ▷" if g == ref["threshold"] else "")
        lines.append(
            f"| {g:.4f}{mark} | {_fmt(v['sensitivity'])} | {_fmt(v['specificity'])} | "
            f"{_fmt(v['precision'])} | {_fmt(s['sensitivity'])} | {_fmt(s['specificity'])} | "
            f"{_fmt(s['precision'])} | {_fmt(s['npv'])} |"
        )
    lines += ["", "## Figures", ""]
    for path in figures:
        relative = path.relative_to(results_dir) if path.is_relative_to(results_dir) else path
        lines.append(f"![{path.stem}]({relative.as_posix()})")
    return "\n".join(lines) + "\n"
