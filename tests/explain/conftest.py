"""A real run in miniature for the explanation checks, made once per session from the HAM10000
copy: EfficientNet-Lite0 with its offline ImageNet weights at a non-square 48×64 input and a
linear head fitted on 140 training images (a linear probe, no training run), with a lesion split
whose test rows the checks read. Slow tier (under a minute on 2 busy cores)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

PROBE_HW = (48, 64)


@pytest.fixture(scope="session")
def probe_run(real_frame, real_data_root, tmp_path_factory) -> Path:
    import keras
    from sklearn.linear_model import LogisticRegression

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_by_lesion, write_splits
    from skin_tf.models.classifier import build_classifier

    split = split_by_lesion(real_frame, seed=42)
    train = split[split["split"] == "train"].sample(frac=1.0, random_state=0).groupby("dx").head(20)
    test = split[split["split"] == "test"]
    run = tmp_path_factory.mktemp("probe_run") / "20260101T000000Z__lite0-probe-48x64"
    run.mkdir()
    write_splits(pd.concat([train, test]), run / "splits.csv")

    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_lite0", PROBE_HW, weights="imagenet")
    head = model.get_layer("predictions")
    features = keras.Model(model.inputs[0], head.input)
    data = make_dataset(train, PROBE_HW, training=False, cache=False)
    x = np.concatenate([features(batch, training=False).numpy() for batch, _ in data])
    probe = LogisticRegression(max_iter=2000, C=0.5, class_weight="balanced")
    probe.fit(x, train["label"].to_numpy())
    head.kernel.assign(probe.coef_.T.astype("float32"))
    head.bias.assign(probe.intercept_.astype("float32"))
    model.save(run / "best.keras")
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
