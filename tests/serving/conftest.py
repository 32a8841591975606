"""Exports shared by the serving tests, each made once per session.

- `tiny_export`: an untrained small CNN at 32 px (`tiny_model`), temperature 1.5, exported with
  both LiteRT models (int8 calibrated on synthetic images) and an out-of-distribution guard
  (Mahalanobis on its penultimate features, fitted on 64 synthetic images) but no run, so no
  validation metrics. `tiny_export_plain`: the same without the guard, as exports were before it
  (metadata format skin_tf.export/1). Fast tier.
- `real_export`: a real run in miniature on the HAM10000 copy: EfficientNet-Lite0 with its offline
  ImageNet weights at 96 px and a linear head fitted on 280 training images (a linear probe, no
  training run), temperature 1.3, a melanoma threshold chosen on its 150 validation images; then
  `export_run`, which checks every engine on those validation images and calibrates the int8
  model on 64 training images. Slow tier (about a minute on 2 busy cores).
- `real_meta_run` / `real_meta_export`: the same with age, sex and site beside the image (the
  concat fusion, its untrained layers feeding the probe), as a run trained with `metadata`.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

TINY_SIZE = 32
REAL_SIZE = 96
REAL_TEMPERATURE = 1.3


@pytest.fixture(scope="session")
def tiny_model():
    """A small CNN with EfficientNet's ingredients (swish, batch norm, a depthwise conv, a
    squeeze-excite product, `top_conv`, a Dense softmax head): it converts in seconds where
    EfficientNet-B0 takes a minute, and the real-data tier covers EfficientNet itself."""
    import keras

    keras.utils.set_random_seed(7)
    inputs = keras.Input((TINY_SIZE, TINY_SIZE, 3))
    x = keras.layers.Rescaling(1 / 127.5, offset=-1)(inputs)
    x = keras.layers.Conv2D(16, 3, strides=2, padding="same", activation="swish")(x)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.DepthwiseConv2D(3, padding="same", activation="swish")(x)
    excite = keras.layers.Dense(16, activation="sigmoid")(keras.layers.GlobalAveragePooling2D()(x))
    x = keras.layers.Multiply()([x, keras.layers.Reshape((1, 1, 16))(excite)])
    x = keras.layers.Conv2D(32, 1, activation="swish", name="top_conv")(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(7, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs, name="tiny_cnn")
    head = model.get_layer("predictions")  # logits of a few units: the classes differ
    features = keras.Model(inputs, head.input)
    probe = np.random.default_rng(0).uniform(0, 255, (8, TINY_SIZE, TINY_SIZE, 3))
    rms = float(np.sqrt(np.mean(np.square(features(probe.astype("float32")))))) + 1e-12
    kernel = np.random.default_rng(1).normal(0, 1, head.kernel.shape)
    head.kernel.assign((kernel * 3.0 / (rms * np.sqrt(kernel.shape[0]))).astype("float32"))
    return model


@pytest.fixture(scope="session")
def tiny_export(tiny_model, tmp_path_factory) -> Path:
    return _export_tiny(tiny_model, tmp_path_factory.mktemp("tiny"), tiny_guard(tiny_model))


@pytest.fixture(scope="session")
def tiny_export_plain(tiny_model, tmp_path_factory) -> Path:
    """The same export without the out-of-distribution guard."""
    return _export_tiny(tiny_model, tmp_path_factory.mktemp("tiny_plain"), None)


def _export_tiny(model, folder: Path, guard) -> Path:
    from skin_tf.serving.archive import export_model
    from skin_tf.serving.engines import probe_images

    return export_model(
        model,
        folder / "tiny-b0",
        temperature=1.5,
        metadata={"run": "tiny", "mel_threshold": {"value": 0.2, "target_sensitivity": 0.85}},
        calibration=probe_images(TINY_SIZE, n=16, seed=3).images,
        guard=guard,
    )


def tiny_guard(model):
    """A Mahalanobis guard of the tiny model's penultimate features on 64 synthetic images."""
    from skin_tf.serving.engines import probe_images
    from skin_tf.serving.guard import fit_mahalanobis
    from skin_tf.serving.guard_choice import pooled_features

    train = probe_images(TINY_SIZE, n=64, seed=5).images
    features = pooled_features(model, train, [None])[None]
    return fit_mahalanobis(features, np.arange(len(train)) % 7)


