"""`skin-tf explain-check`'s story: the images it picks, the mistakes it names, and a run on real
HAM10000 images with a real (linear-probe) EfficientNet-Lite0 at a non-square size."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.data.ham10000 import CLASSES
from skin_tf.explain.checks import CheckConfig, explain_check_run, held_out_images, pick_images
from skin_tf.explain.choice import CHECK_FILE, explain_choice


def frame(counts: dict[str, int]) -> pd.DataFrame:
    rows = [(f"{dx}_{i}", f"L{dx}{i // 2}", dx) for dx, n in counts.items() for i in range(n)]
    return pd.DataFrame(rows, columns=["image_id", "lesion_id", "dx"])


def test_images_are_as_equal_per_class_as_the_classes_allow_in_every_prefix():
    test = frame({"nv": 60, "mel": 12, "df": 2, "vasc": 5, "bcc": 9, "bkl": 20, "akiec": 7})
    picked = pick_images(test, 40, seed=1)
    counts = picked["dx"].value_counts()
    assert len(picked) == 40 and counts["df"] == 2 and counts["vasc"] == 5
    # 33 places for five classes: three get 7 (in CLASSES order), two get 6.
    assert counts["akiec"] == counts["bcc"] == counts["bkl"] == 7
    assert counts["mel"] == counts["nv"] == 6
    assert sorted(picked["dx"][:7]) == sorted(CLASSES)  # the first turn: one of each class
    assert set(pick_images(test, 40, seed=2)["image_id"]) != set(picked["image_id"])
    assert len(pick_images(test, 1000)) == len(test)


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (CheckConfig(fill="black"), "unknown fill"),
        (CheckConfig(methods=("lime",)), "unknown method"),
        (CheckConfig(images=1), "images must be at least 2"),
        (CheckConfig(cascade_depth=1), "cascade_depth"),
    ],
)
def test_mistakes_are_named_before_any_work(tmp_path, config, message):
    with pytest.raises(ValueError, match=message):
        explain_check_run(tmp_path, tmp_path / "out", config)


def test_a_missing_model_or_data_folder_says_what_to_do(tmp_path):
    with pytest.raises(FileNotFoundError, match="best.keras"):
        explain_check_run(tmp_path, tmp_path / "out")
    (tmp_path / "splits.csv").write_text(
        "image_id,lesion_id,dx,split\nISIC_1,L1,nv,test\nISIC_2,L2,mel,train\n"
    )
    (tmp_path / "meta.json").write_text(json.dumps({"data": {"root": str(tmp_path / "gone")}}))
    with pytest.raises(FileNotFoundError, match="--data"):
        held_out_images(tmp_path)


@pytest.mark.slow
def test_a_real_non_square_run_is_checked_reported_and_read_by_export(probe_run, tmp_path):
    config = CheckConfig(
        images=7, steps=4, methods=("gradcam", "scorecam", "layercam@block5+top", "rise"),
        randomization_images=2, cascade_depth=3, n_boot=30,
    )  # fmt: skip
    record = explain_check_run(probe_run, tmp_path / "explain", config)
    assert record["input_size"] == [48, 64] and record["random_map_grid"] == [2, 2]
    assert record["images"]["n"] == 7 and set(record["images"]["per_class"].values()) == {1}
    methods = record["methods"]
    assert methods["gradcam"]["grid"] == [2, 2] and methods["gradcam"]["layers"] == ["top_conv"]
    assert methods["layercam@block5+top"]["layers"] == ["block5c_add", "top_conv"]
    assert methods["layercam@block5+top"]["grid"] == [3, 4]
    assert methods["scorecam"]["servable"] is False
    assert methods["rise"]["servable"] is True and methods["rise"]["layers"] == []
    assert methods["rise"]["grid"] == [8, 8]
    assert record["randomization"]["steps"] == ["head", "top", "block7"]
    for entry in [*methods.values(), *record["baselines"].values()]:
        for curve in ("deletion", "insertion"):
            low, high = entry[curve]["ci"]
            assert 0.0 <= low <= entry[curve]["auc"] <= high <= 1.0
    assert record["baselines"]["centre"]["deletion"]["vs_centre"] == 0.0
    # Every curve starts from the image itself, at the probability of the class it explains
    # (the predicted one), and deletion ends where insertion starts (the mean-colour image).
    curves = record["mean_curves"]
    assert len(curves["gradcam"]["deletion"]) == 5
    starts = {name: c["deletion"][0] for name, c in curves.items()}
    assert max(starts.values()) - min(starts.values()) < 1e-6 and starts["gradcam"] > 1 / 7
    assert curves["random"]["deletion"][-1] == pytest.approx(curves["centre"]["insertion"][0])
    choice = record["default"]
    assert choice["method"] in ("gradcam", "layercam@block5+top", "rise")  # servable ones only
    assert isinstance(choice["explanation"], bool) and choice["headline"]

    saved = json.loads((probe_run / CHECK_FILE).read_text())
    assert saved["default"] == choice and saved["report"] == record["report"]
    assert explain_choice(probe_run)["method"] == choice["method"]
    report = Path(record["report"]).read_text()
    assert "| Score-CAM | top_conv | 2×2 |" in report and "median Spearman" in report
    assert (tmp_path / "explain" / "lite0-probe-48x64.png").stat().st_size > 20_000
    assert np.isfinite(record["timing"]["seconds"]["total"])
