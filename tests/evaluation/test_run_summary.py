"""One run in words: number formatting, the kept epoch, run facts (summaries: test_evaluate.py)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd

from skin_tf.evaluation.run_summary import fmt, fmt_change, fmt_ci, kept_epoch, relative_link


def test_number_formatting():
    assert fmt(None) == "n/a" and fmt(float("nan")) == "n/a" and fmt(0.12345) == "0.123"
    assert fmt_ci(0.5, [0.4, 0.6]) == "0.500 [0.400, 0.600]"
    assert fmt_ci(0.5, None) == "0.500" and fmt_ci(0.5, [None, None]) == "0.500"
    assert fmt_change(-0.0241, -0.058, 0.0204) == "-0.024 [-0.058, +0.020]"
    assert fmt_change(0.05, None, None) == fmt_change(0.05, float("nan"), 1) == "+0.050"
    assert fmt_change(None, None, None) == "n/a"  # undefined (stored as JSON null)


def test_relative_link():
    results = Path("results")
    assert relative_link(results / "figures" / "a.png", results) == "figures/a.png"
    assert relative_link("/elsewhere/b.png", results) == "/elsewhere/b.png"


def test_kept_epoch_from_metrics_json_else_from_history(tmp_path: Path):
    assert kept_epoch(tmp_path) is None  # nothing tells
    (tmp_path / "config.json").write_text(json.dumps({"select_metric": "val_acc"}))
    pd.DataFrame({"epoch": [0, 1, 2], "val_acc": [0.5, 0.7, 0.6]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    assert kept_epoch(tmp_path) == 2  # 1-based best row of history.csv
    (tmp_path / "metrics.json").write_text(json.dumps({"best_epoch": 3}))
    assert kept_epoch(tmp_path) == 3  # training's own record wins
