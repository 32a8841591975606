"""Fixtures shared by the results-index and comparison tests: two fake runs, evaluated."""

from __future__ import annotations

import shutil

import pytest

from skin_tf.evaluation.evaluate import evaluate_run
from tests.evaluation.test_evaluate import write_fake_run


@pytest.fixture(scope="session")
def evaluated_runs(tmp_path_factory):
    """Two fake runs (the newer one evaluated first), evaluated once for the whole module."""
    base = tmp_path_factory.mktemp("two_runs")
    runs, results = base / "runs", base / "results"
    newer, _ = write_fake_run(runs, "b0-newer", seed=3, created="2025-02-01T00:00:00Z")
    older, _ = write_fake_run(runs, "a-older", seed=5, created="2025-01-01T00:00:00Z")
    metrics = {
        run.name.split("__")[1]: evaluate_run(run, results_dir=results, n_boot=30)["metrics"]
        for run in (newer, older)
    }
    return base, metrics


@pytest.fixture()
def two_runs(evaluated_runs, tmp_path):
    """A private copy of `evaluated_runs` (runs/ and results/) that a test may change."""
    base, metrics = evaluated_runs
    shutil.copytree(base, tmp_path, dirs_exist_ok=True)
    runs = tmp_path / "runs"
    return {
        "newer": runs / "20250101T000000Z__b0-newer",
        "older": runs / "20250101T000000Z__a-older",
        "results": tmp_path / "results",
        "metrics": metrics,
    }
