"""cVAE: config, shapes, learning on real images, seeded sampling, conditioning, synth folder."""

from __future__ import annotations

import json
from pathlib import Path

import keras
import numpy as np
import pandas as pd
import pytest
import tensorflow as tf
from PIL import Image

from skin_tf.config_files import ConfigError
from skin_tf.cvae import (
    WEIGHTS_FILE,
    ConditionalVAE,
    VaeConfig,
    build_vae,
    load_vae,
    load_vae_config,
    train_vae,
    vae_config_names,
)
from skin_tf.cvae_quality import (
    compare_runs,
    cvae_report,
    recognisability,
    reconstruction_error,
    verdict,
    wilson_interval,
)
from skin_tf.data import CLASSES
from skin_tf.synth import MANIFEST, latent_codes, read_manifest, sample_images, synth_to_folder

TINY = {"latent_dim": 8, "embed_dim": 4, "base_filters": 8}


def _real_batch(real_frame: pd.DataFrame, size: int, per_class: int = 2):
    from skin_tf.pipeline import load_image

    picked = real_frame.groupby("dx", sort=True).head(per_class)
    images = np.stack([load_image(p, size) for p in picked["path"]]).astype("float32")
    return images, picked["label"].to_numpy("int32")


# ------------------------------------------------------------------------------ config


def test_shipped_configs_and_profiles():
    assert vae_config_names() == ["vae", "vae_quick"]
    full, quick = load_vae_config("vae"), load_vae_config("vae_quick")
    assert (full.epochs, quick.epochs) == (30, 10)
    assert (full.latent_dim, full.embed_dim, full.image_size) == (128, 16, 64)
    smoke = load_vae_config("vae", profile="smoke", overrides=["latent_dim=32"])
    assert (smoke.profile, smoke.image_size, smoke.epochs, smoke.latent_dim) == ("smoke", 32, 1, 32)
    assert smoke.subset_per_class is not None


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        (["latnt_dim=3"], "did you mean 'latent_dim'"),
        (["image_size=100"], "image_size=100"),
        (["kl_warmup_epochs=99"], "kl_warmup_epochs"),
        (["beta=-1"], "beta"),
        (["epochs"], "expected key=value"),
        (["augment=maybe"], "augment"),
    ],
)
def test_bad_overrides_name_the_key(overrides, message):
    with pytest.raises(ConfigError, match=message):
        load_vae_config("vae", overrides=overrides)


def test_classifier_config_and_unknown_profile_are_refused():
    with pytest.raises(ConfigError, match="classifier config"):
        load_vae_config("baseline")
    with pytest.raises(ConfigError, match="choose one of full, smoke"):
        load_vae_config("vae", profile="cpu")


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


# ------------------------------------------------------------------------------ runs and folder


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory) -> Path:
    """A finished 1-epoch 32 px cVAE run on a small synthetic HAM10000 copy."""
    from tests.fakes import make_fake_ham10000

    base = tmp_path_factory.mktemp("cvae")
    root = make_fake_ham10000(base / "ham", per_class=6)
    sets = [f"{k}={v}" for k, v in TINY.items()] + ["subset_per_class=null"]
    config = load_vae_config("vae", profile="smoke", overrides=sets)
    return train_vae(config, data_root=root, runs_dir=base / "runs", run_name="tiny")


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
    import skin_tf.cvae as cvae
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


def test_manifest_contract(tiny_run, tmp_path):
    out = tmp_path / "synth"
    manifest = synth_to_folder(tiny_run, per_class=3, out=out, classes=["nv", "mel"], seed=5)
    assert list(manifest.columns) == ["file", "dx", "seed", "vae_run"]
    assert manifest.equals(pd.read_csv(out / MANIFEST))
    assert list(manifest["dx"]) == ["mel"] * 3 + ["nv"] * 3  # CLASSES order
    assert {p.name for p in out.iterdir()} == {MANIFEST, "mel", "nv"}
    assert set(manifest["vae_run"]) == {tiny_run.name}
    assert manifest["seed"].is_unique
    for row in manifest.itertuples():
        assert row.file.startswith(f"{row.dx}/") and row.file.endswith(".png")
        with Image.open(out / row.file) as image:
            assert image.size == (32, 32) and image.mode == "RGB"
    # The manifest's seed redraws the stored image exactly.
    vae, _ = load_vae(tiny_run)
    first = manifest.iloc[0]
    stored = np.asarray(Image.open(out / first["file"]))
    np.testing.assert_array_equal(sample_images(vae, [CLASSES.index(first["dx"])],
                                                [first["seed"]])[0], stored)  # fmt: skip
    checked = read_manifest(out)
    assert {"path", "label"} <= set(checked.columns)


