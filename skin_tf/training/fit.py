"""Train one config end to end. `train` is the story, in the order it happens:

1. check the inputs (before any image is read);
2. read the index and split it by lesion (or take given splits, for cross-validation folds);
3. build the model (seeded, in the distribution strategy's scope, before the run directory exists,
   so missing weights leave no half-made run) and make the run directory (`run_dir.create_run`);
4. plan the phases (head only, then the whole model, when `freeze_epochs` > 0);
5. fit each phase on the training stream; after every epoch a callback
   (`selection.validation_callback`) predicts the validation set (with the averaged weights
   when `ema_momentum` is set) and ModelCheckpoint keeps the epoch that is best
   by `select_metric` as best.keras; CSVLogger appends history.csv (with `epoch_seconds`);
   BackupAndRestore keeps the last finished epoch in `<run>/backup/` so a run can resume;
6. predict val and test with best.keras (predictions_*.csv);
7. write metrics.json (`skin_tf.evaluation.metrics`, lesion-bootstrap intervals) and the
   training time (`train_seconds`, the sum of `epoch_seconds`) into meta.json.

The helpers below `train` follow the same order and never call back up; the run directory
(`run_dir`), checkpoint selection (`selection`) and distribution (`distribute`) sit beside this
module, below it.

    >>> from skin_tf.training.config import load_config
    >>> run_dir = train(load_config("baseline", profile="smoke"), runs_dir="runs")  # doctest: +SKIP
    >>> sorted(p.name for p in run_dir.iterdir())  # doctest: +SKIP
    ['best.keras', 'config.json', 'history.csv', 'meta.json', 'metrics.json', ...]

Shell: `skin-tf train --config baseline --profile cpu` (the last line printed is the run dir);
`skin-tf train --resume runs/<run>` continues an interrupted run from its last finished epoch.

The config's `strategy` picks a tf.distribute engine (skin_tf.training.distribute): the model,
optimizer and metrics are made in its scope, the global batch is batch_size × replicas, the rate
follows `lr_scaling`, and with several workers only the chief writes the run directory (the others
work in a temporary copy that is deleted at the end). docs/scaling.md has the commands.
"""

from __future__ import annotations

import os
import shutil
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, MEL_INDEX
from skin_tf.data.splits import SPLITS, apply_splits
from skin_tf.runs import EPOCH_SECONDS, write_json
from skin_tf.training.config import TrainConfig
from skin_tf.training.run_dir import (
    check_resume_replicas,
    create_run,
    prepare_resume,
    record_train_seconds,
    worker_copy,
    worker_folder,
)
from skin_tf.training.selection import predict_probs, selection_summary, validation_callback

if TYPE_CHECKING:  # TensorFlow loads only when training starts, so config errors come instantly
    import keras
    import tensorflow as tf

    from skin_tf.training.distribute import Distribution

RUN_FILES = (
    "config.json",
    "meta.json",
    "splits.csv",
    "history.csv",
    "best.keras",
    "predictions_val.csv",
    "predictions_test.csv",
    "metrics.json",
)
BACKUP_DIR = "backup"  # BackupAndRestore state; removed when the run completes
RESUME_SEED_STRIDE = 7919  # training-stream seed offset per finished epoch on resume (a prime)


