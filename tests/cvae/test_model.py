"""The conditional VAE: shapes, conditioning, its loss on real images, run folders, resume."""

from __future__ import annotations

import json

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf

from skin_tf.config_files import ConfigError
from skin_tf.cvae.config import VaeConfig, load_vae_config
from skin_tf.cvae.model import WEIGHTS_FILE, ConditionalVAE, build_vae, train_vae
from skin_tf.cvae.quality import (
    reconstruction_error,
)
from skin_tf.cvae.synth import latent_codes, sample_images
from skin_tf.data.ham10000 import CLASSES
from tests.cvae.conftest import TINY


def _real_batch(real_frame: pd.DataFrame, size: int, per_class: int = 2):
    from skin_tf.data.pipeline import load_image

    picked = real_frame.groupby("dx", sort=True).head(per_class)
    images = np.stack([load_image(p, size) for p in picked["path"]]).astype("float32")
    return images, picked["label"].to_numpy("int32")


# ------------------------------------------------------------------------------ model


@pytest.mark.parametrize("size", [32, 64])
def test_shapes(size):
    vae = build_vae(VaeConfig(image_size=size, **TINY))
    images = np.random.default_rng(0).uniform(0, 255, (3, size, size, 3)).astype("float32")
    labels = np.array([0, 4, 6], "int32")
    mean, log_var = vae.encode(images, labels)
    assert mean.shape == log_var.shape == (3, 8)
    out = np.asarray(vae((images, labels)))
    assert out.shape == (3, size, size, 3)
    assert out.min() >= 0 and out.max() <= 255
    assert sample_images(vae, [1, 2], [0, 1]).dtype == np.uint8


def test_unsupported_image_size_is_refused():
    with pytest.raises(ValueError, match="image_size=48"):
        ConditionalVAE(image_size=48)


def test_loss_decreases_on_real_images(real_frame):
    images, labels = _real_batch(real_frame, 32)
    vae = build_vae(VaeConfig(image_size=32, learning_rate=2e-3, **TINY))
    before = vae.evaluate(images, labels, verbose=0, return_dict=True)
    steps = tf.data.Dataset.from_tensors((images, labels)).repeat(30)
    history = vae.fit(steps, epochs=1, shuffle=False, verbose=0).history
    after = vae.evaluate(images, labels, verbose=0, return_dict=True)
    assert after["loss"] < 0.9 * before["loss"], (before, after)
    assert set(history) == {"loss", "reconstruction", "kl", "kl_weight"}


def test_kl_warm_up_ramps_with_optimizer_steps():
    vae = build_vae(VaeConfig(image_size=32, beta=2.0, **TINY), kl_warmup_steps=4)
    images, labels = np.zeros((2, 32, 32, 3), "float32"), np.array([0, 1], "int32")
    # One batch per epoch, so each epoch's logged kl_weight is that step's exact value.
    weights = vae.fit(images, labels, batch_size=2, epochs=6, verbose=0).history["kl_weight"]
    np.testing.assert_allclose(weights, [0.5, 1.0, 1.5, 2.0, 2.0, 2.0], rtol=1e-6)


def test_sampling_is_deterministic_for_a_seed():
    vae = build_vae(VaeConfig(image_size=32, **TINY))
    first = sample_images(vae, [4, 4, 5], [7, 8, 9])
    again = sample_images(vae, [4, 4, 5], [7, 8, 9])
    alone = sample_images(vae, [5], [9])  # a seed draws the same image in any batch
    np.testing.assert_array_equal(first, again)
    np.testing.assert_array_equal(first[2:], alone)
    assert not np.array_equal(first[0], first[1])  # different seeds, different images


def test_class_label_reaches_the_decoder():
    vae = build_vae(VaeConfig(image_size=32, **TINY))
    z = np.repeat(latent_codes([3], 8), len(CLASSES), axis=0)
    per_class = np.asarray(vae.decode(z, np.arange(len(CLASSES))))
    again = np.asarray(vae.decode(z, np.arange(len(CLASSES))))
    np.testing.assert_array_equal(per_class, again)
    for a in range(len(CLASSES)):
        for b in range(a + 1, len(CLASSES)):
            assert not np.allclose(per_class[a], per_class[b]), (CLASSES[a], CLASSES[b])


