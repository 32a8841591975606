"""The results/ index: a JSON record per run and the results/README.md table built from them.

`skin-tf evaluate` writes `results/runs/<run-name>.json` (`write_run_record`) beside the run's
summary (skin_tf.evaluation.run_summary); `skin-tf report` rebuilds `results/README.md` from those
JSON records alone, so the committed results/ folder can be rebuilt without the (uncommitted) runs/
folder.

    skin-tf report                      # results/README.md from results/runs/*.json
    skin-tf report --runs runs          # first refresh the records of the runs in runs/

Example:
    >>> build_results_index(Path("results"))  # doctest: +SKIP
    PosixPath('results/README.md')
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path
from typing import Any

import pandas as pd

from skin_tf.evaluation.metrics import PROB_COLUMNS, read_predictions
from skin_tf.evaluation.run_summary import (
    DISCLAIMER,
    fmt,
    fmt_change,
    fmt_ci,
    headline,
    operating_point,
    relative_link,
    run_facts,
    temperature,
    train_time,
)
from skin_tf.runs import json_ready, read_json, run_name_of, write_json

RECORDS_DIR = "runs"  # results/runs/<run-name>.json
# results/from_scratch/ holds runs trained from random weights, kept as a labelled comparison
# (same layout: runs/, summaries, figures); the index shows them in a table of their own.
FROM_SCRATCH_DIR = "from_scratch"
RECORD_FORMAT = "skin_tf.report/1"  # a format tag stored in every record: never change it


# ---------------------------------------------------------------- per-run record (JSON)


def record_path(results_dir: str | os.PathLike, run_name: str) -> Path:
    """`<results_dir>/runs/<run-name>.json`."""
    return Path(results_dir) / RECORDS_DIR / f"{run_name}.json"


def warn_if_replacing(run_dir: str | os.PathLike, results_dir: str | os.PathLike) -> None:
    """Warn when `results_dir` holds the record of another run with this run's name: its record,
    figures and reports there are about to be replaced by this run's (`evaluate`, `calibrate`
    and `threshold` all write files named after the run)."""
    run_id = Path(run_dir).name
    path = record_path(results_dir, run_name_of(run_dir))
    previous = read_json(path).get("run_id") if path.is_file() else None
    if previous not in (None, run_id):
        warnings.warn(
            f"{path} describes run {previous}; its files in {results_dir} are being replaced by "
            f"run {run_id}'s (same run name). To keep both, give runs distinct names "
            "(train --run-name) or write to another folder (--results).",
            UserWarning,
            stacklevel=3,
        )


def committed_predictions_path(results_dir: str | os.PathLike, run_name: str) -> Path:
    """`<results_dir>/runs/<run-name>_test.csv`: the run's test predictions with lesion ids, kept
    beside its record so runs can be compared pairwise (`skin_tf.evaluation.compare`) after
    their run directories are gone."""
    return Path(results_dir) / RECORDS_DIR / f"{run_name}_test.csv"


def read_committed_predictions(results_dir: str | os.PathLike, run_name: str) -> pd.DataFrame:
    """The test predictions `skin-tf evaluate` kept in results/ for `run_name`."""
    path = committed_predictions_path(results_dir, run_name)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: runs evaluated before test predictions were kept in results/ "
            f"have none; re-run `skin-tf evaluate RUN_DIR` on the run directory of {run_name}"
        )
    return pd.read_csv(path)


def write_run_record(
    run_dir: str | os.PathLike,
    metrics: dict[str, Any],
    figures: dict[str, Path],
    summary: Path | None,
    results_dir: str | os.PathLike = Path("results"),
) -> Path:
    """Write `results/runs/<run-name>.json` (headline metrics, provenance, operating point) and
    `<run-name>_test.csv` (its test predictions, `committed_predictions_path`).

    A record of another run with the same name is replaced with a warning that names both.
    """
    run_dir, results_dir = Path(run_dir), Path(results_dir)
    facts = run_facts(run_dir)
    path = record_path(results_dir, facts["run_name"])
    predictions = committed_predictions_path(results_dir, facts["run_name"])
    record: dict[str, Any] = {
        "format": RECORD_FORMAT,
        **facts,
        "evaluated_utc": metrics.get("evaluation", {}).get("utc"),
        "ci_method": metrics["test"].get("ci_method"),
        "metrics": {split: headline(metrics[split]) for split in ("val", "test")},
        "tta": (
            {
                **{split: headline(metrics["tta"][split]) for split in ("val", "test")},
                "gain": metrics["tta"].get("gain"),
            }
            if "tta" in metrics
            else None
        ),
        "operating_point": operating_point(run_dir),
        "temperature": temperature(run_dir),
        "summary": None if summary is None else relative_link(summary, results_dir),
        "figures": {name: relative_link(p, results_dir) for name, p in figures.items()},
        "test_predictions": relative_link(predictions, results_dir),
    }
    warn_if_replacing(run_dir, results_dir)
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = ["image_id", "lesion_id", "dx", "label", *PROB_COLUMNS]
    test = read_predictions(run_dir, "test")[columns]
    test.to_csv(predictions, index=False, float_format="%.6f")
    return write_json(path, json_ready(record))


def read_run_records(results_dir: str | os.PathLike = Path("results")) -> list[dict[str, Any]]:
    """Every `results/runs/*.json` record, oldest run first."""
    folder = Path(results_dir) / RECORDS_DIR
    records = []
    for path in sorted(folder.glob("*.json")):
        record = read_json(path)
        if not isinstance(record, dict) or "metrics" not in record or "run_name" not in record:
            raise ValueError(
                f"{path} is not a skin_tf run record (no run_name/metrics): delete it, or "
                "re-create it with `skin-tf evaluate RUN_DIR`"
            )
        records.append(record)
    return sorted(records, key=lambda r: (r.get("created_utc") or "", r["run_name"]))


# ---------------------------------------------------------------- results/README.md


INDEX_INTRO = """# Results