def train(
    config: TrainConfig | None = None,
    data_root: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = Path("runs"),
    run_name: str | None = None,
    resume: str | os.PathLike | None = None,
    callbacks: Sequence[keras.callbacks.Callback] = (),
    splits: pd.DataFrame | None = None,
) -> Path | None:
    """Train `config` into a new run directory (or finish the run in `resume`); return its path.

    data_root defaults to $SKIN_TF_DATA or ./data/ham10000 (for a resume: the run's own data
    root). run_name defaults to "<config name>" plus "-<profile>" for non-full profiles.
    callbacks: extra Keras callbacks (e.g. TensorBoard), run after the run's own ones.
    splits: image_id and split ("train"/"val"/"test") columns to use instead of split_by_lesion
    (cross-validation folds); only those images are used.
    Non-chief workers of a multi-worker run return None: the chief's directory is the run.
    """
    from skin_tf.training.distribute import (
        WorkerLostError,
        is_peer_failure,
        learning_rate_record,
        make_distribution,
        scale_phases,
        wait_for_all_workers,
        worker_lost,
    )

    if resume is not None:
        run_dir, config, root = prepare_resume(Path(resume), config, data_root)
        check_inputs(config)
        dist = make_distribution(config.strategy)
        check_resume_replicas(run_dir, dist)
        chief_run = str(run_dir)
        if not dist.is_chief:
            run_dir = worker_copy(run_dir)
        model, _ = build_model(config, dist)
    else:
        if config is None:
            raise ValueError("train() needs a config (load_config(...)) or resume=RUN_DIR")
        check_inputs(config)
        dist = make_distribution(config.strategy)  # before any TensorFlow op (collectives)
        frame, root = prepare_data(config, data_root, splits)
        # Built before the run directory exists: missing weights leave no half-made run behind.
        model, policy = build_model(config, dist)
        runs_parent = Path(runs_dir) if dist.is_chief else worker_folder()
        phases = scale_phases(plan_phases(config), dist.replicas, config.lr_scaling)
        learning_rates = learning_rate_record(
            config.learning_rate, phases, dist.replicas, config.lr_scaling
        )
        run_dir = create_run(
            config, frame, root, runs_parent, run_name, policy, dist, learning_rates
        )
        chief_run = str(run_dir) if dist.is_chief else "<the chief's run directory>"
    try:
        _fit(run_dir, config, root, model, callbacks, dist)
        if dist.is_chief:  # evaluation is local (best.keras), so the chief does it alone
            _evaluate(run_dir, config, root)
        wait_for_all_workers(dist)
    except KeyboardInterrupt:
        print(f"\ninterrupted: continue with `skin-tf train --resume {chief_run}`", file=sys.stderr)
        raise
    except Exception as err:
        if dist.workers > 1 and is_peer_failure(err):
            raise WorkerLostError(worker_lost(err, chief_run, dist)) from err
        raise
    finally:
        if not dist.is_chief:
            shutil.rmtree(run_dir.parent, ignore_errors=True)
    if not dist.is_chief:
        return None
    shutil.rmtree(run_dir / BACKUP_DIR, ignore_errors=True)  # the run is complete
    return run_dir


# ------------------------------------------------------------------ 1-2. inputs, index and split


def check_inputs(config: TrainConfig) -> None:
    """Errors that can be found before reading any image."""
    if config.synthetic_dir is not None and not Path(config.synthetic_dir).expanduser().is_dir():
        raise ConfigError(
            f"synthetic_dir={config.synthetic_dir!r} is not a folder: generate synthetic images "
            "first (see the cVAE notebook / `skin-tf synth`), or set synthetic_dir=null"
        )
    if config.weights not in (None, "imagenet") and not Path(config.weights).is_file():
        raise ConfigError(f"weights={config.weights!r}: no such file")


def prepare_data(
    config: TrainConfig, data_root: str | os.PathLike | None, splits: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, Path]:
    """The run's index with its `split` column (subset first for smoke runs), and the data root.

    With `splits` (image_id, split), those images and splits are used as given.
    """
    from skin_tf.data.ham10000 import read_metadata, resolve_data_root
    from skin_tf.data.splits import lesion_subset, split_by_lesion

    root = resolve_data_root(data_root)
    frame = read_metadata(root)
    if splits is not None:
        frame = apply_splits(frame, splits)
    else:
        if config.subset_per_class is not None:
            frame = lesion_subset(frame, config.subset_per_class, seed=config.seed)
        frame = split_by_lesion(frame, fractions=config.fractions, seed=config.seed)
    check_split(frame, config)
    return frame, root


def check_split(frame: pd.DataFrame, config: TrainConfig) -> None:
    """Every split non-empty, and melanoma in val when checkpoints are chosen by a melanoma
    metric."""
    for split in ("train", "val", "test"):
        if not (frame["split"] == split).any():
            raise ValueError(f"the {split} split is empty: use more data or other fractions")
    val = frame[frame["split"] == "val"]
    if config.select_metric.startswith("val_mel_") and not (val["label"] == MEL_INDEX).any():
        raise ConfigError(
            f"select_metric={config.select_metric!r} but the val split holds no melanoma: "
            "choose another select_metric or a larger subset"
        )