@pytest.mark.slow
def test_class_conditioning_is_learned():
    """Trained on one colour per class, samples of different classes take different colours."""
    rng = np.random.default_rng(0)
    palette = np.array([[200, 60, 60], [60, 200, 60], [60, 60, 200], [200, 200, 60],
                        [200, 60, 200], [60, 200, 200], [120, 120, 120]], "float32")  # fmt: skip
    labels = np.repeat(np.arange(len(CLASSES)), 4).astype("int32")
    noise = rng.normal(0, 10, (len(labels), 32, 32, 3))
    images = np.clip(palette[labels][:, None, None, :] + noise, 0, 255).astype("float32")
    config = VaeConfig(image_size=32, latent_dim=8, embed_dim=4, base_filters=8,
                       learning_rate=3e-3, beta=3.0)  # fmt: skip
    vae = build_vae(config)  # β > 1 pushes what the label already says out of z
    vae.fit(images, labels, batch_size=len(labels), epochs=150, verbose=0)
    colours = sample_images(vae, list(range(len(CLASSES))), [3] * len(CLASSES)).mean(axis=(1, 2))
    distances = np.linalg.norm(colours[:, None] - colours[None], axis=2)
    assert distances[np.triu_indices(len(CLASSES), 1)].min() > 5, np.round(colours)


def test_run_directory_contents(tiny_run):
    names = {p.name for p in tiny_run.iterdir()}
    assert names >= {"config.json", "meta.json", "splits.csv", "history.csv", WEIGHTS_FILE,
                     "loss_curves.png"}  # fmt: skip
    assert "backup" not in names  # removed once the run completes
    history = pd.read_csv(tiny_run / "history.csv")
    assert list(history["epoch"]) == [0]
    assert {"loss", "val_loss", "reconstruction", "val_kl"} <= set(history.columns)
    meta = json.loads((tiny_run / "meta.json").read_text())
    assert (meta["model"], meta["image_size"], meta["weights"]) == ("cvae", 32, "none")
    with pytest.raises(FileExistsError, match="already complete"):
        train_vae(resume=tiny_run)


def test_resume_finishes_an_interrupted_run(tmp_path, monkeypatch):
    import skin_tf.cvae.model as cvae
    from tests.fakes import make_fake_ham10000

    class StopAfterFirstEpoch(keras.callbacks.Callback):
        def on_epoch_end(self, epoch, logs=None):
            raise KeyboardInterrupt("simulated crash")

    root = make_fake_ham10000(tmp_path / "ham", per_class=4)
    sets = [f"{k}={v}" for k, v in TINY.items()] + ["epochs=2", "subset_per_class=null"]
    config = load_vae_config("vae", profile="smoke", overrides=sets)
    monkeypatch.setattr(cvae, "_extra_callbacks", lambda: [StopAfterFirstEpoch()])
    with pytest.raises(KeyboardInterrupt):
        train_vae(config, data_root=root, runs_dir=tmp_path / "runs", run_name="crash")
    (run_dir,) = (tmp_path / "runs").iterdir()
    assert (run_dir / "backup").is_dir() and not (run_dir / WEIGHTS_FILE).exists()
    monkeypatch.setattr(cvae, "_extra_callbacks", lambda: [])
    with pytest.raises(ConfigError, match="own config.json"):
        train_vae(load_vae_config("vae"), resume=run_dir)
    assert train_vae(resume=run_dir) == run_dir
    assert list(pd.read_csv(run_dir / "history.csv")["epoch"]) == [0, 1]
    assert (run_dir / WEIGHTS_FILE).is_file() and not (run_dir / "backup").exists()


# ------------------------------------------------------------------------------ slow, real data


@pytest.mark.slow
def test_real_data_training_loss_falls(real_data_root, tmp_path):
    """A few hundred steps at 64 px on a lesion-complete real subset: the loss falls clearly."""
    config = load_vae_config(
        "vae_quick",
        overrides=["epochs=10", "subset_per_class=60", "batch_size=16", "kl_warmup_epochs=2"],
    )
    run_dir = train_vae(config, data_root=real_data_root, runs_dir=tmp_path, run_name="real")
    history = pd.read_csv(run_dir / "history.csv")
    steps = len(pd.read_csv(run_dir / "splits.csv").query("split == 'train'")) // 16 * 10
    assert steps >= 200
    # Summed BCE has a large floor (the pixels' own entropy): vae_quick ends ~11% below epoch 1.
    assert history["reconstruction"].iloc[-1] < 0.97 * history["reconstruction"].iloc[0]
    assert history["val_loss"].iloc[-1] < history["val_loss"].iloc[0]
    table = reconstruction_error(run_dir, n_boot=0).set_index("dx")
    assert (
        table.loc["all", "n_images"]
        == (pd.read_csv(run_dir / "splits.csv")["split"] == "val").sum()
    )
