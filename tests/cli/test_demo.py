"""`make demo`: the orchestration helpers (fast) and the whole command from a clean checkout."""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from skin_tf.cli.demo import DemoSettings, _Stages, evaluated, find_data, latest_run, run_demo
from skin_tf.data.ham10000 import DataError

REPO = Path(__file__).resolve().parents[2]


def test_latest_run_picks_the_newest_run_of_that_name(tmp_path):
    for name in ("20260101T000000Z__demo", "20260102T000000Z__demo", "20260103T000000Z__other"):
        (tmp_path / name).mkdir()
    assert latest_run(tmp_path, "demo").name == "20260102T000000Z__demo"
    assert latest_run(tmp_path, "demo-smoke") is None
    assert latest_run(tmp_path / "absent", "demo") is None


def test_settings_name_the_run_by_profile():
    assert DemoSettings().run_name == "demo"
    assert DemoSettings(profile="smoke").run_name == "demo-smoke"


def test_unknown_profile_is_refused_before_any_work(tmp_path):
    with pytest.raises(ValueError, match="demo profile 'huge'"):
        run_demo(DemoSettings(profile="huge", data=tmp_path, app=False))


def test_evaluation_is_reused_only_when_it_belongs_to_this_run(tmp_path):
    """A committed results/runs/demo.json of an earlier run must not stand in for a new run."""
    run = tmp_path / "runs" / "20261201T120000Z__demo"
    record = tmp_path / "results" / "runs" / "demo.json"
    assert not evaluated(tmp_path / "results", run)
    record.parent.mkdir(parents=True)
    record.write_text(json.dumps({"run_name": "demo", "run_id": "20261127T114923Z__demo"}))
    assert not evaluated(tmp_path / "results", run)
    record.write_text(json.dumps({"run_name": "demo", "run_id": run.name}))
    assert evaluated(tmp_path / "results", run)


def test_library_warnings_become_one_note_each_in_the_demo_s_own_format(capsys):
    """Issue 34: calibrate, threshold and evaluate each warned that the results of another run
    were being replaced; Python printed it three times with file names and source lines."""
    import warnings

    replaced = "results/runs/demo.json describes run 20261127T114923Z__demo; its files …"

    def stage_that_warns() -> str:
        warnings.warn(replaced, UserWarning, stacklevel=2)
        warnings.warn(replaced, UserWarning, stacklevel=1)  # another line, the same fact
        return "result"

    stages = _Stages()
    with warnings.catch_warnings(record=True) as escaped:
        warnings.simplefilter("always")
        assert stages.run("calibrate", False, "temperature", stage_that_warns) == "result"
        stages.run("threshold", False, "operating point", stage_that_warns)
        stages.run(
            "evaluate", False, "metrics", lambda: warnings.warn("another fact", stacklevel=1)
        )
    assert escaped == []  # none left to Python's printing
    out, err = capsys.readouterr()
    notes = [line for line in out.splitlines() if "note:" in line]
    assert [line.split("] ", 1)[1] for line in notes] == [
        f"calibrate note: {replaced}",
        "evaluate  note: another fact",
    ]
    assert all(line.startswith("[demo ") for line in out.splitlines())
    assert err == "" and ".py:" not in out and "UserWarning" not in out


def test_explicit_data_path_without_metadata_is_an_error_not_a_download(tmp_path):
    with pytest.raises(DataError):
        find_data(tmp_path)


def test_offline_download_says_where_to_put_the_files(tmp_path, monkeypatch):
    """No data anywhere and no network: a clear message naming data/ham10000 and SKIN_TF_DATA."""
    from skin_tf.data import dataverse, download

    def offline(dest, **_):
        raise dataverse.DownloadError("offline: cannot reach dataverse.harvard.edu")

    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_TF_DATA", raising=False)
    monkeypatch.setattr(download, "download_ham10000", offline)
    with pytest.raises(DataError, match=r"data/ham10000 \(or set SKIN_TF_DATA\)"):
        find_data(None)


def assert_quiet(stderr: str) -> None:
    """No line of TensorFlow's or LiteRT's C++ log, no CUDA error and no Python warning printed
    with its source file (`…/demo.py:167: UserWarning: …`)."""
    from tests.cli.test_quiet import C_LOG_LINE

    assert not C_LOG_LINE.search(stderr), stderr
    assert "CUDA error" not in stderr and "fully_quantize" not in stderr, stderr
    assert not re.search(r"\.py:\d+: \w*Warning", stderr), stderr