# ------------------------------------------------------------------ 3. model


def build_model(config: TrainConfig, dist: Distribution) -> tuple[keras.Model, str]:
    """Seed everything, set the precision policy, build the classifier in the strategy's scope;
    returns (model, policy)."""
    import keras

    from skin_tf.data.meta_fields import meta_width
    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.losses import configure_precision

    keras.utils.set_random_seed(config.seed)
    policy = configure_precision(config.precision)
    with dist.strategy.scope():
        model = build_classifier(
            config.model, config.image_size, config.weights, config.dropout,
            metadata_width=meta_width(config.metadata), fusion=config.metadata_fusion,
        )  # fmt: skip
    return model, policy


# ------------------------------------------------------------------ 4. phases


@dataclass(frozen=True)
class Phase:
    """One `model.fit` call: epochs [start, end) with the backbone frozen or not."""

    name: str
    start: int
    end: int
    backbone_trainable: bool
    learning_rate: float
    warmup_epochs: int


def plan_phases(config: TrainConfig) -> list[Phase]:
    """The fit calls of a run: head-only then whole model when freeze_epochs > 0, else one;
    only the head phase when freeze_epochs == epochs (the backbone stays frozen throughout).

    >>> [(p.name, p.start, p.end) for p in plan_phases(TrainConfig(freeze_epochs=2))]
    [('head', 0, 2), ('finetune', 2, 10)]
    """
    if config.freeze_epochs == 0:
        return [Phase("all", 0, config.epochs, True, config.learning_rate, config.warmup_epochs)]
    head = Phase("head", 0, config.freeze_epochs, False, config.learning_rate, config.warmup_epochs)
    if config.freeze_epochs == config.epochs:
        return [head]
    finetune = Phase(
        "finetune",
        config.freeze_epochs,
        config.epochs,
        True,
        config.learning_rate * config.fine_tune_lr_factor,
        0,  # warm-up applies to the first phase only
    )
    return [head, finetune]


# ------------------------------------------------------------------ 5. fit


def class_weight_for(config: TrainConfig, train_frame: pd.DataFrame) -> dict[int, float] | None:
    """`model.fit` class weights from the TRAIN split: inverse frequency (mean 1) if
    config.class_weights, times mel_multiplier on melanoma; None when both are off.

    >>> config = TrainConfig(class_weights=False, mel_multiplier=3.0)
    >>> class_weight_for(config, frame)[4]  # doctest: +SKIP
    3.0
    """
    from skin_tf.data.pipeline import class_weights

    if config.class_weights:
        return class_weights(train_frame, mel_multiplier=config.mel_multiplier)
    if config.mel_multiplier != 1.0:
        weights = {c: 1.0 for c in range(len(CLASSES))}
        weights[MEL_INDEX] = config.mel_multiplier
        return weights
    return None


def _datasets(
    config: TrainConfig,
    frames: dict[str, pd.DataFrame],
    splits: tuple[str, ...] = SPLITS,
    epochs_done: int = 0,
    batch_size: int | None = None,
) -> dict[str, tf.data.Dataset]:
    """Datasets of the given splits: train shuffled/augmented/balanced, val and test in order.

    batch_size: the global batch (default config.batch_size, one replica).

    The training stream is seeded by config.seed and `epochs_done`: a resumed run draws fresh
    shuffles and augmentations instead of replaying, with trained weights, the exact batches of
    its first epoch (which a seeded stream restarted from scratch would do).
    """
    from skin_tf.data.pipeline import make_dataset

    batch_size = batch_size or config.batch_size
    common = {
        "resize": config.resize, "cache": config.cache, "batch_size": batch_size,
        "metadata": config.metadata,
    }  # fmt: skip
    datasets = {}
    if "train" in splits:
        datasets["train"] = make_dataset(
            frames["train"],
            config.image_size,
            training=True,
            augment=config.augment,
            balance=config.balance,
            sampler_power=config.sampler_power,
            synthetic_dir=config.synthetic_dir,
            seed=config.seed + RESUME_SEED_STRIDE * epochs_done,
            metadata_dropout=config.metadata_dropout,
            **common,
        )
    for split in [s for s in splits if s != "train"]:
        datasets[split] = make_dataset(frames[split], config.image_size, training=False, **common)
    return datasets


