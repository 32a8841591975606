"""results/ run records and the results/README.md index built from them.

Per-run facts, number formatting and summaries: test_run_summary.py (and test_evaluate.py).
"""

from __future__ import annotations

import json
import shutil
import warnings
from functools import partial
from pathlib import Path

import pandas as pd
import pytest

from skin_tf.cli.main import main
from skin_tf.evaluation.calibration import calibrate_run
from skin_tf.evaluation.evaluate import evaluate_run
from skin_tf.evaluation.metrics import PROB_COLUMNS, classification_metrics
from skin_tf.evaluation.report import build_results_index, read_run_records, record_path
from skin_tf.evaluation.threshold import threshold_run
from tests.evaluation.test_evaluate import write_fake_run


def table_rows(readme: str) -> list[str]:
    """Data rows of the first markdown table (the header and separator rows dropped)."""
    table = readme.split("\n\n## ")[0]
    rows = [line for line in table.splitlines() if line.startswith("| ")]
    return rows[1:]


def test_index_has_one_row_per_run_with_intervals_and_provenance(two_runs):
    results = two_runs["results"]
    readme = build_results_index(results).read_text()
    assert readme.startswith("# Results")
    assert "by lesion" in readme and "on **validation**" in readme and "lesions" in readme
    assert "not a medical device" in readme
    rows = table_rows(readme)
    assert len(rows) == 2
    assert rows[0].startswith("| [a-older](summary_a-older.md) |")  # oldest run first
    assert rows[1].startswith("| [b0-newer](summary_b0-newer.md) |")
    test = two_runs["metrics"]["b0-newer"]["test"]
    for key in ("accuracy", "macro_f1", "balanced_accuracy", "mel_sensitivity"):
        lo, hi = test["ci"][key]
        assert f"| {test[key]:.3f} [{lo:.3f}, {hi:.3f}] |" in rows[1], key
    for cell in ("baseline (cpu)", "HAM10000 200x150 copy", "| none |", "112 px", "CPU (2 cores)"):
        assert cell in rows[1], cell
    assert "| — | — | — |" in rows[1]  # no threshold, no temperature yet


def test_index_is_rebuilt_from_the_records_alone(two_runs, tmp_path):
    results = two_runs["results"]
    first = build_results_index(results).read_text()
    shutil.rmtree(tmp_path / "runs")
    assert build_results_index(results).read_text() == first
    assert (results / "runs" / "a-older.json").is_file()
    record = json.loads((results / "runs" / "b0-newer.json").read_text())
    assert record["run_id"] == "20250101T000000Z__b0-newer"
    assert record["figures"]["confusion"] == "figures/b0-newer_confusion.png"
    assert set(record["metrics"]["test"]["accuracy"]) == {"value", "ci"}


def test_operating_point_and_temperature_columns_after_a_refresh(two_runs):
    from skin_tf.evaluation.calibration import calibrate_run
    from skin_tf.evaluation.threshold import threshold_run

    results, run = two_runs["results"], two_runs["newer"]
    calibration = calibrate_run(run, results_dir=results)
    point = threshold_run(run, results_dir=results, n_boot=20)
    stale = build_results_index(results).read_text()
    assert f"{point['threshold']:.4f}" not in stale  # records are not re-read from runs/

    readme = build_results_index(results, runs_dir=run.parent).read_text()
    row = table_rows(readme)[1]
    assert f"| {point['threshold']:.4f} (target 0.85) |" in row
    test = point["test"]
    assert f"| {test['sensitivity']:.3f} / {test['specificity']:.3f} |" in row
    assert f"| {calibration['temperature']:.2f} |" in row
    assert "| — | — | — |" in table_rows(readme)[0]  # the other run has none


def test_tta_results_get_their_own_table(two_runs, tmp_path):
    import pandas as pd

    from skin_tf.evaluation.evaluate import tta_predictions_path

    results, run = two_runs["results"], two_runs["older"]
    for split in ("val", "test"):
        pd.read_csv(run / f"predictions_{split}.csv").to_csv(
            tta_predictions_path(run, split), index=False
        )
    evaluate_run(run, results_dir=results, n_boot=30)
    readme = build_results_index(results).read_text()
    assert "## With test-time augmentation" in readme
    tta_rows = [r for r in readme.split("## With test-time")[1].splitlines() if r.startswith("| ")]
    assert len(tta_rows) == 2 and tta_rows[1].startswith("| a-older |")  # header, one run
    # The same predictions with and without TTA: no change, on either split.
    assert tta_rows[1].endswith("| +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |")