def test_synth_refuses_to_overwrite(tiny_run, tmp_path):
    out = tmp_path / "synth"
    synth_to_folder(tiny_run, per_class=2, out=out, classes=["df"])
    with pytest.raises(FileExistsError, match="not empty"):
        synth_to_folder(tiny_run, per_class=2, out=out, classes=["mel"])
    assert {p.name for p in out.iterdir()} == {MANIFEST, "df"}
    synth_to_folder(tiny_run, per_class=1, out=out, classes=["mel"], overwrite=True)
    assert {p.name for p in out.iterdir()} == {MANIFEST, "mel"}  # old set replaced
    (out / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="notes.txt"):
        synth_to_folder(tiny_run, per_class=1, out=out, overwrite=True)
    assert (out / "notes.txt").read_text() == "mine"


def test_synth_rejects_bad_arguments(tiny_run, tmp_path):
    with pytest.raises(ValueError, match="per_class"):
        synth_to_folder(tiny_run, per_class=0, out=tmp_path / "a")
    with pytest.raises(ValueError, match="melanoma"):
        synth_to_folder(tiny_run, per_class=1, out=tmp_path / "b", classes=["melanoma"])
    with pytest.raises(FileNotFoundError, match="has not finished"):
        (tmp_path / "unfinished").mkdir()
        (tmp_path / "unfinished" / "config.json").write_text(json.dumps(VaeConfig().to_dict()))
        synth_to_folder(tmp_path / "unfinished", per_class=1, out=tmp_path / "c")


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


# ------------------------------------------------------------------------------ quality checks


def _always(dx: str, size: int = 32) -> keras.Model:
    """A classifier that gives every image to class `dx` (P = 0.9)."""
    bias = np.full(len(CLASSES), np.log(0.1 / (len(CLASSES) - 1)), "float32")
    bias[CLASSES.index(dx)] = np.log(0.9)
    inputs = keras.Input((size, size, 3))
    pooled = keras.layers.GlobalAveragePooling2D()(inputs)
    dense = keras.layers.Dense(len(CLASSES), activation="softmax", kernel_initializer="zeros",
                               bias_initializer=keras.initializers.Constant(bias))  # fmt: skip
    return keras.Model(inputs, dense(pooled))


def test_recognisability_counts_what_the_classifier_says(tiny_run, tmp_path):
    out = tmp_path / "synth"
    synth_to_folder(tiny_run, per_class=4, out=out, classes=["mel", "nv"])
    table = recognisability(_always("mel", size=48), out).set_index("dx")
    assert list(table.index) == ["mel", "nv"]
    assert table.loc["mel", "recognised"] == 1.0 and table.loc["nv", "recognised"] == 0.0
    assert table.loc["nv", "top_other"] == "mel"
    np.testing.assert_allclose(table["mean_p_dx"], [0.9, 0.1 / 6], rtol=1e-5)
    assert table.loc["mel", "ci_low"] < 1.0 == table.loc["mel", "ci_high"]
    assert table["real_val_recall"].isna().all()  # a bare model has no run to compare with


def test_wilson_interval():
    low, high = wilson_interval(8, 10)
    assert (round(low, 3), round(high, 3)) == (0.49, 0.943)
    assert all(np.isnan(wilson_interval(0, 0)))