def _fit(
    run_dir: Path,
    config: TrainConfig,
    root: Path,
    model: keras.Model,
    extra: Sequence[keras.callbacks.Callback],
    dist: Distribution,
) -> None:
    """Run the phases of plan_phases, resuming from the run's backups where they exist."""
    import keras

    from skin_tf.data.splits import split_frames
    from skin_tf.models.classifier import set_backbone_trainable
    from skin_tf.models.losses import build_loss, build_optimizer
    from skin_tf.runs import add_history_column, best_so_far, completed_epochs, trim_history
    from skin_tf.training.distribute import scale_phases, shard_by

    epochs_done = completed_epochs(run_dir / BACKUP_DIR)
    history = run_dir / "history.csv"
    trim_history(history, epochs_done)
    add_history_column(history, EPOCH_SECONDS)  # a run begun before the column existed
    frames = split_frames(run_dir / "splits.csv", root)
    global_batch = dist.global_batch_size(config.batch_size)
    common = {"epochs_done": epochs_done, "batch_size": global_batch}
    datasets = _datasets(config, frames, ("train", "val"), **common)
    datasets = {split: shard_by(dataset, "data") for split, dataset in datasets.items()}
    steps = len(datasets["train"])
    weights = class_weight_for(config, frames["train"])
    loss = build_loss(config.loss, config.label_smoothing, config.focal_gamma)
    validation = validation_callback(datasets["val"], frames["val"]["label"].to_numpy(), loss)
    phases = scale_phases(plan_phases(config), dist.replicas, config.lr_scaling)
    if dist.replicas > 1:
        print(
            f"{dist.setting}: {dist.replicas} replicas on {dist.workers} worker(s), global batch "
            f"{global_batch}, learning rate {phases[0].learning_rate:g} ({config.lr_scaling} "
            f"scaling of {config.learning_rate:g}, warm-up {phases[0].warmup_epochs} epoch(s))",
            file=sys.stderr,
        )
    for phase in phases:
        if config.freeze_epochs:  # single-phase runs keep every layer (BatchNorm too) trainable
            set_backbone_trainable(model, phase.backbone_trainable)
        with dist.strategy.scope():  # optimizer and metric variables live on every replica
            optimizer = build_optimizer(
                phase.learning_rate,
                config.weight_decay,
                total_steps=steps * (phase.end - phase.start),
                warmup_steps=steps * phase.warmup_epochs,
                schedule=config.lr_schedule,
                ema_momentum=config.ema_momentum,
            )
            model.compile(
                optimizer,
                loss,
                metrics=[keras.metrics.SparseCategoricalAccuracy(name="acc")],
                jit_compile=config.jit_compile,
            )
        # The weight average, when kept, is what validation, the checkpoint and best.keras see;
        # the trained weights go back before the backup and the next epoch.
        swap_in, swap_out = averaged_weights_callbacks() if config.ema_momentum else (None, None)
        callbacks = [
            swap_in,
            validation,  # before the callbacks that read the val_* values it adds to the logs
            keras.callbacks.ModelCheckpoint(
                run_dir / "best.keras",
                monitor=config.select_metric,
                mode=config.select_mode,
                save_best_only=True,
                initial_value_threshold=best_so_far(
                    history, config.select_metric, config.select_mode
                ),
            ),
            swap_out,
            epoch_clock(),  # after validation and the checkpoint: the epoch's time includes them
            keras.callbacks.CSVLogger(history, append=True),
            keras.callbacks.BackupAndRestore(
                run_dir / BACKUP_DIR / phase.name, delete_checkpoint=False
            ),
            *extra,
        ]
        callbacks = [callback for callback in callbacks if callback is not None]
        # BackupAndRestore sets this private field when it restores; a stale value from the
        # previous phase would otherwise override initial_epoch below.
        model._initial_epoch = None
        model.fit(
            datasets["train"],
            epochs=phase.end,
            initial_epoch=phase.start,
            class_weight=weights,
            callbacks=callbacks,
            shuffle=False,  # the pipeline shuffles (seeded); Keras can't shuffle a tf.data set
            verbose=1 if sys.stdout.isatty() else 2,
        )