def test_a_second_run_with_the_same_name_replaces_the_record_with_a_warning(two_runs, tmp_path):
    results = two_runs["results"]
    again, _ = write_fake_run(tmp_path / "other", "a-older", seed=9)
    renamed = again.rename(again.with_name("20250301T000000Z__a-older"))  # a later run
    # calibrate and threshold write figures named after the run, before evaluate replaces the record
    stages = (calibrate_run, partial(threshold_run, n_boot=10), partial(evaluate_run, n_boot=10))
    for writes_results in stages:
        with pytest.warns(UserWarning, match="20250101T000000Z__a-older.*same run name"):
            writes_results(renamed, results_dir=results)
    assert json.loads(record_path(results, "a-older").read_text())["run_id"] == renamed.name
    assert len(read_run_records(results)) == 2


def test_the_run_a_record_describes_rewrites_its_files_without_a_warning(two_runs):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        calibrate_run(two_runs["older"], results_dir=two_runs["results"])
        threshold_run(two_runs["older"], results_dir=two_runs["results"], n_boot=10)


def test_empty_and_broken_results_folders(tmp_path):
    readme = build_results_index(tmp_path / "results").read_text()
    assert "No runs evaluated yet" in readme
    broken = tmp_path / "results" / "runs" / "junk.json"
    broken.parent.mkdir(parents=True)
    broken.write_text(json.dumps({"hello": 1}))
    with pytest.raises(ValueError, match="junk.json is not a skin_tf run record"):
        build_results_index(tmp_path / "results")
    with pytest.raises(FileNotFoundError, match="runs folder"):
        build_results_index(tmp_path / "fresh", runs_dir=tmp_path / "missing")


def test_report_command_parses_and_writes(two_runs, capsys):
    assert main(["report", "--results", str(two_runs["results"])]) == 0
    assert "(2 runs)" in capsys.readouterr().out


def test_committed_results_index_is_what_the_committed_records_build(tmp_path):
    """results/README.md says it is generated from results/runs/*.json: on a clean clone,
    `skin-tf report` must rebuild it byte for byte (the records are committed with it)."""
    committed = Path(__file__).resolve().parents[2] / "results"
    copy = tmp_path / "results"
    shutil.copytree(committed, copy)
    (copy / "README.md").unlink()
    records = read_run_records(copy)
    assert records, "no committed records in results/runs/"
    for record in records:  # every row's summary and figures are committed too
        assert (copy / record["summary"]).is_file(), record["summary"]
        for figure in record.get("figures", {}).values():
            assert (copy / figure).is_file(), figure
    built = build_results_index(copy).read_text(encoding="utf-8")
    assert built == (committed / "README.md").read_text(encoding="utf-8")


def test_from_scratch_runs_get_their_own_table_and_a_paired_gain(two_runs):
    """results/from_scratch/ (same layout) is the labelled comparison: its own table, and for a
    pretrained run of the same name, the paired gain on the same test images."""
    results = two_runs["results"]
    scratch = results / "from_scratch"
    (scratch / "runs").mkdir(parents=True)
    for name in ("b0-newer.json", "b0-newer_test.csv"):
        shutil.copy(results / "runs" / name, scratch / "runs" / name)
    guessing = pd.read_csv(scratch / "runs" / "b0-newer_test.csv")
    guessing[list(PROB_COLUMNS)] = 1 / 7  # the from-scratch run knows nothing
    guessing.to_csv(scratch / "runs" / "b0-newer_test.csv", index=False)
    pretrained = json.loads(record_path(results, "b0-newer").read_text())
    record_path(results, "b0-newer").write_text(json.dumps({**pretrained, "weights": "imagenet"}))

    readme = build_results_index(results).read_text()
    main_table, rest = readme.split("## From scratch: the comparison")
    assert len(table_rows(main_table)) == 2
    row, gain = [line for line in rest.splitlines() if line.startswith("| b0-newer |")]
    assert "| none |" in row  # the from-scratch record as it was (its summary is not there)
    assert "→" in gain
    kept = pd.read_csv(results / "runs" / "b0-newer_test.csv")
    expected = (
        classification_metrics(kept["label"].to_numpy(), kept[list(PROB_COLUMNS)].to_numpy())[
            "balanced_accuracy"
        ]
        - 1 / 7
    )  # uniform scores: argmax is class 0, recall 1/7 on average
    assert gain.split(" | ")[2].startswith(f"{expected:+.3f} [")
    # without kept predictions the pair is named but not paired
    (scratch / "runs" / "b0-newer_test.csv").unlink()
    readme = build_results_index(results).read_text()
    assert "not paired: no test predictions were kept" in readme