def _clean_checkout(dest: Path) -> Path:
    """The tracked files of this working tree (what a fresh clone would hold, uncommitted edits
    included, committed results/ too), without runs/ or saved_models/ from earlier work."""
    files = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=REPO, capture_output=True, check=True,
    ).stdout.decode().split("\0")  # fmt: skip
    for name in filter(None, files):
        source = REPO / name
        if name.startswith(("runs/", "saved_models/")) or not source.is_file():
            continue
        (dest / name).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(source, dest / name)
    return dest


@pytest.mark.slow
def test_make_demo_from_a_clean_checkout_makes_every_promised_artifact(real_data_root, tmp_path):
    checkout = _clean_checkout(tmp_path / "checkout")
    # A record and summary of an earlier run of the same name, as a clone holds for `demo`: the
    # demo must evaluate its own new run, not report the old one.
    stale = json.loads((checkout / "results" / "runs" / "demo.json").read_text())
    stale.update(run_name="demo-smoke", run_id="20261127T114923Z__demo-smoke")
    stale.update(summary="summary_demo-smoke.md")
    (checkout / "results" / "runs" / "demo-smoke.json").write_text(json.dumps(stale))
    (checkout / "results" / "summary_demo-smoke.md").write_text("stale summary of an old run\n")
    # Reuse this environment (installing TensorFlow again costs minutes) without letting make
    # reinstall the package from the temporary checkout: mark it installed, pyproject older.
    venv = Path(sys.prefix)
    (venv / ".installed").touch()
    os.utime(checkout / "pyproject.toml", (0, 0))
    # As a user types it in a shell: under CI's `make test`, MAKELEVEL would make this a sub-make
    # that prints "make[1]: Entering directory" before the demo's first line.
    make_vars = ("MAKELEVEL", "MAKEFLAGS", "MFLAGS")
    inherited = {k: v for k, v in os.environ.items() if k not in make_vars}
    env = {
        **inherited,
        "SKIN_TF_DATA": str(real_data_root),
        "PYTHONPATH": str(checkout),  # import the checkout's package, not the editable install
    }
    done = subprocess.run(
        ["make", "demo", "NO_APP=1", "DEMO_PROFILE=smoke", f"VENV={venv}"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=900,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-3000:] + done.stderr[-3000:]
    # Issue 34: no TensorFlow C++ log and no Python warning with a source line; the demo's own
    # line comes first (after make's echo of the command), and the stale record is noted once.
    assert_quiet(done.stderr)
    first = [line for line in done.stdout.splitlines() if "skin-tf demo" not in line][0]
    assert first.startswith("[demo ") and " data " in first, done.stdout[:500]
    assert done.stdout.count("are being replaced by run") == 1, done.stdout
    for stage in (
        "data",
        "train",
        "calibrate",
        "threshold",
        "evaluate",
        "export",
        "report",
        "card",
    ):
        assert f"] {stage}" in done.stdout, stage

    (run,) = (checkout / "runs").glob("*__demo-smoke")
    for name in (
        "config.json", "meta.json", "splits.csv", "history.csv", "best.keras",
        "predictions_val.csv", "predictions_test.csv", "metrics.json", "temperature.json",
        "operating_point.json",
    ):  # fmt: skip
        assert (run / name).is_file(), name
    model = checkout / "saved_models" / "demo"
    assert (model / "saved_model.pb").is_file()
    metadata = json.loads((model / "metadata.json").read_text())
    assert metadata["run_dir"] == str(run.resolve())
    assert metadata["mel_threshold"]["value"] is not None
    assert "ood_guard" in metadata  # the guard, or why there is none
    results = checkout / "results"
    for name in (
        "README.md", "MODEL_CARD.md", "summary_demo-smoke.md", "mel_threshold_demo-smoke.md",
        "runs/demo-smoke.json", "figures/demo-smoke_confusion.png",
        "figures/reliability_demo-smoke.png", "figures/mel_roc_pr_demo-smoke.png",
    ):  # fmt: skip
        assert (results / name).is_file(), name
    assert "demo-smoke" in (results / "README.md").read_text()
    assert json.loads((results / "runs/demo-smoke.json").read_text())["run_id"] == run.name
    assert "stale" not in (results / "summary_demo-smoke.md").read_text()
    assert "evaluate  metrics with intervals" in done.stdout  # evaluated, not "reused"

    again = subprocess.run(
        ["make", "demo", "NO_APP=1", "DEMO_PROFILE=smoke", f"VENV={venv}"],
        cwd=checkout, env=env, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert again.returncode == 0, again.stderr[-3000:]
    assert_quiet(again.stderr)
    assert again.stdout.count("already there, reused") == 5  # train … export are not redone
