"""A class-conditional VAE for HAM10000 lesions: the model (own `train_step`) and its training.

The encoder sees the image and a class embedding, the decoder the latent code and the same
embedding, so a trained model draws new lesions *of a chosen class*. It trains on the training
split of the same lesion split as the classifier (same `fractions` and `seed`), fed by
`skin_tf.data.pipeline.make_dataset`, and writes a run directory like classifier runs do::

    >>> config = load_vae_config("vae_quick")                      # doctest: +SKIP
    >>> run_dir = train_vae(config, runs_dir="/work/runs")        # doctest: +SKIP
    >>> sorted(p.name for p in run_dir.iterdir())                 # doctest: +SKIP
    ['config.json', 'history.csv', 'loss_curves.png', 'meta.json', 'splits.csv', 'vae.weights.h5']

Shell: `skin-tf train-vae --config vae_quick [--profile smoke] [--set epochs=3]`;
`skin-tf train-vae --resume RUN_DIR` finishes an interrupted run from its last finished epoch.
Configs live in `skin_tf.cvae.config`; sampling, the synthetic-image folder and
the figures in `skin_tf.cvae.synth`; reconstruction error, recognisability and the "does it help?"
report in `skin_tf.cvae.quality`.

Loss: per-image binary cross-entropy summed over pixels (pixels scaled to 0..1) plus β·KL, with β
ramped linearly from 0 over `kl_warmup_epochs` (the ramp follows the optimizer's step count, so a
resumed run continues it). Validation loss always uses the full β (the objective being trained for).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import keras
import numpy as np
import pandas as pd
import tensorflow as tf
from keras import layers, ops

from skin_tf.cvae.config import IMAGE_SIZES, VaeConfig, vae_config_from_dict
from skin_tf.data.ham10000 import CLASSES
from skin_tf.data.splits import split_frames

WEIGHTS_FILE = "vae.weights.h5"  # written when training completes: its presence marks a done run
BACKUP_DIR = "backup"  # BackupAndRestore state; removed when the run completes
LOSS_FIGURE = "loss_curves.png"


# ------------------------------------------------------------------------------------- model


def _stage_filters(image_size: int, base_filters: int) -> list[int]:
    """Conv widths of the encoder stages (the decoder uses them reversed): 64 px → 4 stages."""
    stages = int(math.log2(image_size // 4))
    return [base_filters * min(2**i, 8) for i in range(stages)]


def _build_encoder(image_size: int, latent_dim: int, embed_dim: int, filters: list[int]):
    image = keras.Input((image_size, image_size, 3), name="image_01")
    embedding = keras.Input((embed_dim,), name="class_embedding")
    x = image
    for i, width in enumerate(filters):
        x = layers.Conv2D(width, 4, strides=2, padding="same", name=f"enc_conv{i}")(x)
        x = layers.LeakyReLU(0.2)(x)
    x = layers.Concatenate(name="features_and_class")([layers.Flatten()(x), embedding])
    x = layers.Dense(512, activation="relu", name="enc_dense")(x)
    mean = layers.Dense(latent_dim, name="z_mean")(x)
    log_var = layers.Dense(latent_dim, name="z_log_var")(x)
    return keras.Model([image, embedding], [mean, log_var], name="encoder")


def _build_decoder(latent_dim: int, embed_dim: int, filters: list[int]):
    z = keras.Input((latent_dim,), name="z")
    embedding = keras.Input((embed_dim,), name="class_embedding")
    x = layers.Concatenate(name="latent_and_class")([z, embedding])
    x = layers.Dense(4 * 4 * filters[-1], activation="relu", name="dec_dense")(x)
    x = layers.Reshape((4, 4, filters[-1]))(x)
    for i, width in enumerate(reversed(filters)):
        x = layers.Conv2DTranspose(width, 4, strides=2, padding="same", name=f"dec_deconv{i}")(x)
        x = layers.LeakyReLU(0.2)(x)
    logits = layers.Conv2D(3, 3, padding="same", name="pixel_logits")(x)
    return keras.Model([z, embedding], logits, name="decoder")


@keras.saving.register_keras_serializable(package="skin_tf")
class ConditionalVAE(keras.Model):
    """cVAE on float images in 0..255 (the pipeline's format) and int class labels.

    `encode` → (mean, log_var); `decode` → images in 0..255; calling the model on
    (images, labels) reconstructs through the posterior mean (no noise) unless training.

    >>> vae = ConditionalVAE(image_size=64)
    >>> vae((np.zeros((2, 64, 64, 3), "float32"), np.array([0, 4]))).shape
    TensorShape([2, 64, 64, 3])
    """

    def __init__(
        self,
        image_size: int = 64,
        latent_dim: int = 128,
        embed_dim: int = 16,
        base_filters: int = 32,
        num_classes: int = len(CLASSES),
        beta: float = 1.0,
        kl_warmup_steps: int = 0,
        seed: int | None = None,
        **kwargs: Any,
    ) -> None:
        super().__init__(**kwargs)
        if image_size not in IMAGE_SIZES:
            raise ValueError(f"image_size={image_size}: must be one of {IMAGE_SIZES}")
        self.image_size, self.latent_dim, self.embed_dim = image_size, latent_dim, embed_dim
        self.base_filters, self.num_classes = base_filters, num_classes
        self.beta, self.kl_warmup_steps, self.seed = beta, kl_warmup_steps, seed
        filters = _stage_filters(image_size, base_filters)
        self.class_embedding = layers.Embedding(num_classes, embed_dim, name="class_embedding")
        self.encoder = _build_encoder(image_size, latent_dim, embed_dim, filters)
        self.decoder = _build_decoder(latent_dim, embed_dim, filters)
        self.noise = keras.random.SeedGenerator(seed)
        self.trackers = {
            name: keras.metrics.Mean(name=name)
            for name in ("loss", "reconstruction", "kl", "kl_weight")
        }

    # -- forward pieces

    def encode(self, images, labels):
        """(mean, log_var) of q(z | image, class); images float 0..255."""
        embedding = self.class_embedding(ops.cast(labels, "int32"))
        return self.encoder([ops.convert_to_tensor(images, "float32") / 255.0, embedding])

    def decode_logits(self, z, labels):
        embedding = self.class_embedding(ops.cast(labels, "int32"))
        return self.decoder([ops.convert_to_tensor(z, "float32"), embedding])

    def decode(self, z, labels):
        """Images (float 0..255) for latent codes `z` and class indices `labels`."""
        return ops.sigmoid(self.decode_logits(z, labels)) * 255.0

    def call(self, inputs, training=False):
        images, labels = inputs
        mean, log_var = self.encode(images, labels)
        z = self._sample_z(mean, log_var) if training else mean
        return self.decode(z, labels)

    def _sample_z(self, mean, log_var):
        eps = keras.random.normal(ops.shape(mean), seed=self.noise)
        return mean + ops.exp(0.5 * log_var) * eps

    # -- losses and steps

    def kl_weight(self):
        """β times the warm-up ramp: 0 at step 0, β from step `kl_warmup_steps` on."""
        if not self.kl_warmup_steps:
            return ops.convert_to_tensor(self.beta, "float32")
        step = ops.cast(self.optimizer.iterations, "float32") + 1.0
        return self.beta * ops.minimum(1.0, step / float(self.kl_warmup_steps))

    def losses_for(self, images, labels, kl_weight, training):
        """Per-batch means of reconstruction (BCE summed over pixels) and KL (summed over z)."""
        mean, log_var = self.encode(images, labels)
        z = self._sample_z(mean, log_var) if training else mean
        logits = self.decode_logits(z, labels)
        target = ops.cast(images, "float32") / 255.0
        bce = ops.softplus(logits) - target * logits  # BCE from logits, numerically stable
        reconstruction = ops.mean(ops.sum(bce, axis=(1, 2, 3)))
        kl = ops.mean(-0.5 * ops.sum(1.0 + log_var - ops.square(mean) - ops.exp(log_var), axis=1))
        return reconstruction + kl_weight * kl, reconstruction, kl

    def train_step(self, data):
        images, labels = data[0], data[1]
        kl_weight = self.kl_weight()
        with tf.GradientTape() as tape:
            loss, reconstruction, kl = self.losses_for(images, labels, kl_weight, training=True)
        gradients = tape.gradient(loss, self.trainable_weights)
        self.optimizer.apply_gradients(zip(gradients, self.trainable_weights, strict=True))
        return self._update((loss, reconstruction, kl, kl_weight))

    def test_step(self, data):
        images, labels = data[0], data[1]
        kl_weight = ops.convert_to_tensor(self.beta, "float32")
        loss, reconstruction, kl = self.losses_for(images, labels, kl_weight, training=False)
        return self._update((loss, reconstruction, kl, kl_weight))

    def _update(self, values):
        for tracker, value in zip(self.trackers.values(), values, strict=True):
            tracker.update_state(value)
        return {name: tracker.result() for name, tracker in self.trackers.items()}

    @property
    def metrics(self):
        return list(self.trackers.values())

    def get_config(self) -> dict[str, Any]:
        return {
            **super().get_config(),
            "image_size": self.image_size,
            "latent_dim": self.latent_dim,
            "embed_dim": self.embed_dim,
            "base_filters": self.base_filters,
            "num_classes": self.num_classes,
            "beta": self.beta,
            "kl_warmup_steps": self.kl_warmup_steps,
            "seed": self.seed,
        }


def build_vae(config: VaeConfig, kl_warmup_steps: int = 0) -> ConditionalVAE:
    """A compiled, built ConditionalVAE for `config` (weights random, Adam at its learning rate).

    >>> build_vae(VaeConfig(image_size=32)).count_params() > 0
    True
    """
    keras.utils.set_random_seed(config.seed)
    vae = ConditionalVAE(
        image_size=config.image_size,
        latent_dim=config.latent_dim,
        embed_dim=config.embed_dim,
        base_filters=config.base_filters,
        beta=config.beta,
        kl_warmup_steps=kl_warmup_steps,
        seed=config.seed,
        name="conditional_vae",
    )
    vae.compile(optimizer=keras.optimizers.Adam(config.learning_rate))
    size = config.image_size
    vae((np.zeros((1, size, size, 3), "float32"), np.zeros((1,), "int32")))  # build all weights
    return vae


def load_vae(run_dir: str | os.PathLike) -> tuple[ConditionalVAE, VaeConfig]:
    """The trained model of a finished cVAE run, and its config.

    >>> vae, config = load_vae("/work/runs/20250101T120000Z__vae_quick")  # doctest: +SKIP
    """
    from skin_tf.runs import read_json

    run_dir = Path(run_dir)
    config = vae_config_from_dict(read_json(run_dir / "config.json"), source=str(run_dir))
    weights = run_dir / WEIGHTS_FILE
    if not weights.is_file():
        raise FileNotFoundError(
            f"{run_dir} has no {WEIGHTS_FILE}: the run has not finished. Fix: finish it with "
            f"`skin-tf train-vae --resume {run_dir}`, or pass a finished cVAE run"
        )
    vae = build_vae(config)
    vae.optimizer.build(vae.trainable_variables)  # the file holds the optimizer state too
    vae.load_weights(weights)
    return vae, config


# ------------------------------------------------------------------------------------- training


def train_vae(
    config: VaeConfig | None = None,
    data_root: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = Path("runs"),
    run_name: str | None = None,
    resume: str | os.PathLike | None = None,
) -> Path:
    """Train `config` into a new run directory (or finish the run in `resume`); return its path.

    data_root defaults to $SKIN_TF_DATA or ./data/ham10000 (a resume uses the run's own).
    run_name defaults to the config name, plus "-smoke" for the smoke profile.

    >>> config = load_vae_config("vae", profile="smoke")  # doctest: +SKIP
    >>> run_dir = train_vae(config, runs_dir="runs")  # doctest: +SKIP
    """
    if resume is not None:
        run_dir, config, data_root = _prepare_resume(Path(resume), config, data_root)
    else:
        if config is None:
            raise ValueError("train_vae() needs a config (load_vae_config(...)) or resume=RUN_DIR")
        run_dir = _prepare_new_run(config, data_root, Path(runs_dir), run_name)
    _fit(run_dir, config, Path(data_root) if data_root else data_root_of(run_dir))
    return run_dir


def data_root_of(run_dir: str | os.PathLike) -> Path:
    """The data folder a run was made with (meta.json `data.root`)."""
    from skin_tf.runs import read_json

    return Path(read_json(Path(run_dir) / "meta.json")["data"]["root"])


def _prepare_new_run(
    config: VaeConfig, data_root: str | os.PathLike | None, runs_dir: Path, run_name: str | None
) -> Path:
    from skin_tf.data.ham10000 import read_metadata, resolve_data_root
    from skin_tf.data.splits import lesion_subset, split_by_lesion, write_splits
    from skin_tf.runs import collect_meta, create_run_dir, write_json

    root = resolve_data_root(data_root)
    frame = read_metadata(root)
    if config.subset_per_class is not None:
        frame = lesion_subset(frame, config.subset_per_class, seed=config.seed)
    frame = split_by_lesion(frame, fractions=config.fractions, seed=config.seed)
    for split in ("train", "val"):
        if not (frame["split"] == split).any():
            raise ValueError(f"the {split} split is empty: use more data or other fractions")
    default_name = config.name if config.profile == "full" else f"{config.name}-{config.profile}"
    run_dir = create_run_dir(runs_dir, run_name or default_name)
    write_json(run_dir / "config.json", config.to_dict())
    write_splits(frame, run_dir / "splits.csv")
    name = run_dir.name.split("__", 1)[-1]
    write_json(run_dir / "meta.json", collect_meta(config, root, frame, run_name=name))
    return run_dir


def _prepare_resume(
    run_dir: Path, config: VaeConfig | None, data_root: str | os.PathLike | None
) -> tuple[Path, VaeConfig, str | os.PathLike | None]:
    from skin_tf.runs import resumable_config

    return run_dir, resumable_config(run_dir, WEIGHTS_FILE, vae_config_from_dict, config), data_root


def vae_datasets(
    config: VaeConfig, frames: dict[str, pd.DataFrame]
) -> tuple[tf.data.Dataset, tf.data.Dataset]:
    """(train, val) datasets of the shared pipeline: flips/90° turns only, no colour jitter."""
    from skin_tf.data.augment import AugmentConfig
    from skin_tf.data.pipeline import make_dataset

    augment = (
        AugmentConfig(brightness=0.0, contrast=0.0, saturation=0.0, hue=0.0, crop_scale=None)
        if config.augment
        else None
    )
    train = make_dataset(
        frames["train"], config.image_size, training=True, batch_size=config.batch_size,
        augment=augment, cache=config.cache, seed=config.seed,
    )  # fmt: skip
    val = make_dataset(
        frames["val"], config.image_size, training=False, batch_size=config.batch_size,
        cache=config.cache,
    )  # fmt: skip
    return train, val


def _fit(run_dir: Path, config: VaeConfig, data_root: Path) -> None:
    frames = split_frames(Path(run_dir) / "splits.csv", data_root)
    train, val = vae_datasets(config, frames)
    vae = build_vae(config, kl_warmup_steps=config.kl_warmup_epochs * len(train))
    history_path = run_dir / "history.csv"
    callbacks = [
        # CSVLogger before BackupAndRestore: a crash between the two repeats an epoch's row
        # (dropped below) instead of losing it.
        keras.callbacks.CSVLogger(str(history_path), append=True),
        keras.callbacks.BackupAndRestore(str(run_dir / BACKUP_DIR)),
        *_extra_callbacks(),
    ]
    vae.fit(
        train,
        validation_data=val,
        epochs=config.epochs,
        callbacks=callbacks,
        shuffle=False,  # the pipeline shuffles (seeded); Keras cannot shuffle a tf.data.Dataset
        verbose=2,
    )
    vae.save_weights(run_dir / WEIGHTS_FILE)
    history = pd.read_csv(history_path).drop_duplicates("epoch", keep="last")
    history.to_csv(history_path, index=False)
    loss_curves_figure(run_dir)


def _extra_callbacks() -> list[keras.callbacks.Callback]:
    """Hook for tests (e.g. to interrupt a run); training itself adds none."""
    return []


def loss_curves_figure(run_dir: str | os.PathLike) -> Path:
    """Plot history.csv (loss, reconstruction, KL; train and val) to run_dir/loss_curves.png."""
    import matplotlib.pyplot as plt
    from matplotlib.ticker import MaxNLocator

    from skin_tf.evaluation.plots import add_caption, save_figure
    from skin_tf.runs import run_caption

    run_dir = Path(run_dir)
    history = pd.read_csv(run_dir / "history.csv")
    epochs = history["epoch"] + 1
    fig, axes = plt.subplots(1, 3, figsize=(11, 3.4))
    for ax, key in zip(axes, ("loss", "reconstruction", "kl"), strict=True):
        ax.plot(epochs, history[key], "o-", label="train")
        ax.plot(epochs, history[f"val_{key}"], "s--", label="val")
        ax.set_xlabel("epoch")
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
        ax.set_title({"loss": "loss (train: warm-up β)", "kl": "KL (nats)"}.get(key, key))
        ax.grid(alpha=0.3)
    axes[0].legend()
    add_caption(fig, run_caption(run_dir, "skin_tf.cvae.model.loss_curves_figure (history.csv)"))
    return save_figure(fig, run_dir / LOSS_FIGURE)
