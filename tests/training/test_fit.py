"""Training: phases, class weights, the CLI; slow: real smoke runs and resume.

The per-epoch val metrics and checkpoint selection are tested in test_selection.py.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from skin_tf.cli.main import _add_train
from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.data.sizes import image_hw
from skin_tf.runs import EPOCH_SECONDS
from skin_tf.training.config import MODELS, TrainConfig, load_config
from skin_tf.training.fit import (
    BACKUP_DIR,
    RUN_FILES,
    averaged_weights_callbacks,
    check_split,
    class_weight_for,
    plan_phases,
    train,
)
from skin_tf.training.run_dir import default_run_name

PROB_COLUMNS = [f"p_{c}" for c in CLASSES]


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    _add_train(parser.add_subparsers(dest="command"))
    return parser.parse_args(["train", *argv])


# ------------------------------------------------------------------ fast


@pytest.mark.parametrize("metric", ["val_mel_recall", "val_mel_spec_at_sens85"])
def test_a_melanoma_select_metric_needs_melanoma_in_val(metric):
    frame = pd.DataFrame(
        {"split": ["train", "train", "val", "test"], "label": [MEL_INDEX, 5, 5, MEL_INDEX]}
    )
    check_split(frame, TrainConfig(select_metric="val_loss"))
    with pytest.raises(ConfigError, match=f"select_metric='{metric}' but the val split"):
        check_split(frame, TrainConfig(select_metric=metric))


def test_plan_phases():
    (frozen,) = plan_phases(TrainConfig(epochs=4, freeze_epochs=4, weights="imagenet"))
    assert (frozen.name, frozen.start, frozen.end, frozen.backbone_trainable) == (
        "head",
        0,
        4,
        False,
    )
    single = plan_phases(TrainConfig(epochs=5, warmup_epochs=1))
    assert [(p.start, p.end, p.warmup_epochs) for p in single] == [(0, 5, 1)]
    head, finetune = plan_phases(
        TrainConfig(epochs=6, freeze_epochs=2, learning_rate=1e-3, fine_tune_lr_factor=0.1)
    )
    assert (head.start, head.end, head.backbone_trainable, head.learning_rate) == (
        0,
        2,
        False,
        1e-3,
    )
    assert (finetune.start, finetune.end, finetune.backbone_trainable) == (2, 6, True)
    assert finetune.learning_rate == pytest.approx(1e-4)


def test_the_weight_average_is_swapped_in_and_the_trained_weights_back():
    """Between the two callbacks the model holds the optimizer's moving average (what the
    validation and the checkpoint see); afterwards the trained weights, unchanged."""
    import keras

    from skin_tf.models.losses import build_optimizer

    keras.utils.set_random_seed(0)
    model = keras.Sequential([keras.Input((4,)), keras.layers.Dense(7, activation="softmax")])
    optimizer = build_optimizer(0.1, 0.0, total_steps=10, ema_momentum=0.5)
    model.compile(optimizer, "sparse_categorical_crossentropy")
    x, y = np.random.default_rng(0).normal(size=(16, 4)), np.arange(16) % 7
    model.fit(x, y, epochs=1, batch_size=4, verbose=0)  # fit's end writes the average in …
    trained = [v.numpy() + 1.0 for v in model.trainable_variables]  # … so set distinct weights
    for variable, value in zip(model.trainable_variables, trained, strict=True):
        variable.assign(value)
    average = [v.numpy() for v in model.optimizer._model_variables_moving_average]
    swap_in, swap_out = averaged_weights_callbacks()
    for callback in (swap_in, swap_out):
        callback.set_model(model)
    swap_in.on_epoch_end(0, {})
    for variable, value in zip(model.trainable_variables, average, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)
    swap_out.on_epoch_end(0, {})
    for variable, value in zip(model.trainable_variables, trained, strict=True):
        np.testing.assert_array_equal(variable.numpy(), value)


def test_default_run_name():
    assert default_run_name(load_config("baseline")) == "baseline"
    assert default_run_name(load_config("baseline", profile="cpu")) == "baseline-cpu"


def test_config_mirrors_the_model_registry():
    from skin_tf.models.classifier import available_models

    assert set(MODELS) == set(available_models())


def test_class_weights_come_from_the_given_train_frame_only():
    train_frame = pd.DataFrame({"label": [0, 1, 2, 3, 4, 4, 5, 5, 5, 5, 6]})
    plain = class_weight_for(TrainConfig(), train_frame)
    boosted = class_weight_for(TrainConfig(mel_multiplier=3.0), train_frame)
    assert plain[5] < plain[4] < plain[0]  # rarer classes weigh more
    assert boosted[MEL_INDEX] == pytest.approx(3 * plain[MEL_INDEX])
    only_mel = class_weight_for(TrainConfig(class_weights=False, mel_multiplier=2.0), train_frame)
    assert only_mel == {**{c: 1.0 for c in range(7)}, MEL_INDEX: 2.0}
    assert class_weight_for(TrainConfig(class_weights=False), train_frame) is None


def test_bad_config_is_rejected_before_any_work(tmp_path: Path):
    from skin_tf.cli.main import _train as train_command

    args = _parse(["--config", "baseline", "--set", "epoch=2", "--runs-dir", str(tmp_path)])
    with pytest.raises(ConfigError, match="did you mean 'epochs'"):
        train_command(args)
    assert not any(tmp_path.iterdir())  # no run directory was made


def test_missing_synthetic_dir_is_reported_before_reading_data(tmp_path: Path):
    config = load_config("baseline_with_synth", profile="smoke")
    with pytest.raises(ConfigError, match="synthetic_dir"):
        train(config, data_root=tmp_path / "nowhere", runs_dir=tmp_path / "runs")
    assert not (tmp_path / "runs").exists()


def test_resume_needs_a_run_directory(tmp_path: Path):
    from skin_tf.cli.main import _train as train_command

    with pytest.raises(FileNotFoundError, match="config.json"):
        train(resume=tmp_path)
    with pytest.raises(ConfigError, match="--resume"):
        train_command(_parse(["--resume", str(tmp_path), "--set", "epochs=3"]))


# ------------------------------------------------------------------ slow: real smoke runs


def _check_complete_run(run_dir: Path, config: TrainConfig, epochs: int) -> None:
    """Every file of the run-directory contract, with consistent contents."""
    assert sorted(p.name for p in run_dir.iterdir()) == sorted(RUN_FILES)
    assert not (run_dir / BACKUP_DIR).exists()
    assert json.loads((run_dir / "config.json").read_text()) == config.to_dict()

    meta = json.loads((run_dir / "meta.json").read_text())
    assert meta["run_name"] == run_dir.name.split("__", 1)[1]
    assert meta["profile"] == config.profile and meta["weights"] in ("none", config.weights)
    assert meta["data"]["source_size"] == "200x150"
    assert image_hw(meta["image_size"]) == image_hw(config.image_size)

    splits = pd.read_csv(run_dir / "splits.csv")
    assert list(splits.columns) == ["image_id", "lesion_id", "dx", "split"]
    assert set(splits["split"]) == {"train", "val", "test"}
    assert meta["data"]["n_images"] == len(splits)

    history = pd.read_csv(run_dir / "history.csv")
    assert history["epoch"].tolist() == list(range(epochs))
    for column in ("loss", "acc", "val_loss", "val_acc", "val_macro_f1", "val_balanced_acc"):
        assert history[column].notna().all(), column
    assert "val_mel_recall" in history.columns
    assert (history[EPOCH_SECONDS] > 0).all()  # each epoch's wall time, resumed or not
    assert meta["train_seconds"] == pytest.approx(history[EPOCH_SECONDS].sum(), abs=0.1)

    for split in ("val", "test"):
        predictions = pd.read_csv(run_dir / f"predictions_{split}.csv")
        assert list(predictions.columns) == ["image_id", "dx", *PROB_COLUMNS]
        expected = splits[splits["split"] == split]
        assert predictions["image_id"].tolist() == expected["image_id"].tolist()
        assert predictions["dx"].tolist() == expected["dx"].tolist()
        np.testing.assert_allclose(predictions[PROB_COLUMNS].sum(axis=1), 1.0, atol=1e-4)

    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["select_metric"] == config.select_metric
    assert metrics["epochs_trained"] == epochs and 1 <= metrics["best_epoch"] <= epochs
    for split in ("val", "test"):
        report = metrics[split]
        assert report["n_images"] == int((splits["split"] == split).sum())
        for key in ("accuracy", "macro_f1", "balanced_accuracy", "mel_sensitivity", "ci"):
            assert key in report, (split, key)
        assert set(report["ci"]) >= {"accuracy", "balanced_accuracy", "mel_sensitivity"}


@pytest.mark.slow
def test_smoke_run_end_to_end(real_data_root: Path, tmp_path: Path, capsys):
    from skin_tf.cli.main import _train as train_command

    # Keras' EfficientNet-B0, which the full profile trains on a GPU (smoke swaps in Lite0).
    sets = ["select_metric=val_balanced_acc", "model=efficientnet_b0"]
    args = _parse(
        ["--config", "baseline", "--profile", "smoke", "--data", str(real_data_root),
         "--runs-dir", str(tmp_path), "--set", sets[0], "--set", sets[1]]
    )  # fmt: skip
    assert train_command(args) == 0
    printed = capsys.readouterr().out.strip().splitlines()
    run_dir = Path(printed[-1])  # the last line printed is the run directory
    assert run_dir.parent == tmp_path and run_dir.name.endswith("__baseline-smoke")
    config = load_config("baseline", profile="smoke", overrides=sets)
    assert config.model == "efficientnet_b0"
    _check_complete_run(run_dir, config, epochs=1)

    import keras

    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    assert model.predict(np.zeros((1, 64, 64, 3), "float32"), verbose=0).shape == (1, 7)


@pytest.mark.slow
def test_a_non_square_run_with_a_weight_average_end_to_end(real_data_root: Path, tmp_path):
    """Lite0 at 48x64 (the 4:3 shape), validated with the weight average; best.keras takes
    48x64 images and predicts what the run wrote, and the kept epoch is the best validated."""
    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames

    config = load_config(
        "baseline",
        profile="smoke",
        overrides=["model=efficientnet_lite0", "epochs=2", "image_size=[48,64]",
                   "ema_momentum=0.9", "select_metric=val_balanced_acc"],
    )  # fmt: skip
    run_dir = train(config, real_data_root, tmp_path / "runs")
    _check_complete_run(run_dir, config, epochs=2)
    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    assert model.input_shape == (None, 48, 64, 3)
    val = split_frames(run_dir / "splits.csv", real_data_root)["val"]
    probs = model.predict(make_dataset(val, (48, 64), training=False), verbose=0)
    written = pd.read_csv(run_dir / "predictions_val.csv")[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(probs, written, atol=1e-5)
    history = pd.read_csv(run_dir / "history.csv")
    kept = json.loads((run_dir / "metrics.json").read_text())["best_epoch"]
    assert kept == int(history["val_balanced_acc"].idxmax()) + 1


FIELDS = 'metadata=["age","sex","localization"]'


@pytest.mark.slow
def test_dx_type_never_reaches_the_model(real_data_root: Path):
    """The batches a run trains and validates on, and the model it builds, are the same whatever
    dx_type says, even when dx_type is the label itself."""
    from skin_tf.data.meta_fields import meta_width
    from skin_tf.training.distribute import make_distribution
    from skin_tf.training.fit import _datasets, build_model, prepare_data

    config = load_config("baseline", profile="smoke", overrides=[FIELDS, "metadata_dropout=0.3"])
    frame, _ = prepare_data(config, real_data_root)
    frames = {s: frame[frame["split"] == s] for s in ("train", "val", "test")}
    leaked = {s: f.assign(dx_type=f["dx"]) for s, f in frames.items()}

    def batches(frames):
        datasets = _datasets(config, frames, splits=("train", "val"))
        return [
            (name, key, features[key].numpy(), labels.numpy())
            for name, dataset in datasets.items()
            for features, labels in dataset
            for key in sorted(features)
        ]

    for (name, key, a, labels_a), (_, _, b, labels_b) in zip(
        batches(frames), batches(leaked), strict=True
    ):
        np.testing.assert_array_equal(a, b, err_msg=f"{name} {key} changed with dx_type")
        np.testing.assert_array_equal(labels_a, labels_b)
    model, _ = build_model(config, make_distribution("auto"))
    assert {t.name: t.shape[-1] for t in model.inputs} == {"image": 3, "metadata": meta_width(
        config.metadata)} == {"image": 3, "metadata": 20}  # fmt: skip
    with pytest.raises(ConfigError, match="'dx_type' can never be a model input"):
        load_config("baseline", overrides=['metadata=["age","dx_type"]'])


@pytest.mark.slow
def test_a_run_with_patient_fields_end_to_end(real_data_root: Path, tmp_path: Path):
    """Lite0 with age, sex and site (MetaBlock fusion), test-time augmentation: best.keras takes
    {"image", "metadata"} and predicts what the run wrote."""
    import keras

    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.evaluation.evaluate import predict_tta

    config = load_config("baseline", profile="smoke",
                         overrides=[FIELDS, "metadata_fusion=metablock", "tta=true"])  # fmt: skip
    run_dir = train(config, real_data_root, tmp_path / "runs")
    _check_complete_run(run_dir, config, epochs=1)
    model = keras.saving.load_model(run_dir / "best.keras", compile=False)
    test = split_frames(run_dir / "splits.csv", real_data_root)["test"]
    dataset = make_dataset(test, 64, training=False, metadata=config.metadata)
    written = pd.read_csv(run_dir / "predictions_test.csv")[PROB_COLUMNS].to_numpy()
    np.testing.assert_allclose(predict_tta(model, dataset), written, atol=1e-5)
    # The fields count: the same images with none given are answered differently.
    blank = make_dataset(test.drop(columns=["age", "sex", "localization"]), 64, training=False,
                         metadata=config.metadata)  # fmt: skip
    assert not np.allclose(model.predict(blank, verbose=0), model.predict(dataset, verbose=0))


class _InterruptAfterEpoch:
    """A Keras callback raising KeyboardInterrupt (like Ctrl-C) at the end of one epoch."""

    def __new__(cls, epoch: int):
        import keras

        class Interrupt(keras.callbacks.Callback):
            def on_epoch_end(self, current: int, logs=None) -> None:
                if current == epoch:
                    raise KeyboardInterrupt

        return Interrupt()


@pytest.mark.slow
def test_interrupted_two_phase_run_resumes_to_the_same_files(real_data_root: Path, tmp_path: Path):
    """Head phase (epoch 1), fine-tuning (epochs 2-3); Ctrl-C after epoch 2, then --resume."""
    from skin_tf.models.classifier import build_classifier

    weights = tmp_path / "pretrained.weights.h5"  # stands in for ImageNet weights (offline)
    build_classifier("efficientnet_lite0", 64, weights=None).save_weights(weights)
    config = load_config(
        "mel_sensitive",
        profile="smoke",
        overrides=[f"weights={weights}", "epochs=3", "freeze_epochs=1", "bootstrap=20"],
    )
    runs = tmp_path / "runs"
    with pytest.raises(KeyboardInterrupt):
        train(config, real_data_root, runs, callbacks=[_InterruptAfterEpoch(1)])
    (run_dir,) = runs.iterdir()
    assert not (run_dir / "metrics.json").exists()
    assert pd.read_csv(run_dir / "history.csv")["epoch"].tolist() == [0, 1]
    assert (run_dir / BACKUP_DIR).is_dir()

    assert train(resume=run_dir) == run_dir
    _check_complete_run(run_dir, config, epochs=3)
    assert list(runs.iterdir()) == [run_dir]  # resumed in place, no new run


@pytest.mark.slow
def test_a_frozen_pretrained_backbone_trains_only_the_head(real_data_root: Path, tmp_path: Path):
    """freeze_epochs == epochs: ImageNet Lite0 weights stay as loaded, only the head learns."""
    import keras

    from skin_tf.models.classifier import build_classifier

    config = load_config(
        "baseline",
        profile="smoke",
        overrides=["model=efficientnet_lite0", "weights=imagenet", "freeze_epochs=1"],
    )
    run_dir = train(config, real_data_root, tmp_path / "runs")
    _check_complete_run(run_dir, config, epochs=1)
    trained = keras.saving.load_model(run_dir / "best.keras", compile=False)
    keras.utils.set_random_seed(config.seed)  # as fit.build_model: the run's initial head
    loaded = build_classifier("efficientnet_lite0", config.image_size, weights="imagenet")
    for name in ("stem_conv", "stem_bn", "block6a_expand_conv", "top_conv", "top_bn"):
        for after, before in zip(
            trained.get_layer(name).get_weights(), loaded.get_layer(name).get_weights(), strict=True
        ):
            np.testing.assert_array_equal(after, before, err_msg=name)  # BN statistics too
    head_after, head_before = (
        m.get_layer("predictions").get_weights()[0] for m in (trained, loaded)
    )
    assert not np.allclose(head_after, head_before)