# ---------------------------------------------------------------- a real run in miniature


def _subset(frame: pd.DataFrame, per_class: int, seed: int) -> pd.DataFrame:
    """Up to `per_class` random rows of each class, in a shuffled order."""
    return frame.sample(frac=1.0, random_state=seed).groupby("dx").head(per_class)


@pytest.fixture(scope="session")
def real_run(real_frame, real_data_root, tmp_path_factory) -> Path:
    """A run directory on real images whose model is a linear probe on ImageNet Lite0 features."""
    folder = tmp_path_factory.mktemp("real_run") / "20260101T000000Z__lite0-probe"
    return _probe_run(folder, real_frame, real_data_root)


@pytest.fixture(scope="session")
def real_meta_run(real_frame, real_data_root, tmp_path_factory) -> Path:
    """`real_run` with the patient fields beside the image."""
    folder = tmp_path_factory.mktemp("real_meta_run") / "20260101T000000Z__lite0-meta-probe"
    return _probe_run(folder, real_frame, real_data_root, META)


META = ("age", "sex", "localization")


def _probe_run(run: Path, real_frame, real_data_root, fields: tuple[str, ...] = ()) -> Path:
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_by_lesion, write_splits
    from skin_tf.evaluation.calibration import apply_temperature
    from skin_tf.evaluation.threshold import choose_operating_point
    from tests.probe import linear_probe_lite0

    split = split_by_lesion(real_frame, seed=42)
    train = _subset(split[split["split"] == "train"], 40, seed=0)
    val = _subset(split[split["split"] == "val"], 30, seed=0)  # 30 mel among 150 images
    val = val.iloc[:150]
    run.mkdir()
    write_splits(pd.concat([train, val]), run / "splits.csv")

    model = linear_probe_lite0(train, REAL_SIZE, fields=fields)
    model.save(run / "best.keras")

    data = make_dataset(val, REAL_SIZE, training=False, cache=False, metadata=fields)
    raw = np.concatenate([model(x, training=False).numpy() for x, _ in data])
    scaled = apply_temperature(raw, REAL_TEMPERATURE)
    is_mel = val["label"].to_numpy() == 4
    point = choose_operating_point(is_mel, scaled[:, 4], 0.85)
    files = {
        "config.json": {"model": "efficientnet_lite0", "image_size": REAL_SIZE, "resize": "squash",
                        "metadata": list(fields)},
        "meta.json": {
            "run_name": run.name.split("__", 1)[1], "model": "efficientnet_lite0",
            "weights": "imagenet", "image_size": REAL_SIZE, "epochs": 0, "hardware": "CPU",
            "data": {"root": str(real_data_root), "source_size": "200x150"},
        },
        "temperature.json": {"temperature": REAL_TEMPERATURE},
        "operating_point.json": {
            "threshold": point.threshold, "target_sensitivity": 0.85, "calibrated": True,
            "temperature": REAL_TEMPERATURE, "chosen_on": "val",
            "val": {"sensitivity": point.sensitivity, "specificity": point.specificity},
            "test": {}, "note": point.note,
        },
    }  # fmt: skip
    for name, content in files.items():
        (run / name).write_text(json.dumps(content))
    return run


@pytest.fixture(scope="session")
def real_export(real_run, tmp_path_factory) -> Path:
    from skin_tf.serving.export import export_run

    return export_run(
        real_run, tmp_path_factory.mktemp("real_export") / "lite0-probe", calibration_images=64
    )


@pytest.fixture(scope="session")
def real_meta_export(real_meta_run, tmp_path_factory) -> Path:
    from skin_tf.serving.export import export_run

    folder = tmp_path_factory.mktemp("real_meta_export") / "lite0-meta-probe"
    # 30 images per benign-shift family (real_export: every validation image): the fields tests
    # check the inputs and the image-only guard, not how the guard keeps shifted lesions.
    return export_run(real_meta_run, folder, calibration_images=64, shifted_images=30)
