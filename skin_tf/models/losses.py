"""Losses, optimiser and precision policy for training the classifiers.

Labels are sparse int class indices; models output softmax probabilities. Class imbalance is
handled by per-class weights (`pipeline.class_weights`) passed to `model.fit(class_weight=…)`:
Keras turns them into per-sample weights, which every loss here respects.
"""

from __future__ import annotations

import keras
from keras import ops

LOSS_KINDS: tuple[str, ...] = ("ce", "focal")
SCHEDULES: tuple[str, ...] = ("cosine", "constant")
PRECISION_MODES: tuple[str, ...] = ("auto", "float32", "mixed_float16", "mixed_bfloat16")
# Float16 tensor cores (and hence a mixed_float16 speed-up) start at compute capability 7.0.
MIN_MIXED_FLOAT16_COMPUTE_CAPABILITY: tuple[int, int] = (7, 0)


@keras.saving.register_keras_serializable(package="skin_tf")
class SparseCategoricalLoss(keras.losses.Loss):
    """Cross-entropy or focal loss on sparse int labels, with optional label smoothing.

    Keras' SparseCategoricalCrossentropy has no label smoothing, so labels are one-hot encoded
    here and passed to `categorical_crossentropy` / `categorical_focal_crossentropy`.
    Focal loss uses alpha=1 (no extra scaling; gamma=0 gives plain cross-entropy): class balance
    comes from class weights, not from alpha.
    Saved models that were compiled with this loss need `import skin_tf.models.losses` before
    `keras.models.load_model` (or `compile=False`).
    """

    def __init__(
        self,
        kind: str = "ce",
        label_smoothing: float = 0.0,
        focal_gamma: float = 2.0,
        name: str | None = None,
        reduction: str = "sum_over_batch_size",
        dtype: str | None = None,
    ) -> None:
        if kind not in LOSS_KINDS:
            raise ValueError(f"Unknown loss kind {kind!r}. Choose one of: {', '.join(LOSS_KINDS)}.")
        if not 0.0 <= label_smoothing < 1.0:
            raise ValueError(f"label_smoothing must be in [0, 1), got {label_smoothing}.")
        if focal_gamma < 0.0:
            raise ValueError(f"focal_gamma must be >= 0, got {focal_gamma}.")
        super().__init__(name=name or f"sparse_{kind}", reduction=reduction, dtype=dtype)
        self.kind = kind
        self.label_smoothing = float(label_smoothing)
        self.focal_gamma = float(focal_gamma)

    def call(self, y_true, y_pred):
        num_classes = ops.shape(y_pred)[-1]
        labels = ops.cast(ops.reshape(y_true, (-1,)), "int32")
        one_hot = ops.one_hot(labels, num_classes, dtype=y_pred.dtype)
        if self.kind == "focal":
            return keras.losses.categorical_focal_crossentropy(
                one_hot,
                y_pred,
                alpha=1.0,
                gamma=self.focal_gamma,
                label_smoothing=self.label_smoothing,
            )
        return keras.losses.categorical_crossentropy(
            one_hot, y_pred, label_smoothing=self.label_smoothing
        )

    def get_config(self) -> dict:
        config = super().get_config()
        config.update(
            kind=self.kind, label_smoothing=self.label_smoothing, focal_gamma=self.focal_gamma
        )
        return config


def build_loss(
    kind: str = "ce", label_smoothing: float = 0.0, focal_gamma: float = 2.0
) -> SparseCategoricalLoss:
    """A Keras loss for sparse int labels and softmax probabilities.

    kind "ce" is cross-entropy, "focal" is focal loss with exponent `focal_gamma`. Class weights
    are not part of the loss: pass `class_weight=pipeline.class_weights(...)` to `model.fit`.

    Example:
        >>> import numpy as np
        >>> loss = build_loss("focal", label_smoothing=0.1, focal_gamma=2.0)
        >>> float(loss(np.array([0]), np.array([[0.9, 0.1]]))) > 0
        True
    """
    return SparseCategoricalLoss(kind, label_smoothing=label_smoothing, focal_gamma=focal_gamma)


