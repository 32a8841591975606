"""Temperature scaling, ECE and NLL on generators with known answers; calibrate_run outputs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest
from scipy.special import softmax

from skin_tf.evaluation.calibration import (
    apply_temperature,
    calibrate_run,
    expected_calibration_error,
    fit_temperature,
    negative_log_likelihood,
    read_temperature,
    reliability_table,
)
from tests.evaluation.test_metrics import write_run_dir

N_CLASSES = 7


def sample_labels(probs: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """One label per row drawn from that row's distribution (inverse-CDF sampling)."""
    cumulative = probs.cumsum(axis=1)
    draws = rng.random((len(probs), 1)) * cumulative[:, -1:]
    return (draws > cumulative).sum(axis=1)


def logits_with_temperature(n: int, t_true: float, seed: int, scale: float = 3.0):
    """Logits z and labels drawn from softmax(z / t_true): T = t_true calibrates them exactly."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=scale, size=(n, N_CLASSES))
    return logits, sample_labels(softmax(logits / t_true, axis=1), rng)


def test_ece_of_a_calibrated_generator_is_near_zero():
    rng = np.random.default_rng(0)
    probs = rng.dirichlet(np.full(N_CLASSES, 0.3), size=50_000)
    labels = sample_labels(probs, rng)
    assert expected_calibration_error(probs, labels) < 0.02


def test_ece_of_an_overconfident_model_is_the_gap():
    probs = np.tile([0.95, 0.05, 0, 0, 0, 0, 0], (10, 1))
    labels = np.array([0] * 6 + [1] * 4)  # 60 % right at 95 % confidence
    assert expected_calibration_error(probs, labels) == pytest.approx(0.35)
    table = reliability_table(probs, labels)
    assert table["count"].sum() == 10 and table["count"].iloc[-1] == 10


def test_reliability_bins_are_right_closed():
    probs = np.array([[1.0, 0, 0, 0, 0, 0, 0], [0.2, 0.2, 0.2, 0.2, 0.2, 0, 0]])
    table = reliability_table(probs, np.array([0, 0]), n_bins=5)
    # 1.0 goes to the last bin (0.8, 1.0], 0.2 to the first (0, 0.2].
    assert table["count"].tolist() == [1, 0, 0, 0, 1]


@pytest.mark.parametrize("t_true", [0.6, 2.0])
def test_fit_recovers_a_known_temperature(t_true):
    logits, labels = logits_with_temperature(20_000, t_true, seed=1)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # an interior optimum: no warning about the range
        assert fit_temperature(logits, labels) == pytest.approx(t_true, rel=0.05)


def test_a_fit_that_ends_on_the_bound_warns():
    """Labels unrelated to the logits: the NLL falls all the way to uniform, past T = 20."""
    rng = np.random.default_rng(4)
    logits = rng.normal(scale=3.0, size=(2_000, N_CLASSES))
    labels = rng.integers(0, N_CLASSES, size=2_000)
    with pytest.warns(UserWarning, match="end of the search range"):
        assert fit_temperature(logits, labels) == pytest.approx(20.0, rel=1e-3)


def test_log_probabilities_work_as_logits():
    logits, labels = logits_with_temperature(5_000, 1.7, seed=2)
    probs = softmax(logits, axis=1)
    assert np.allclose(apply_temperature(probs, 1.7), softmax(logits / 1.7, axis=1), atol=1e-9)
    from_probs = fit_temperature(np.log(probs), labels)
    assert from_probs == pytest.approx(fit_temperature(logits, labels), rel=1e-4)


def test_fitting_lowers_the_nll_of_an_overconfident_model():
    logits, labels = logits_with_temperature(3_000, 2.5, seed=3)
    probs = softmax(logits, axis=1)  # T = 1: overconfident
    temperature = fit_temperature(np.log(probs), labels)
    scaled = apply_temperature(probs, temperature)
    assert temperature > 1.5
    assert negative_log_likelihood(scaled, labels) < negative_log_likelihood(probs, labels) - 0.05
    assert expected_calibration_error(scaled, labels) < expected_calibration_error(probs, labels)


def test_bad_inputs_are_refused():
    with pytest.raises(ValueError, match="positive"):
        apply_temperature(np.full((1, 7), 1 / 7), 0.0)
    with pytest.raises(ValueError, match="inf/NaN"):
        fit_temperature(np.array([[0.0, -np.inf]]), np.array([0]))


def test_calibrate_run_writes_temperature_and_figure(tmp_path):
    splits = {}
    for split, seed in (("val", 4), ("test", 5)):
        logits, labels = logits_with_temperature(600, 2.0, seed=seed)
        splits[split] = (labels, softmax(logits, axis=1), np.arange(600) // 2)
    run = write_run_dir(tmp_path / "run", splits, run_name="calib-unit")
    results = tmp_path / "results"
    summary = calibrate_run(run, results_dir=results)

    stored = json.loads((run / "temperature.json").read_text())
    assert stored["fitted_on"] == "val"
    assert stored["temperature"] == pytest.approx(summary["temperature"])
    assert 1.5 < stored["temperature"] < 2.7
    for split in ("val", "test"):
        assert set(stored[split]) >= {"nll_before", "nll_after", "ece_before", "ece_after"}
        assert stored[split]["nll_after"] < stored[split]["nll_before"]
    assert (results / "figures" / "reliability_calib-unit.png").stat().st_size > 10_000
    assert read_temperature(run) == pytest.approx(stored["temperature"])
    assert read_temperature(tmp_path) is None
