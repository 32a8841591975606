"""Tests of skin_tf.training.ensemble and `skin-tf ensemble`: an ensemble of runs is a run."""

from __future__ import annotations

import argparse
import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES

SIZE = 48
PROBS = [f"p_{c}" for c in CLASSES]


def _probe_runs(real_frame, real_data_root, folder: Path) -> list[Path]:
    """Two runs on one real split (70 images per split), each a different linear probe on
    ImageNet Lite0 features (no training loop), calibrated (temperature.json)."""
    from skin_tf.data.splits import split_by_lesion, write_splits
    from tests.probe import linear_probe_lite0

    split = split_by_lesion(real_frame, seed=42)
    subset = split.sample(frac=1.0, random_state=0).groupby(["split", "dx"]).head(10)
    train = subset[subset["split"] == "train"]
    runs = []
    for index, (c, temperature) in enumerate([(0.05, 1.4), (5.0, 0.8)]):
        model = linear_probe_lite0(train, SIZE, c=c, class_weight=None, seed=index)
        run = folder / f"20260101T00000{index}Z__probe{index}"
        run.mkdir(parents=True)
        model.save(run / "best.keras")
        write_splits(subset, run / "splits.csv")
        config = {
            "name": f"probe{index}",
            "model": "efficientnet_lite0",
            "image_size": SIZE,
            "resize": "squash",
            "bootstrap": 50,
            "seed": 42,
            "select_metric": "val_loss",
        }
        meta = {"run_name": f"probe{index}", "model": "efficientnet_lite0", "weights": "imagenet",
                "image_size": SIZE, "epochs": 0, "hardware": "CPU", "train_seconds": 10.0,
                "data": {"root": str(real_data_root), "source_size": "200x150"}}  # fmt: skip
        for name, content in [("config.json", config), ("meta.json", meta),
                              ("temperature.json", {"temperature": temperature})]:  # fmt: skip
            (run / name).write_text(json.dumps(content))
        runs.append(run)
    return runs


@pytest.mark.slow
def test_an_ensemble_of_runs_is_a_run_evaluated_and_exported_like_one(
    real_frame, real_data_root, tmp_path, capsys
):
    import keras

    from skin_tf.cli.model_commands import add_ensemble
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.serving.served import load_served

    members = _probe_runs(real_frame, real_data_root, tmp_path / "members")
    parser = argparse.ArgumentParser()
    add_ensemble(parser.add_subparsers(dest="command"))
    args = parser.parse_args(
        ["ensemble", *map(str, members), "--name", "probes", "--runs-dir", str(tmp_path / "runs"),
         "--results", str(tmp_path / "results"), "--out", str(tmp_path / "export")]
    )  # fmt: skip
    assert args.func(args) == 0
    run = Path(capsys.readouterr().out.strip().splitlines()[-1])
    assert run.parent == tmp_path / "runs" and run.name.endswith("__probes")

    # The run's predictions are the members' calibrated probabilities pooled.
    val = split_frames(run / "splits.csv", real_data_root)["val"]
    logs = []
    for member, temperature in zip(members, (1.4, 0.8), strict=True):
        model = keras.saving.load_model(member / "best.keras", compile=False)
        logs.append(np.log(model.predict(make_dataset(val, SIZE, False), verbose=0)) / temperature)
    expected = np.exp(np.mean(logs, axis=0))
    expected /= expected.sum(axis=1, keepdims=True)
    written = pd.read_csv(run / "predictions_val.csv")
    np.testing.assert_allclose(written[PROBS].to_numpy(), expected, atol=1e-5)

    # Evaluated like a run: metrics with intervals, its own temperature and threshold, a record.
    meta = json.loads((run / "meta.json").read_text())
    assert [m["temperature"] for m in meta["ensemble"]["members"]] == [1.4, 0.8]
    assert meta["train_seconds"] == 20.0 and meta["model"] == "ensemble"
    metrics = json.loads((run / "metrics.json").read_text())
    assert "balanced_accuracy" in metrics["test"]["ci"]
    for name in ("temperature.json", "operating_point.json"):
        assert (run / name).is_file(), name
    record = json.loads((tmp_path / "results" / "runs" / "probes.json").read_text())
    assert record["model"] == "ensemble"
    # Its summary names what it pools instead of epochs it never trained.
    summary = (tmp_path / "results" / "summary_probes.md").read_text()
    assert "ensemble 48 px · 2 runs pooled (LITE0 ×2)" in summary
    pooled = "| members | 2 calibrated runs, pooled (each its own kept epoch): "
    assert f"{pooled}`{members[0].name}`, `{members[1].name}` |" in summary
    assert "best.keras is epoch" not in summary

    # Exported: one served model whose engines agree with the run's own predictions.
    served = load_served(tmp_path / "export", engine="savedmodel")
    image = make_dataset(val.head(1), SIZE, False).unbatch().take(1).get_single_element()[0]
    scaled = json.loads((run / "temperature.json").read_text())["temperature"]
    assert scaled > 0
    probs = served.predict(image.numpy().astype("uint8"))
    assert probs.shape == (1, 7) and np.isclose(probs.sum(), 1.0, atol=1e-4)
    # Its guard was chosen among the first member's stages too, not the pooled features alone.
    candidates = served.metadata["ood_guard"]["comparison"]["candidates"]
    assert any(":m0_block" in name for name in candidates), list(candidates)


def test_members_are_checked_before_anything_is_written(tmp_path):
    from skin_tf.training.ensemble import check_members

    with pytest.raises(ConfigError, match="at least 2 runs"):
        check_members([tmp_path])
    with pytest.raises(ConfigError, match="listed twice"):
        check_members([tmp_path, tmp_path])
    first, second = tmp_path / "a", tmp_path / "b"
    for run, size in ((first, 48), (second, 48)):
        run.mkdir()
        for name in ("best.keras", "meta.json"):
            (run / name).write_text("{}")
        (run / "config.json").write_text(json.dumps({"image_size": size, "resize": "squash"}))
        pd.DataFrame({"image_id": ["x", "y"], "split": ["val", "test"]}).to_csv(
            run / "splits.csv", index=False
        )
    with pytest.raises(ConfigError, match="is not calibrated: run `skin-tf calibrate"):
        check_members([first, second])
    for run in (first, second):
        (run / "temperature.json").write_text(json.dumps({"temperature": 1.2}))
    assert [m.temperature for m in check_members([first, second])] == [1.2, 1.2]
    pd.DataFrame({"image_id": ["x", "y"], "split": ["test", "val"]}).to_csv(
        second / "splits.csv", index=False
    )
    with pytest.raises(ConfigError, match="were split differently"):
        check_members([first, second])
    shutil.copy(first / "splits.csv", second / "splits.csv")
    (second / "config.json").write_text(json.dumps({"image_size": [48, 64], "resize": "squash"}))
    with pytest.raises(ConfigError, match="image_size"):
        check_members([first, second])
