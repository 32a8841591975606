"""Tests for skin_tf.models.losses: sparse CE/focal losses, class weights, AdamW schedule,
precision."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from skin_tf.models import losses
from skin_tf.models.losses import (
    SparseCategoricalLoss,
    build_loss,
    build_optimizer,
    configure_precision,
)

PROBABILITIES = np.array([[0.7, 0.2, 0.1], [0.1, 0.3, 0.6], [0.25, 0.5, 0.25]], "float32")
LABELS = np.array([0, 2, 0])


def _smoothed_one_hot(labels: np.ndarray, num_classes: int, smoothing: float) -> np.ndarray:
    return np.eye(num_classes)[labels] * (1 - smoothing) + smoothing / num_classes


def _hand_focal(labels, probabilities, gamma, smoothing=0.0) -> np.ndarray:
    """Per-sample focal loss: sum_c y_c (1 - p_c)^gamma (-log p_c)."""
    targets = _smoothed_one_hot(labels, probabilities.shape[1], smoothing)
    return np.sum(targets * (1 - probabilities) ** gamma * -np.log(probabilities), axis=1)


@pytest.fixture(autouse=True)
def _restore_float32_policy():
    yield
    keras.config.set_dtype_policy("float32")


def test_cross_entropy_without_smoothing_is_minus_log_p_true():
    loss = build_loss("ce")
    expected = -np.log(PROBABILITIES[np.arange(3), LABELS]).mean()
    assert float(loss(LABELS, PROBABILITIES)) == pytest.approx(expected, rel=1e-5)


def test_label_smoothing_matches_hand_formula():
    loss = build_loss("ce", label_smoothing=0.1)
    # y = one_hot * 0.9 + 0.1 / 3, loss = -sum_c y_c log p_c, averaged over the batch.
    targets = _smoothed_one_hot(LABELS, 3, 0.1)
    expected = np.sum(targets * -np.log(PROBABILITIES), axis=1).mean()
    assert float(loss(LABELS, PROBABILITIES)) == pytest.approx(expected, rel=1e-5)
    assert expected != pytest.approx(float(build_loss("ce")(LABELS, PROBABILITIES)))


def test_focal_loss_matches_hand_formula():
    loss = build_loss("focal", focal_gamma=2.0)
    # Sample 0: -(1 - 0.7)^2 log 0.7 = 0.09 * 0.35667 = 0.032100
    assert _hand_focal(LABELS[:1], PROBABILITIES[:1], 2.0)[0] == pytest.approx(0.0321, abs=1e-5)
    expected = _hand_focal(LABELS, PROBABILITIES, 2.0).mean()
    assert float(loss(LABELS, PROBABILITIES)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_with_label_smoothing_matches_hand_formula():
    loss = build_loss("focal", label_smoothing=0.2, focal_gamma=1.5)
    expected = _hand_focal(LABELS, PROBABILITIES, 1.5, smoothing=0.2).mean()
    assert float(loss(LABELS, PROBABILITIES)) == pytest.approx(expected, rel=1e-5)


def test_focal_loss_with_gamma_zero_is_cross_entropy():
    focal = build_loss("focal", focal_gamma=0.0)(LABELS, PROBABILITIES)
    cross_entropy = build_loss("ce")(LABELS, PROBABILITIES)
    assert float(focal) == pytest.approx(float(cross_entropy), rel=1e-6)


@pytest.mark.parametrize("kind", ["ce", "focal"])
def test_loss_respects_sample_weight(kind):
    loss = build_loss(kind, label_smoothing=0.1)
    per_sample = np.array(
        [float(loss(LABELS[i : i + 1], PROBABILITIES[i : i + 1])) for i in range(3)]
    )
    weights = np.array([2.0, 0.0, 0.5], "float32")
    weighted = float(loss(LABELS, PROBABILITIES, sample_weight=weights))
    # Keras' default reduction divides the weighted sum by the batch size.
    assert weighted == pytest.approx(np.sum(weights * per_sample) / 3, rel=1e-5)


def test_column_labels_are_accepted():
    loss = build_loss("ce")
    assert float(loss(LABELS[:, None], PROBABILITIES)) == pytest.approx(
        float(loss(LABELS, PROBABILITIES))
    )


def test_fit_applies_class_weight_through_the_loss():
    """The documented route: model.fit(class_weight=...) weights each sample's loss."""
    inputs = np.eye(3, dtype="float32")
    labels = np.array([0, 1, 2])
    model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(3, activation="softmax")])
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.0), loss=build_loss("ce"))
    probabilities = model.predict(inputs, verbose=0)
    class_weight = {0: 1.0, 1: 0.0, 2: 3.0}
    history = model.fit(inputs, labels, class_weight=class_weight, batch_size=3, verbose=0)
    per_sample = -np.log(probabilities[np.arange(3), labels])
    expected = np.sum(per_sample * np.array([1.0, 0.0, 3.0])) / 3
    assert history.history["loss"][0] == pytest.approx(expected, rel=1e-5)


