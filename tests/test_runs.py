"""Run directories: naming, no overwrite, JSON helpers, meta.json, names, provenance and captions,
resume helpers."""

from __future__ import annotations

import json
import math
import re
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from PIL import Image

from skin_tf.runs import (
    add_history_column,
    best_so_far,
    collect_meta,
    completed_epochs,
    cpu_model_name,
    create_run_dir,
    json_ready,
    provenance,
    read_json,
    run_caption,
    run_name_of,
    source_image_size,
    trim_history,
    write_json,
)
from skin_tf.training.config import load_config

RUN_DIR_NAME = re.compile(r"^\d{8}T\d{6}Z__(?P<name>.+)$")


def test_run_dir_is_named_by_utc_time_and_run_name(tmp_path: Path):
    run_dir = create_run_dir(tmp_path / "runs", "baseline-smoke")
    assert run_dir.is_dir() and run_dir.parent == tmp_path / "runs"
    match = RUN_DIR_NAME.match(run_dir.name)
    assert match and match["name"] == "baseline-smoke"


def test_run_dirs_are_never_reused(tmp_path: Path):
    first = create_run_dir(tmp_path, "same")
    (first / "config.json").write_text("{}")
    others = [create_run_dir(tmp_path, "same") for _ in range(3)]
    assert len({first, *others}) == 4  # same second: a counter keeps them apart
    assert (first / "config.json").read_text() == "{}"
    assert all(not any(d.iterdir()) for d in others)


@pytest.mark.parametrize("name", ["", "a/b", "../up", "with space", "-dash-first"])
def test_unsafe_run_names_are_rejected(tmp_path: Path, name: str):
    with pytest.raises(ValueError, match="run name"):
        create_run_dir(tmp_path, name)


def test_json_helpers(tmp_path: Path):
    path = write_json(tmp_path / "x.json", {"a": [1, 2], "b": None})
    assert read_json(path) == {"a": [1, 2], "b": None}
    with pytest.raises(FileNotFoundError, match="missing.json"):
        read_json(tmp_path / "missing.json")
    (tmp_path / "bad.json").write_text("{")
    with pytest.raises(ValueError, match="bad.json"):
        read_json(tmp_path / "bad.json")


def test_json_ready_makes_strict_json():
    value = {"a": np.float32(0.5), "b": (np.int64(2), math.nan), "c": np.array([math.inf])}
    assert json_ready(value) == {"a": 0.5, "b": [2, None], "c": [None]}
    assert json_ready({1: Path("runs/r1")}) == {"1": "runs/r1"}


def test_write_json_converts_numpy_and_writes_nan_as_null(tmp_path: Path):
    value = {"auc": np.float64(math.nan), "n": np.int64(3), "ci": (np.float32(0.25), math.inf)}
    path = write_json(tmp_path / "metrics.json", value)
    text = path.read_text(encoding="utf-8")
    assert text.endswith("}\n") and "NaN" not in text and "Infinity" not in text  # strict JSON
    assert json.loads(text) == {"auc": None, "n": 3, "ci": [0.25, None]}


def test_source_image_size_is_the_most_common_header_size(tmp_path: Path):
    paths = []
    for i, size in enumerate([(600, 450), (200, 150), (200, 150)]):
        path = tmp_path / f"{i}.jpg"
        Image.new("RGB", size).save(path)
        paths.append(str(path))
    assert source_image_size(paths) == "200x150"
    assert source_image_size([]) is None