One row per evaluated run, all numbers on the **test** split. This file is generated by
`skin-tf report` from `results/runs/*.json` (written by `skin-tf evaluate RUN_DIR`); do not edit it
by hand. Each run's summary links its figures, per-class table and provenance.

How the numbers were made (the honest-evaluation rules of this project):
- Images are split into train/val/test **by lesion** (no lesion has images in two splits),
  stratified by diagnosis and seeded; each run stores its split (`splits.csv`).
- Everything chosen after training (the checkpoint epoch, the melanoma threshold, the
  temperature) is chosen on **validation**; the test split is used once, to report.
- Brackets are 95% percentile-bootstrap intervals resampling test **lesions**, not images.
- Balanced accuracy (mean per-class recall) is the ISIC 2018 challenge metric. Melanoma
  sensitivity/specificity are at the argmax; the threshold columns show the val-chosen melanoma
  operating point and what it gave on test. T is the temperature fitted on validation.
"""


def build_results_index(
    results_dir: str | os.PathLike = Path("results"),
    runs_dir: str | os.PathLike | None = None,
) -> Path:
    """Rebuild `results/README.md` from `results/runs/*.json`; return its path.

    runs_dir: first refresh the record of every run there that has metrics.json (e.g. to pick up
    an operating point chosen after `skin-tf evaluate`); None uses the records as they are.

    Example:
        >>> build_results_index("results")  # doctest: +SKIP
        PosixPath('results/README.md')
    """
    results_dir = Path(results_dir)
    if runs_dir is not None:
        refresh_records(runs_dir, results_dir)
    records = read_run_records(results_dir)
    lines = [INDEX_INTRO]
    if not records:
        lines.append("No runs evaluated yet: `skin-tf evaluate runs/<run>` adds one.")
    else:
        lines += _index_table(records, results_dir)
        with_tta = [r for r in records if r.get("tta")]
        if with_tta:
            lines += [
                "",
                "## With test-time augmentation",
                "",
                "The same runs with predictions averaged over 8 flips/90° rotations "
                "(`skin-tf evaluate --tta`), test split; the last two columns are TTA minus the "
                "plain prediction on the same images (paired lesion bootstrap). TTA is worth "
                "adopting for a run only where it helps on val.",
                "",
                *_tta_table(with_tta),
            ]
    lines += _from_scratch_section(records, results_dir)
    lines += ["", f"_{DISCLAIMER}_"]
    path = results_dir / "README.md"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("\n".join(lines).rstrip() + "\n", encoding="utf-8")
    return path


def refresh_records(runs_dir: str | os.PathLike, results_dir: str | os.PathLike) -> list[Path]:
    """Rewrite the record of each run in `runs_dir` that has metrics.json (no new metrics)."""
    runs_dir, results_dir = Path(runs_dir), Path(results_dir)
    if not runs_dir.is_dir():
        raise FileNotFoundError(f"runs folder {runs_dir} not found: pass the folder of run dirs")
    written = []
    for run_dir in sorted(p for p in runs_dir.iterdir() if (p / "metrics.json").is_file()):
        name = run_name_of(run_dir)
        figures = {
            key: results_dir / "figures" / f"{name}_{key}.png"
            for key in ("confusion", "curves", "recall")
        }
        summary = results_dir / f"summary_{name}.md"
        written.append(
            write_run_record(
                run_dir,
                read_json(run_dir / "metrics.json"),
                {k: p for k, p in figures.items() if p.is_file()},
                summary if summary.is_file() else None,
                results_dir,
            )
        )
    return written


FROM_SCRATCH_INTRO = """## From scratch: the comparison