def test_loss_config_round_trips_through_keras_serialization():
    loss = build_loss("focal", label_smoothing=0.05, focal_gamma=3.0)
    restored = keras.losses.deserialize(keras.losses.serialize(loss))
    assert isinstance(restored, SparseCategoricalLoss)
    assert (restored.kind, restored.label_smoothing, restored.focal_gamma) == ("focal", 0.05, 3.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"kind": "hinge"}, "ce, focal"),
        ({"label_smoothing": 1.0}, "label_smoothing"),
        ({"focal_gamma": -1.0}, "focal_gamma"),
    ],
)
def test_bad_loss_arguments_are_rejected(kwargs, message):
    with pytest.raises(ValueError, match=message):
        build_loss(**kwargs)


def _rate_at(optimizer: keras.optimizers.Optimizer, step: int) -> float:
    optimizer.iterations.assign(step)
    return float(optimizer.learning_rate)


def test_warmup_then_cosine_learning_rates():
    optimizer = build_optimizer(1e-3, weight_decay=1e-4, total_steps=110, warmup_steps=10)
    assert isinstance(optimizer, keras.optimizers.AdamW)
    assert optimizer.weight_decay == pytest.approx(1e-4)
    # Linear warm-up 0 → 1e-3 over 10 steps, then half a cosine over the remaining 100.
    expected = {0: 0.0, 5: 5e-4, 10: 1e-3, 35: 1e-3 * (1 + np.cos(np.pi / 4)) / 2, 60: 5e-4}
    expected |= {110: 0.0, 200: 0.0}
    for step, rate in expected.items():
        assert _rate_at(optimizer, step) == pytest.approx(rate, abs=1e-9), step


def test_cosine_without_warmup_starts_at_the_peak():
    optimizer = build_optimizer(2e-3, weight_decay=0.0, total_steps=100)
    assert _rate_at(optimizer, 0) == pytest.approx(2e-3)
    assert _rate_at(optimizer, 50) == pytest.approx(1e-3)
    assert _rate_at(optimizer, 100) == pytest.approx(0.0, abs=1e-12)


def test_constant_schedule_with_and_without_warmup():
    plain = build_optimizer(1e-3, weight_decay=1e-4, total_steps=100, schedule="constant")
    assert [_rate_at(plain, step) for step in (0, 50, 100)] == pytest.approx([1e-3] * 3)
    warmed = build_optimizer(
        1e-3, weight_decay=1e-4, total_steps=100, warmup_steps=10, schedule="constant"
    )
    rates = [_rate_at(warmed, step) for step in (0, 5, 10, 50, 100)]
    assert rates == pytest.approx([0.0, 5e-4, 1e-3, 1e-3, 1e-3])


def test_weight_decay_skips_biases():
    kernel = keras.Variable(np.ones((2, 2), "float32"), name="kernel")
    bias = keras.Variable(np.ones((2,), "float32"), name="bias")
    optimizer = build_optimizer(0.1, weight_decay=0.5, total_steps=10, schedule="constant")
    # Zero gradients: Adam's step is 0, so only the decoupled decay can change the variables.
    optimizer.apply_gradients(
        [(np.zeros((2, 2), "float32"), kernel), (np.zeros(2, "float32"), bias)]
    )
    np.testing.assert_allclose(kernel.numpy(), 1 - 0.1 * 0.5)
    np.testing.assert_array_equal(bias.numpy(), 1.0)


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"warmup_steps": 100}, "warmup_steps"),
        ({"total_steps": 0}, "total_steps"),
        ({"schedule": "step"}, "cosine, constant"),
        ({"learning_rate": 0.0}, "learning_rate"),
        ({"weight_decay": -1.0}, "weight_decay"),
    ],
)
def test_bad_optimizer_arguments_are_rejected(kwargs, message):
    arguments = {"learning_rate": 1e-3, "weight_decay": 1e-4, "total_steps": 100, **kwargs}
    with pytest.raises(ValueError, match=message):
        build_optimizer(**arguments)


@pytest.mark.parametrize("mode", ["float32", "mixed_float16", "mixed_bfloat16"])
def test_explicit_precision_modes_set_the_global_policy(mode):
    assert configure_precision(mode) == mode
    assert keras.config.dtype_policy().name == mode


@pytest.mark.parametrize(
    ("capabilities", "policy"),
    [
        ([], "float32"),
        ([(6, 1)], "float32"),
        ([(7, 0)], "mixed_float16"),
        ([(8, 6), (7, 5)], "mixed_float16"),
        ([(8, 6), (6, 1)], "float32"),
    ],
)
def test_auto_precision_uses_float16_only_on_recent_gpus(monkeypatch, capabilities, policy):
    monkeypatch.setattr(losses, "gpu_compute_capabilities", lambda: capabilities)
    assert configure_precision("auto") == policy


def test_auto_precision_on_this_machine_matches_its_gpus():
    capabilities = losses.gpu_compute_capabilities()
    assert all(isinstance(c, tuple) and len(c) == 2 for c in capabilities)
    recent = bool(capabilities) and min(capabilities) >= (7, 0)
    assert configure_precision("auto") == ("mixed_float16" if recent else "float32")


def test_unknown_precision_mode_is_rejected():
    with pytest.raises(ValueError, match="mixed_bfloat16"):
        configure_precision("float64")
