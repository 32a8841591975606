"""results/MODEL_CARD.md for one run: what the model is for, what it was trained and tested on,
how well it did (with intervals), its melanoma operating point and calibration, and where it fails.

Every number is read from the run directory (metrics.json, operating_point.json,
temperature.json, meta.json, explain_check.json); nothing is typed in by hand.

Example:
    >>> write_model_card("runs/20261127T102247Z__baseline-cpu")  # doctest: +SKIP
    PosixPath('results/MODEL_CARD.md')
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES
from skin_tf.evaluation.run_summary import HEADLINE, fmt, fmt_ci
from skin_tf.runs import file_digest, provenance, read_json

_INTENDED_USE = """\
**Intended use.** Teaching and research on dermatoscopic image classification: reproducing
published baselines, studying class imbalance, melanoma operating points, calibration and
Grad-CAM explanations. **Not a medical device**: not validated for clinical use, not for
diagnosing, triaging or ruling out melanoma or any other condition, and not medical advice."""

_FAILURE_MODES = """\
- **Rare classes.** HAM10000 is dominated by naevi (67% of images); dermatofibroma (115 images) and
  vascular lesions (142) have few test cases, so their recalls are noisy (see the intervals) and
  often low.
- **Melanoma vs naevus and benign keratosis** are the most frequent confusions; the threshold
  trades specificity for sensitivity and the test sensitivity is lower than on validation.
- **Population and device shift.** HAM10000 comes from two sites (Vienna, Queensland) and mostly
  fair skin (Fitzpatrick I–III); performance on darker skin types, other dermatoscopes, clinical
  (non-dermatoscopic) photos or other populations is unknown and likely worse.
- **Image handling.** Images are squashed to a square; crops, rulers, ink marks, hair and
  vignetting can all drive predictions (the heatmaps show them only as far as their checks
  above allow).
