"""A real run in miniature for the explanation checks, made once per session from the HAM10000
copy: EfficientNet-Lite0 with its offline ImageNet weights at a non-square 48×64 input and a
linear head fitted on 140 training images (a linear probe, no training run), with a lesion split
whose test rows the checks read. Slow tier (under a minute on 2 busy cores)."""

from __future__ import annotations

import json
from pathlib import Path

import pandas as pd
import pytest

PROBE_HW = (48, 64)


@pytest.fixture(scope="session")
def probe_run(real_frame, real_data_root, tmp_path_factory) -> Path:
    from skin_tf.data.splits import split_by_lesion, write_splits
    from tests.probe import linear_probe_lite0

    split = split_by_lesion(real_frame, seed=42)
    train = split[split["split"] == "train"].sample(frac=1.0, random_state=0).groupby("dx").head(20)
    test = split[split["split"] == "test"]
    run = tmp_path_factory.mktemp("probe_run") / "20260101T000000Z__lite0-probe-48x64"
    run.mkdir()
    write_splits(pd.concat([train, test]), run / "splits.csv")

    linear_probe_lite0(train, PROBE_HW).save(run / "best.keras")
    files = {
        "config.json": {
            "model": "efficientnet_lite0", "image_size": list(PROBE_HW), "resize": "squash",
        },
        "meta.json": {
            "run_name": "lite0-probe-48x64", "model": "efficientnet_lite0", "weights": "imagenet",
            "image_size": list(PROBE_HW), "epochs": 0, "hardware": "CPU",
            "data": {"root": str(real_data_root), "source_size": "200x150"},
        },
    }  # fmt: skip
    for name, content in files.items():
        (run / name).write_text(json.dumps(content))
    return run
