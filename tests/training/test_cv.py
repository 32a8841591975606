"""Cross-validation: lesion-grouped folds, the cv folder, the summary; slow: parallel folds."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, DataError, read_metadata
from skin_tf.data.splits import split_by_lesion
from skin_tf.evaluation.metrics import classification_metrics
from skin_tf.runs import create_run_dir, write_json
from skin_tf.training.config import load_config
from skin_tf.training.cv import (
    CV_FILE,
    FOLDS_FILE,
    SUMMARY_JSON,
    SUMMARY_MD,
    TEST_FOLD,
    assign_folds,
    existing_fold_run,
    fold_runs,
    fold_splits,
    mean_sd,
    plan_for,
    prepare_cv,
    read_cv,
    summarise_cv,
)
from tests.fakes import make_fake_ham10000

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def cv_root(tmp_path: Path) -> Path:
    """84 tiny images, 12 per class, 2 per lesion: enough lesions for 3 stratified folds."""
    return make_fake_ham10000(tmp_path / "ham", per_class=12, images_per_lesion=2, size=(16, 12))


# ------------------------------------------------------------------ folds


def test_folds_are_lesion_grouped_and_keep_the_single_run_test_split(cv_root: Path):
    frame = read_metadata(cv_root)
    plan = assign_folds(frame, 3, seed=7)
    assert list(plan.columns) == ["image_id", "lesion_id", "dx", "fold"]
    assert plan["image_id"].tolist() == frame["image_id"].tolist()
    single = split_by_lesion(frame, seed=7)
    assert set(plan.loc[plan["fold"] == TEST_FOLD, "image_id"]) == set(
        single.loc[single["split"] == "test", "image_id"]
    )
    assert sorted(set(plan["fold"])) == [TEST_FOLD, 0, 1, 2]
    assert plan.groupby("lesion_id")["fold"].nunique().max() == 1  # no lesion in two folds
    in_folds = plan[plan["fold"] != TEST_FOLD]
    assert (pd.crosstab(in_folds["fold"], in_folds["dx"]) > 0).all().all()  # stratified
    pd.testing.assert_frame_equal(plan, assign_folds(frame, 3, seed=7))  # seeded
    assert not plan["fold"].equals(assign_folds(frame, 3, seed=8)["fold"])


def test_fold_count_is_checked(cv_root: Path):
    frame = read_metadata(cv_root)
    for bad in (1, True, 2.0):
        with pytest.raises(ValueError, match="folds >= 2"):
            assign_folds(frame, bad)
    with pytest.raises(DataError, match="cannot make 100 folds"):
        assign_folds(frame, 100)


def test_fold_splits_rotate_the_val_fold(cv_root: Path):
    plan = assign_folds(read_metadata(cv_root), 3, seed=0)
    vals = []
    for fold in range(3):
        splits = fold_splits(plan, fold)
        assert splits["image_id"].tolist() == plan["image_id"].tolist()
        assert (splits["split"] == "test").tolist() == (plan["fold"] == TEST_FOLD).tolist()
        assert (splits["split"] == "val").tolist() == (plan["fold"] == fold).tolist()
        vals.append(set(splits.loc[splits["split"] == "val", "image_id"]))
    assert set.union(*vals) == set(plan.loc[plan["fold"] != TEST_FOLD, "image_id"])
    assert sum(map(len, vals)) == len(set.union(*vals))  # each image validates once
    with pytest.raises(ValueError, match="fold 3 does not exist"):
        fold_splits(plan, 3)


def test_train_uses_given_splits_and_checks_them(cv_root: Path):
    from skin_tf.data.splits import apply_splits

    frame = read_metadata(cv_root)
    splits = fold_splits(assign_folds(frame, 3, seed=0), 1).iloc[::-1]  # order must not matter
    applied = apply_splits(frame, splits.iloc[:-5])
    assert applied["image_id"].tolist() == [i for i in frame["image_id"] if i in set(
        splits["image_id"].iloc[:-5]
    )]  # fmt: skip
    assert dict(zip(applied["image_id"], applied["split"], strict=True)) == dict(
        zip(splits["image_id"].iloc[:-5], splits["split"].iloc[:-5], strict=True)
    )
    bad = [
        (splits[["image_id"]], "lacks column"),
        (splits.assign(split="holdout"), "holdout"),
        (pd.concat([splits, splits.iloc[:1]]), "twice"),
        (pd.concat([splits, pd.DataFrame({"image_id": ["ISIC_X"], "split": ["train"]})]), "1 "),
    ]
    for given, message in bad:
        with pytest.raises(ValueError, match=message):
            apply_splits(frame, given)


# ------------------------------------------------------------------ the cv folder


def test_prepare_cv_writes_the_folder_then_checks_it(cv_root: Path, tmp_path: Path):
    config = load_config("baseline", profile="smoke")
    plan, root = plan_for(config, 3, cv_root)
    cv_dir = prepare_cv(config, 3, plan, root, cv_dir=tmp_path / "cv")
    assert {p.name for p in cv_dir.iterdir()} == {CV_FILE, FOLDS_FILE}
    stored_config, folds, stored_plan = read_cv(cv_dir)
    assert (stored_config, folds) == (config, 3)
    pd.testing.assert_frame_equal(stored_plan, plan)
    assert prepare_cv(config, 3, plan, root, cv_dir=cv_dir) == cv_dir  # a second machine joins

    other = load_config("baseline", profile="smoke", overrides=["epochs=2"])
    with pytest.raises(ConfigError, match="different cross-validation"):
        prepare_cv(other, 3, plan, root, cv_dir=cv_dir)
    with pytest.raises(ConfigError, match="different cross-validation"):
        prepare_cv(config, 4, plan, root, cv_dir=cv_dir)
    moved = plan.assign(fold=np.roll(plan["fold"].to_numpy(), 1))
    with pytest.raises(DataError, match="other data"):
        prepare_cv(config, 3, moved, root, cv_dir=cv_dir)

    new = prepare_cv(config, 3, plan, root, runs_dir=tmp_path / "runs")
    assert new.parent == tmp_path / "runs" and new.name.endswith("__cv-baseline-smoke")
    with pytest.raises(FileNotFoundError, match="not a cross-validation folder"):
        read_cv(tmp_path)


def _fake_fold_run(cv_dir: Path, fold: int, seed: int, mel_in_val: bool = True) -> Path:
    """A finished fold run: metrics.json from random predictions, meta.json, history.csv."""
    rng = np.random.default_rng(seed)
    run = create_run_dir(cv_dir, f"fold{fold}")
    report = {"select_metric": "val_loss", "best_epoch": 1}
    for split in ("val", "test"):
        labels = rng.integers(0, len(CLASSES), 40)
        if split == "val" and not mel_in_val:
            labels[labels == 4] = 5
        probs = rng.dirichlet(np.ones(len(CLASSES)), 40)
        report[split] = classification_metrics(labels, probs)
    write_json(run / "metrics.json", report)
    meta = {"run_name": f"fold{fold}", "model": "efficientnet_b0", "weights": "none",
            "image_size": 64, "epochs": 1, "hardware": "CPU (2 cores)",
            "data": {"source_size": "200x150"}}  # fmt: skip
    write_json(run / "meta.json", meta)
    (run / "history.csv").write_text("epoch,loss\n0,1.9\n")
    return run


def test_summary_is_mean_and_sd_over_finished_folds(cv_root: Path, tmp_path: Path):
    config = load_config("baseline", profile="smoke")
    plan, root = plan_for(config, 3, cv_root)
    cv_dir = prepare_cv(config, 3, plan, root, cv_dir=tmp_path / "cv")
    with pytest.raises(FileNotFoundError, match="no finished folds"):
        summarise_cv(cv_dir)
    runs = {0: _fake_fold_run(cv_dir, 0, seed=1), 2: _fake_fold_run(cv_dir, 2, 2, False)}
    create_run_dir(cv_dir, "fold1")  # started, not finished

    summary = summarise_cv(cv_dir)
    assert (summary["finished"], summary["missing"]) == ([0, 2], [1])
    reports = [json.loads((runs[f] / "metrics.json").read_text()) for f in (0, 2)]
    for split in ("val", "test"):
        values = [r[split]["balanced_accuracy"] for r in reports]
        stat = summary["metrics"][split]["balanced_accuracy"]
        assert stat["mean"] == pytest.approx(np.mean(values))
        assert stat["sd"] == pytest.approx(np.std(values, ddof=1))
        assert stat["n"] == 2 and stat["values"] == values
        mel = [r[split]["per_class"]["mel"]["recall"] for r in reports]
        assert summary["metrics"][split]["recall_mel"]["mean"] == pytest.approx(np.mean(mel))
    # Fold 2's val split has no melanoma: its melanoma AUC is missing, not zero.
    auc = summary["metrics"]["val"]["mel_roc_auc"]
    assert auc["n"] == 1 and auc["sd"] is None and auc["values"][1] is None
    assert json.loads((cv_dir / SUMMARY_JSON).read_text())["missing"] == [1]
    markdown = (cv_dir / SUMMARY_MD).read_text()
    assert "2 of 3 folds finished; missing folds: [1]" in markdown
    assert "| balanced_accuracy |" in markdown and "(n=2)" in markdown
    assert "HAM10000 200x150 copy" in markdown  # provenance of what produced the table

    _fake_fold_run(cv_dir, 0, seed=3)
    with pytest.raises(FileExistsError, match="fold 0 was trained twice"):
        summarise_cv(cv_dir)


def test_existing_fold_run(tmp_path: Path):
    assert existing_fold_run(None, 0) is None and existing_fold_run(tmp_path, 0) is None
    started = create_run_dir(tmp_path, "fold0")
    assert existing_fold_run(tmp_path, 0) == started
    create_run_dir(tmp_path, "fold0")
    with pytest.raises(FileExistsError, match="2 unfinished run directories"):
        existing_fold_run(tmp_path, 0)
    finished = _fake_fold_run(tmp_path, 1, seed=0)
    assert existing_fold_run(tmp_path, 1) == finished


def test_mean_sd():
    assert mean_sd([0.5, 0.7, None]) == {"mean": 0.6, "sd": pytest.approx(0.1414, 1e-3), "n": 2}
    assert mean_sd([0.5]) == {"mean": 0.5, "sd": None, "n": 1}
    assert mean_sd([None]) == {"mean": None, "sd": None, "n": 0}


# ------------------------------------------------------------------ slow: real folds


FOLD_SCRIPT = """
import sys
from skin_tf.training.config import load_config
from skin_tf.training.cv import cv_command