Runs of the same configs trained from random weights (no ImageNet): a labelled comparison, never
the project's result. Each is its namesake's recipe with `--set weights=null` (same network, image
size, schedule, selection rule, seed and lesion split) and kept its test predictions, so the gain
below is paired on the same test images. Their files are in `from_scratch/`."""


def _from_scratch_section(records: list[dict[str, Any]], results_dir: Path) -> list[str]:
    """The from-scratch table, then the paired gain of each run over its from-scratch namesake."""
    folder = results_dir / FROM_SCRATCH_DIR
    scratch = read_run_records(folder) if (folder / RECORDS_DIR).is_dir() else []
    if not scratch:
        return []
    lines = ["", FROM_SCRATCH_INTRO, "", *_index_table(scratch, folder, f"{FROM_SCRATCH_DIR}/")]
    gains = _paired_gains(records, scratch, results_dir)
    if gains:
        lines += ["", *gains]
    return lines


def _paired_gains(
    records: list[dict[str, Any]], scratch: list[dict[str, Any]], results_dir: Path
) -> list[str]:
    from skin_tf.evaluation.compare import paired_difference

    rows = []
    by_name = {r["run_name"]: r for r in scratch}
    for record in records:
        name = record["run_name"]
        if name not in by_name or record.get("weights") == "none":
            continue
        paths = (
            committed_predictions_path(results_dir / FROM_SCRATCH_DIR, name),
            committed_predictions_path(results_dir, name),
        )
        if not all(p.is_file() for p in paths):
            cells = ["not paired: no test predictions were kept for the from-scratch run"] * 2
        else:
            diff = paired_difference(
                read_committed_predictions(results_dir / FROM_SCRATCH_DIR, name),
                read_committed_predictions(results_dir, name),
                ("balanced_accuracy", "mel_roc_auc"),
            )
            cells = [fmt_change(*change) for change in diff.values()]
        rows.append(
            f"| {name} | {by_name[name]['model']} → {record['model']} | " + " | ".join(cells) + " |"
        )
    if not rows:
        return []
    return [
        "Gain of each run over its from-scratch namesake on the same test images (pretrained "
        "minus from scratch; paired percentile bootstrap over test lesions, 1000 resamples):",
        "",
        "| run | model | Δ balanced accuracy | Δ melanoma ROC AUC |",
        "|---|---|---|---|",
        *rows,
    ]


def _index_table(
    records: list[dict[str, Any]], results_dir: Path, link_prefix: str = ""
) -> list[str]:
    rows = [
        "| run | config | accuracy | macro-F1 | balanced accuracy | mel sensitivity | "
        "mel specificity | mel threshold (val-chosen) | test sens / spec at threshold | T | "
        "data | model | weights | image size | epochs | training time | hardware |",
        "|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        test = r["metrics"]["test"]
        run = r["run_name"]
        if r.get("summary") and (results_dir / r["summary"]).is_file():
            run = f"[{run}]({link_prefix}{r['summary']})"
        point, scaling = r.get("operating_point"), r.get("temperature")
        if point is None:
            threshold = at_threshold = "—"
        else:
            threshold = f"{fmt(point['threshold'], 4)} (target {point['target_sensitivity']})"
            at_threshold = (
                f"{fmt(point['test']['sensitivity'])} / {fmt(point['test']['specificity'])}"
            )
        cells = [
            run,
            f"{r.get('config')} ({r.get('profile')})",
            *(
                fmt_ci(test[k]["value"], test[k]["ci"])
                for k in (
                    "accuracy",
                    "macro_f1",
                    "balanced_accuracy",
                    "mel_sensitivity",
                )
            ),
            fmt(test["mel_specificity"]["value"]),
            threshold,
            at_threshold,
            "—" if scaling is None else fmt(scaling["value"], 2),
            str(r.get("data")),
            str(r.get("model")),
            str(r.get("weights")),
            f"{r.get('image_size')} px",
            str(r.get("epochs")),
            train_time(r.get("train_seconds")),
            str(r.get("hardware")),
        ]
        rows.append("| " + " | ".join(cells) + " |")
    return rows


def _tta_table(records: list[dict[str, Any]]) -> list[str]:
    keys = ("accuracy", "macro_f1", "balanced_accuracy", "mel_sensitivity", "mel_specificity")
    rows = [
        "| run | accuracy | macro-F1 | balanced accuracy | mel sensitivity | mel specificity "
        "| Δ balanced accuracy, val | Δ balanced accuracy, test |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in records:
        test, gain = r["tta"]["test"], r["tta"].get("gain")
        changes = (
            [fmt_change(*gain[split]["balanced_accuracy"]) for split in ("val", "test")]
            if gain
            else ["—", "—"]
        )
        cells = [r["run_name"], *(fmt_ci(test[k]["value"], test[k]["ci"]) for k in keys)]
        rows.append("| " + " | ".join([*cells, *changes]) + " |")
    return rows