def build_optimizer(
    learning_rate: float,
    weight_decay: float,
    total_steps: int,
    warmup_steps: int = 0,
    schedule: str = "cosine",
    exclude_bias_and_norm: bool = True,
    ema_momentum: float | None = None,
) -> keras.optimizers.AdamW:
    """AdamW with linear warm-up from 0 to `learning_rate`, then cosine decay to 0 or constant.

    `total_steps` counts optimizer steps over the whole run (epochs x steps per epoch), warm-up
    included. Biases and normalisation scales/offsets are not weight-decayed by default (their
    variable names are "bias", "gamma", "beta"). ema_momentum: keep an exponential moving
    average of the trainable weights (Keras' `use_ema`; `optimizer.finalize_variable_values`
    writes it into the model, as `fit` does at its end).

    Example:
        >>> opt = build_optimizer(1e-3, 1e-4, total_steps=1000, warmup_steps=100)
        >>> round(float(opt.learning_rate), 6)  # step 0 of the warm-up
        0.0
    """
    if learning_rate <= 0:
        raise ValueError(f"learning_rate must be > 0, got {learning_rate}.")
    if weight_decay < 0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay}.")
    if schedule not in SCHEDULES:
        raise ValueError(f"Unknown schedule {schedule!r}. Choose one of: {', '.join(SCHEDULES)}.")
    if total_steps < 1:
        raise ValueError(f"total_steps must be >= 1, got {total_steps}.")
    if not 0 <= warmup_steps < total_steps:
        raise ValueError(
            f"warmup_steps must be in [0, total_steps={total_steps}), got {warmup_steps}."
        )
    if schedule == "constant" and warmup_steps == 0:
        rate: float | keras.optimizers.schedules.LearningRateSchedule = learning_rate
    else:
        # alpha is the final fraction of the peak rate: 1.0 keeps it constant after warm-up.
        rate = keras.optimizers.schedules.CosineDecay(
            initial_learning_rate=0.0 if warmup_steps else learning_rate,
            decay_steps=total_steps - warmup_steps,
            alpha=1.0 if schedule == "constant" else 0.0,
            warmup_target=learning_rate if warmup_steps else None,
            warmup_steps=warmup_steps,
        )
    ema = {"use_ema": True, "ema_momentum": ema_momentum} if ema_momentum is not None else {}
    optimizer = keras.optimizers.AdamW(learning_rate=rate, weight_decay=weight_decay, **ema)
    if exclude_bias_and_norm:
        optimizer.exclude_from_weight_decay(var_names=["bias", "gamma", "beta"])
    return optimizer


def configure_precision(mode: str = "auto") -> str:
    """Set the Keras global dtype policy and return its name (record it with the run).

    "auto" picks mixed_float16 only when every visible GPU has compute capability >= 7.0, else
    float32 (CPUs gain nothing from float16). Call before building the model. Under
    mixed_float16, `model.compile` wraps the optimizer in a LossScaleOptimizer by itself.

    Example:
        >>> configure_precision("float32")
        'float32'
    """
    if mode not in PRECISION_MODES:
        raise ValueError(
            f"Unknown precision mode {mode!r}. Choose one of: {', '.join(PRECISION_MODES)}."
        )
    if mode == "auto":
        capabilities = gpu_compute_capabilities()
        fast_float16 = bool(capabilities) and min(capabilities) >= (
            MIN_MIXED_FLOAT16_COMPUTE_CAPABILITY
        )
        mode = "mixed_float16" if fast_float16 else "float32"
    keras.config.set_dtype_policy(mode)
    return keras.config.dtype_policy().name


def gpu_compute_capabilities() -> list[tuple[int, int]]:
    """Compute capability (major, minor) of each visible GPU; empty without a GPU.

    >>> isinstance(gpu_compute_capabilities(), list)
    True
    """
    import tensorflow as tf

    capabilities = []
    for device in tf.config.list_physical_devices("GPU"):
        details = tf.config.experimental.get_device_details(device)
        capability = details.get("compute_capability")
        # Non-CUDA GPUs report none: treat them as not suited to mixed_float16.
        capabilities.append(tuple(capability) if capability else (0, 0))
    return capabilities