- **Lesion-level dependence.** Several images of one lesion are correlated: the split keeps each
  lesion in one split and the intervals resample lesions, but 1,002 test images are ~750 lesions."""


def _metrics_table(metrics: dict[str, Any]) -> list[str]:
    lines = ["| metric | validation | test [95% CI over lesions] |", "|---|---|---|"]
    for key, label in HEADLINE:
        val, test = metrics["val"].get(key), metrics["test"].get(key)
        ci = metrics["test"].get("ci", {}).get(key)
        lines.append(f"| {label} | {fmt(val)} | {fmt_ci(test, ci)} |")
    return lines


def _per_class_table(test: dict[str, Any]) -> list[str]:
    lines = ["| class | test images | recall [95% CI] | precision |", "|---|---|---|---|"]
    intervals = test.get("ci_per_class_recall", {})
    for code in CLASSES:
        row = test["per_class"][code]
        recall, precision = fmt_ci(row["recall"], intervals.get(code)), fmt(row["precision"])
        lines.append(
            f"| {code} ({CLASS_NAMES[code]}) | {row['support']} | {recall} | {precision} |"
        )
    return lines


def _operating_point(run_dir: Path) -> list[str]:
    path = run_dir / "operating_point.json"
    if not path.is_file():
        return ["No melanoma operating point chosen yet (`skin-tf threshold RUN_DIR`)."]
    op = read_json(path)
    val, test = op["val"], op["test"]
    ci = test.get("ci", {})
    return [
        f"Melanoma flag when P(mel) ≥ **{op['threshold']:.4f}**, chosen on validation for "
        f"sensitivity ≥ {op['target_sensitivity']:g} ({op['note']}); "
        f"{'temperature-scaled' if op['calibrated'] else 'raw'} probabilities.",
        "",
        "| | validation | test [95% CI] |",
        "|---|---|---|",
        *(
            f"| {name} | {fmt(val[name])} | {fmt_ci(test[name], ci.get(name))} |"
            for name in ("sensitivity", "specificity", "precision", "npv")
        ),
    ]


def _calibration(run_dir: Path) -> str:
    path = run_dir / "temperature.json"
    if not path.is_file():
        return "Not calibrated (`skin-tf calibrate RUN_DIR`)."
    t = read_json(path)
    test = t["test"]
    return (
        f"Temperature scaling fitted on validation: T = {t['temperature']:.3f}. On test, NLL "
        f"{test['nll_before']:.3f} → {test['nll_after']:.3f} and expected calibration error "
        f"(15 bins) {test['ece_before']:.3f} → {test['ece_after']:.3f}."
    )


def _explanations(run_dir: Path) -> list[str]:
    """The heatmaps' checks (`skin-tf explain-check`, explain_check.json): the default method's
    verdict in one sentence and every method's scores; says so when there is no check, or only
    one of another best.keras."""
    path = run_dir / "explain_check.json"
    if not path.is_file():
        return [
            "The heatmaps have not been checked (`skin-tf explain-check RUN_DIR`): it is not "
            "known whether they say more about the model than 'the lesion is in the middle'."
        ]
    record = read_json(path)
    if record.get("model_sha256") != file_digest(run_dir / "best.keras"):
        return [
            "The explanation check on file was made for another best.keras: run "
            "`skin-tf explain-check RUN_DIR` again."
        ]
    choice = record["default"]
    verdict = choice["headline"] + "."
    lines = [
        verdict if choice["explanation"] else f"**{verdict}**",
        "",
        f"Deletion and insertion AUC (Petsiuk et al. 2018) on {record['images']['n']} test "
        "images with 95% intervals over lesions, paired against a centred Gaussian; median "
        "Spearman correlation of the maps with those of the model whose top block (last conv "
        "and head) was re-initialised (Adebayo et al. 2018; passes below "
        f"{record['config']['sanity_limit']}). Report: `{record.get('report')}`.",
        "",
        "| method | deletion AUC [95% CI] | vs centre [95% CI] | insertion AUC | median ρ | "
        "sanity |",
        "|---|---|---|---|---|---|",
    ]
    for facts in [*record["methods"].values(), *record["baselines"].values()]:
        deletion, insertion = facts["deletion"], facts["insertion"]
        rho = facts.get("spearman_median", {}).get("top")
        sanity = {True: "passes", False: "fails"}.get(facts.get("passes_sanity"), "–")
        lines.append(
            f"| {facts['title']} | {fmt_ci(deletion['auc'], deletion['ci'])} | "
            f"{deletion['vs_centre']:+.3f} [{deletion['vs_centre_ci'][0]:+.3f}, "
            f"{deletion['vs_centre_ci'][1]:+.3f}] | {fmt(insertion['auc'])} | "
            f"{'–' if rho is None else f'{rho:.2f}'} | {sanity} |"
        )
    return lines


def _recipe(description: str | None, profile: str | None) -> list[str]:
    """The config's own description; under another profile than `full` it was written for the
    config as shipped, so it is labelled as such (the Model line says what was trained)."""
    if not description:
        return []
    if profile in (None, "full"):
        return [f"Recipe: {description}", ""]
    return [
        f"Recipe, as the config describes itself before the `{profile}` profile: {description}",
        "",
    ]


def _head(config: dict[str, Any]) -> str:
    """The head in words: pooled image features, the patient fields if any, dropout."""
    fields = config.get("metadata") or []
    if not fields:
        return f"GAP → dropout {config['dropout']}"
    return (
        f"GAP, with the patient's {', '.join(fields)} joined by {config.get('metadata_fusion')} "
        f"fusion (each image's fields all blanked at {config.get('metadata_dropout')} in "
        "training, and each field of the rest at that rate, so each is optional in use; dx_type "
        f"never an input) → dropout {config['dropout']}"
    )


def model_card_text(run_dir: str | os.PathLike) -> str:
    """The model card's markdown for the run in `run_dir`."""
    run_dir = Path(run_dir)
    meta, config = read_json(run_dir / "meta.json"), read_json(run_dir / "config.json")
    metrics = read_json(run_dir / "metrics.json")
    test = metrics["test"]
    splits = read_json(run_dir / "meta.json").get("data", {})
    return "\n".join(
        [
            f"# Model card: {meta['run_name']}",
            "",
            f"_{provenance(run_dir)}_",
            "",
            _INTENDED_USE,
            "",
            "## Model",
            "",
            f"{config['model']} (Keras 3, flat functional, {_head(config)} → softmax over 7 "
            f"classes), input {config['image_size']} px ({config['resize']}), "
            f"weights at start: {meta['weights']}; config `{meta['config_name']}` "
            f"(profile {meta['profile']}), {config['epochs']} epochs planned, checkpoint kept by "
            f"{metrics.get('select_metric')} (epoch {metrics.get('best_epoch')}). Code: git "
            f"{meta.get('git_sha') or 'unknown'}.",
            "",
            *_recipe(config.get("description"), meta.get("profile")),
            "## Data and splits",
            "",
            f"HAM10000 (Tschandl et al. 2018, CC BY-NC 4.0), {splits.get('n_images')} images "
            f"({splits.get('source_size')} source images). Split by lesion (no lesion in two "
            f"splits), stratified by diagnosis, seed {config['seed']}, fractions "
            f"{config['fractions']}; test: {test['n_images']} images of {test['n_lesions']} "
            "lesions. The split is stored with the run (splits.csv).",
            "",
            "## Performance",
            "",
            "Chosen on validation, reported once on test; intervals are percentile bootstrap over "
            "test lesions.",
            "",
            *_metrics_table(metrics),
            "",
            *_per_class_table(test),
            "",
            "## Melanoma operating point",
            "",
            *_operating_point(run_dir),
            "",
            "## Calibration",
            "",
            _calibration(run_dir),
            "",
            "## Explanations (heatmaps)",
            "",
            *_explanations(run_dir),
            "",
            "## Known failure modes and limits",
            "",
            _FAILURE_MODES,
            "",
        ]
    )


def write_model_card(
    run_dir: str | os.PathLike, results_dir: str | os.PathLike = Path("results")
) -> Path:
    """Write `<results_dir>/MODEL_CARD.md` for the run; return its path."""
    path = Path(results_dir) / "MODEL_CARD.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(model_card_text(run_dir), encoding="utf-8")
    return path