def test_collect_meta_fields(fake_root: Path):
    from skin_tf.data.ham10000 import read_metadata

    frame = read_metadata(fake_root)
    config = load_config("baseline", profile="cpu")
    meta = collect_meta(config, fake_root, frame, run_name="baseline-cpu")
    json.dumps(meta, allow_nan=False)  # writable as strict JSON
    assert meta["run_name"] == "baseline-cpu"
    assert (meta["config_name"], meta["profile"]) == ("baseline", "cpu")
    assert re.match(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ$", meta["created_utc"])
    assert meta["git_sha"] is None or re.match(r"^[0-9a-f]{40}$", meta["git_sha"])
    assert set(meta["versions"]) == {"python", "tensorflow", "keras", "numpy", "skin_tf"}
    assert meta["versions"]["tensorflow"] and meta["versions"]["keras"]
    assert meta["seed"] == 42 and meta["host"]
    assert re.match(r"^(CPU \(\d+ cores(, .+)?\)|GPU: .+)$", meta["hardware"])
    assert meta["weights"] == "imagenet" and meta["precision"] == "float32"  # the cpu profile
    assert meta["image_size"] == config.image_size and meta["epochs"] == 10
    assert meta["data"] == {
        "root": str(fake_root.resolve()),
        "source_size": "200x150",
        "n_images": len(frame),
    }


def test_cpu_model_name_reads_linux_cpuinfo(tmp_path: Path):
    cpuinfo = tmp_path / "cpuinfo"
    cpuinfo.write_text("processor\t: 0\nvendor_id\t: AuthenticAMD\nmodel name\t: AMD EPYC\n\n")
    assert cpu_model_name(cpuinfo) == "AMD EPYC"


def test_cpu_model_name_falls_back_to_platform(tmp_path: Path, monkeypatch):
    monkeypatch.setattr("platform.processor", lambda: "arm")
    assert cpu_model_name(tmp_path / "missing") == "arm"
    (tmp_path / "empty").write_text("processor\t: 0\n")
    assert cpu_model_name(tmp_path / "empty") == "arm"
    monkeypatch.setattr("platform.processor", lambda: "")
    assert cpu_model_name(tmp_path / "missing") is None


def _write_meta(run_dir: Path, **changes) -> None:
    meta = {
        "run_name": "b0-cpu",
        "model": "efficientnet_b0",
        "weights": "none",
        "image_size": 96,
        "epochs": 10,
        "hardware": "CPU (2 cores)",
        "data": {"source_size": "200x150"},
    }
    meta.update(changes)
    write_json(run_dir / "meta.json", meta)


def test_provenance_caption(tmp_path: Path):
    _write_meta(tmp_path)
    assert provenance(tmp_path) == (
        "HAM10000 200x150 copy · weights: none · B0 96 px · 10 epochs · CPU (2 cores) · run b0-cpu"
    )
    pd.DataFrame({"epoch": [0, 1, 2], "loss": [1.0, 0.9, 0.8]}).to_csv(
        tmp_path / "history.csv", index=False
    )
    assert "3 of 10 epochs" in provenance(tmp_path)  # an unfinished run says so
    _write_meta(
        tmp_path,
        model="efficientnet_b2",
        weights="imagenet",
        epochs=3,
        data={"source_size": "600x450"},
    )
    caption = provenance(tmp_path)
    assert caption.startswith("HAM10000 full-size · weights: imagenet · B2 96 px · 3 epochs")


def test_provenance_names_a_run_by_its_folder_so_a_retrained_run_is_told_apart(tmp_path: Path):
    first, second = tmp_path / "20250101T120000Z__b0-cpu", tmp_path / "20250102T090000Z__b0-cpu"
    for run_dir in (first, second):
        run_dir.mkdir()
        _write_meta(run_dir)
    assert provenance(first).endswith("· run 20250101T120000Z__b0-cpu")
    assert provenance(first) != provenance(second)


def test_run_name_of_prefers_meta_json(tmp_path: Path):
    run_dir = tmp_path / "20250101T120000Z__folder-name"
    run_dir.mkdir()
    assert run_name_of(run_dir) == "20250101T120000Z__folder-name"  # no meta.json yet
    _write_meta(run_dir)
    assert run_name_of(run_dir) == "b0-cpu"
    _write_meta(run_dir, run_name="")
    assert run_name_of(run_dir) == "20250101T120000Z__folder-name"  # empty name: the folder


def test_run_caption_is_producer_then_provenance(tmp_path: Path):
    _write_meta(tmp_path)
    caption = run_caption(tmp_path, "skin_tf.evaluation.evaluate.evaluate_run, test split")
    assert (
        caption == f"skin_tf.evaluation.evaluate.evaluate_run, test split · {provenance(tmp_path)}"
    )


def test_completed_epochs_reads_every_phase_backup(tmp_path: Path):
    assert completed_epochs(tmp_path / "backup") == 0
    for phase, epoch in (("head", 2), ("finetune", 5)):
        (tmp_path / "backup" / phase).mkdir(parents=True)
        write_json(tmp_path / "backup" / phase / "training_metadata.json", {"epoch": epoch})
    assert completed_epochs(tmp_path / "backup") == 5


def test_trim_history_drops_epochs_after_the_last_backup(tmp_path: Path):
    path = tmp_path / "history.csv"
    trim_history(path, 3)  # no file: nothing to do
    pd.DataFrame({"epoch": [0, 1, 2], "val_loss": [3.0, 2.0, 1.0]}).to_csv(path, index=False)
    trim_history(path, 2)
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1]
    trim_history(path, 5)
    assert pd.read_csv(path)["epoch"].tolist() == [0, 1]
    trim_history(path, 0)
    assert not path.exists()


def test_a_new_history_column_is_added_where_keras_csvlogger_will_write_it(tmp_path: Path):
    """Keras' CSVLogger appends rows as "epoch" then the sorted names: an older history.csv
    gets the new column, empty, in that place, so resumed rows line up with the header."""
    path = tmp_path / "history.csv"
    add_history_column(path, "epoch_seconds")  # no file: nothing to do
    pd.DataFrame({"epoch": [0, 1], "acc": [0.5, 0.6], "val_loss": [2.0, 1.0]}).to_csv(
        path, index=False
    )
    add_history_column(path, "epoch_seconds")
    history = pd.read_csv(path)
    assert list(history.columns) == ["epoch", "acc", "epoch_seconds", "val_loss"]
    assert history["epoch_seconds"].isna().all() and history["val_loss"].tolist() == [2.0, 1.0]
    add_history_column(path, "epoch_seconds")  # present: unchanged
    assert pd.read_csv(path).equals(history)


def test_best_so_far(tmp_path: Path):
    path = tmp_path / "history.csv"
    assert best_so_far(path, "val_loss", "min") is None
    pd.DataFrame({"epoch": [0, 1, 2], "val_loss": [2.0, 1.0, 1.5], "val_acc": [0.2, None, 0.6]})\
        .to_csv(path, index=False)  # fmt: skip
    assert best_so_far(path, "val_loss", "min") == 1.0
    assert best_so_far(path, "val_acc", "max") == 0.6