def averaged_weights_callbacks() -> tuple[keras.callbacks.Callback, keras.callbacks.Callback]:
    """(swap_in, swap_out) for a model whose optimizer keeps a weight average (`use_ema`): at
    each epoch's end swap_in writes the average into the model and swap_out restores the trained
    weights; list the callbacks that should see the average between the two."""
    import keras

    stash: list[Any] = []

    class SwapInAverage(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            stash[:] = [v.numpy() for v in self.model.trainable_variables]
            self.model.optimizer.finalize_variable_values(self.model.trainable_variables)

    class SwapOutAverage(keras.callbacks.Callback):
        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            for variable, value in zip(self.model.trainable_variables, stash, strict=True):
                variable.assign(value)
            stash.clear()

    return SwapInAverage(), SwapOutAverage()


def epoch_clock() -> keras.callbacks.Callback:
    """Adds `epoch_seconds` (wall time since the epoch began) to each epoch's logs."""
    import keras

    class EpochClock(keras.callbacks.Callback):
        def on_epoch_begin(self, epoch: int, logs: dict | None = None) -> None:
            self.start = time.monotonic()

        def on_epoch_end(self, epoch: int, logs: dict | None = None) -> None:
            if logs is not None:
                logs[EPOCH_SECONDS] = round(time.monotonic() - self.start, 1)

    return EpochClock()


# ------------------------------------------------------------------ 6-7. predictions and metrics


def predict_frame(
    model: keras.Model, dataset: tf.data.Dataset, frame: pd.DataFrame, tta: bool = False
) -> pd.DataFrame:
    """image_id, dx, p_<class>… for a dataset built from `frame` with training=False (same order).

    tta=True averages the softmax over the 8 flips/90° rotations of each image.
    """
    probs = predict_probs(model, dataset, tta=tta)
    if len(probs) != len(frame):
        raise RuntimeError(f"predicted {len(probs)} rows for {len(frame)} images")
    out = frame[["image_id", "dx"]].reset_index(drop=True).copy()
    for i, code in enumerate(CLASSES):
        out[f"p_{code}"] = probs[:, i]
    return out


def _evaluate(run_dir: Path, config: TrainConfig, root: Path) -> None:
    import keras

    from skin_tf.data.splits import split_frames
    from skin_tf.evaluation.metrics import (
        classification_metrics,
        evaluate_split,
        frame_arrays,
        read_predictions,
    )

    best = run_dir / "best.keras"
    if not best.is_file():
        raise RuntimeError(f"{best} is missing: no epoch was checkpointed; check history.csv")
    model = keras.saving.load_model(best, compile=False)
    frames = split_frames(run_dir / "splits.csv", root)
    datasets = _datasets(config, frames, ("val", "test"))
    report: dict[str, Any] = selection_summary(run_dir / "history.csv", config)
    for split in ("val", "test"):
        predictions = predict_frame(model, datasets[split], frames[split], tta=config.tta)
        predictions.to_csv(run_dir / f"predictions_{split}.csv", index=False, float_format="%.6f")
        frame = read_predictions(run_dir, split)
        if config.bootstrap > 0:
            report[split] = evaluate_split(frame, n_boot=config.bootstrap, seed=config.seed)
        else:
            labels, probs, lesions = frame_arrays(frame)
            report[split] = classification_metrics(labels, probs)
            report[split]["n_lesions"] = int(pd.Series(lesions).nunique())
    write_json(run_dir / "metrics.json", report)
    record_train_seconds(run_dir)