data, cv_dir, fold, *overrides = sys.argv[1:]
config = load_config("baseline", profile="smoke", overrides=overrides)
sys.exit(cv_command(config, 2, data_root=data, cv_dir=cv_dir, only_folds=[int(fold)]))
"""


@pytest.mark.slow
def test_two_folds_train_in_parallel_then_summarise(real_data_root: Path, tmp_path: Path):
    """Fold-parallel: one process per fold into the same cv folder, then the summary. The folds
    take the patient fields too (issue 31: `metadata` flows through cv as through train)."""
    from tests.training.test_fit import _check_complete_run

    cv_dir = tmp_path / "cv"
    overrides = ["image_size=32", 'metadata=["age","sex","localization"]']
    env = {
        **{k: v for k, v in os.environ.items() if k != "TF_CONFIG"},
        "PYTHONPATH": str(REPO),
        "TF_CPP_MIN_LOG_LEVEL": "2",
    }
    procs = []
    try:
        for fold in (0, 1):
            args = [sys.executable, "-c", FOLD_SCRIPT, str(real_data_root), str(cv_dir), str(fold)]
            procs.append(
                subprocess.Popen(
                    [*args, *overrides],
                    cwd=REPO,
                    env=env,
                    stdout=subprocess.PIPE,
                    stderr=subprocess.PIPE,
                    text=True,
                )  # fmt: skip
            )
        outputs = [p.communicate(timeout=480) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait(timeout=30)
    assert [p.returncode for p in procs] == [0, 0], "\n---\n".join(o[1][-3000:] for o in outputs)
    assert outputs[0][0].strip().splitlines()[-1] == str(cv_dir)

    config = load_config("baseline", profile="smoke", overrides=overrides)
    stored_config, folds, plan = read_cv(cv_dir)
    assert (stored_config, folds) == (config, 2)
    runs = {}
    for fold in (0, 1):
        (run,) = fold_runs(cv_dir, fold)
        _check_complete_run(run, config, epochs=1)
        splits = pd.read_csv(run / "splits.csv", dtype=str)
        expected = fold_splits(plan, fold)
        assert splits["image_id"].tolist() == expected["image_id"].tolist()
        assert splits["split"].tolist() == expected["split"].tolist()
        runs[fold] = run
        import keras

        from skin_tf.models.meta_fusion import metadata_shape

        model = keras.models.load_model(run / "best.keras", compile=False)
        assert metadata_shape(model) == (20, "concat")

    summary = summarise_cv(cv_dir)
    assert (summary["finished"], summary["missing"]) == ([0, 1], [])
    values = [
        json.loads((runs[f] / "metrics.json").read_text())["test"]["accuracy"] for f in (0, 1)
    ]
    assert summary["metrics"]["test"]["accuracy"]["mean"] == pytest.approx(np.mean(values))
    assert summary["metrics"]["test"]["accuracy"]["sd"] == pytest.approx(np.std(values, ddof=1))