def _classifier_run(folder: Path, probs: np.ndarray, labels: np.ndarray, synthetic_dir=None):
    """A minimal evaluated classifier run: config, meta, splits, test predictions, metrics."""
    from skin_tf.metrics import PROB_COLUMNS, evaluate_split, read_predictions
    from skin_tf.runs import json_ready

    folder.mkdir(parents=True)
    ids = [f"ISIC_{i:07d}" for i in range(len(labels))]
    dx = [CLASSES[i] for i in labels]
    lesions = [f"L{i // 2}" for i in range(len(ids))]
    splits = pd.DataFrame({"image_id": ids, "lesion_id": lesions, "dx": dx, "split": "test"})
    splits.to_csv(folder / "splits.csv", index=False)
    frame = pd.DataFrame(probs, columns=list(PROB_COLUMNS))
    frame.insert(0, "dx", dx)
    frame.insert(0, "image_id", ids)
    frame.to_csv(folder / "predictions_test.csv", index=False)
    config = {"name": folder.name, "epochs": 3, "synthetic_dir": synthetic_dir}
    (folder / "config.json").write_text(json.dumps(config))
    meta = {"run_name": folder.name, "model": "efficientnet_b0", "weights": "none",
            "image_size": 32, "epochs": 3, "hardware": "CPU (2 cores)",
            "data": {"source_size": "200x150"}}  # fmt: skip
    (folder / "meta.json").write_text(json.dumps(meta))
    metrics = {"test": json_ready(evaluate_split(read_predictions(folder, "test"), n_boot=50))}
    (folder / "metrics.json").write_text(json.dumps(metrics))
    return folder


def test_compare_runs_and_report(tiny_run, tmp_path):
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(len(CLASSES)), 10)
    noise = rng.dirichlet(np.ones(len(CLASSES)), len(labels))
    good = 0.5 * np.eye(len(CLASSES))[labels] + 0.5 * noise
    base = _classifier_run(tmp_path / "base", noise, labels)
    with_synth = _classifier_run(tmp_path / "synth", good, labels, synthetic_dir="artifacts/s")
    result = compare_runs(base, with_synth, n_boot=200)
    value, low, high = result["diff"]["balanced_accuracy"]
    expected = result["metrics"]["with_synth"]["balanced_accuracy"]
    assert value == pytest.approx(expected - result["metrics"]["baseline"]["balanced_accuracy"])
    assert 0 < low <= value <= high
    assert verdict(result).startswith("Synthetic images improved")
    assert verdict({"diff": {"balanced_accuracy": (0.01, -0.02, 0.04)}}).startswith(
        "No measurable benefit"
    )
    assert verdict({"diff": {"balanced_accuracy": (-0.05, -0.08, -0.01)}}).startswith(
        "Synthetic images made test balanced accuracy worse"
    )
    assert result["config_differences"] == []
    with pytest.raises(ValueError, match="synthetic_dir=null"):
        compare_runs(base, base)
    stored = json.loads((with_synth / "config.json").read_text())
    stored["strategy"] = "auto"  # written out by a newer version: the default, no difference
    (with_synth / "config.json").write_text(json.dumps(stored))
    assert compare_runs(base, with_synth, n_boot=20)["config_differences"] == []
    stored["epochs"] = 4
    (with_synth / "config.json").write_text(json.dumps(stored))
    assert compare_runs(base, with_synth, n_boot=20)["config_differences"] == ["epochs"]

    path = cvae_report(tiny_run, tmp_path / "results", baseline_run=base, synth_run=with_synth,
                       n_boot=50, figures=False)  # fmt: skip
    text = path.read_text()
    assert path.name == "summary_cvae.md"
    assert "| balanced_accuracy |" in text and "**Verdict:** Synthetic images improved" in text
    assert "Recognisability" in text and "Not measured yet" in text  # no classifier given
    assert tiny_run.name in text and "200x150" in text  # provenance


def test_report_says_plainly_what_is_not_measured(tiny_run, tmp_path):
    text = cvae_report(tiny_run, tmp_path, n_boot=20, figures=False).read_text()
    assert "have not been done, so there is no evidence either way" in text
    assert "| all |" in text  # the reconstruction table is always measured
