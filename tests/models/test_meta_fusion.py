"""Tests of skin_tf.models.meta_fusion: classifiers that take the patient fields too."""

from __future__ import annotations

import keras
import numpy as np
import pytest

from skin_tf.models.classifier import build_classifier, set_backbone_trainable
from skin_tf.models.meta_fusion import FUSIONS, metadata_shape

WIDTH = 20  # meta_width of age, sex and localization


def _inputs(n: int = 3, size=(32, 48)) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(0)
    fields = np.zeros((n, WIDTH), "float32")
    fields[np.arange(n), rng.integers(2, WIDTH, n)] = 1.0
    return {"image": rng.uniform(0, 255, (n, *size, 3)).astype("float32"), "metadata": fields}


@pytest.mark.parametrize("fusion", FUSIONS)
def test_each_fusion_takes_image_and_fields_and_the_fields_change_the_answer(fusion):
    keras.utils.set_random_seed(0)
    model = build_classifier(
        "efficientnet_lite0", (32, 48), None, metadata_width=WIDTH, fusion=fusion
    )
    assert metadata_shape(model) == (WIDTH, fusion)
    assert sorted(t.name for t in model.inputs) == ["image", "metadata"]
    inputs = _inputs()
    probs = model.predict(inputs, verbose=0)
    assert probs.shape == (3, 7) and np.allclose(probs.sum(axis=1), 1, atol=1e-5)
    other = {**inputs, "metadata": np.roll(inputs["metadata"], 1, axis=0)}
    assert not np.allclose(model.predict(other, verbose=0), probs, atol=1e-6)


@pytest.mark.parametrize("fusion", FUSIONS)
def test_the_fusion_layers_are_head_and_train_with_a_frozen_backbone(fusion):
    model = build_classifier("efficientnet_lite0", 32, None, metadata_width=WIDTH, fusion=fusion)
    set_backbone_trainable(model, False)
    trainable = {w.path.split("/")[0] for w in model.trainable_weights}
    fusion_layers = {x.name for x in model.layers if x.name.startswith("meta_") and x.weights}
    assert trainable == fusion_layers | {"predictions"}


def test_an_image_only_model_has_no_fields_and_an_unknown_fusion_is_refused():
    assert metadata_shape(build_classifier("efficientnet_lite0", 32, None)) == (0, None)
    with pytest.raises(ValueError, match="fusion='gate' is not one of 'concat', 'metablock'"):
        build_classifier("efficientnet_lite0", 32, None, metadata_width=WIDTH, fusion="gate")


def test_a_saved_model_with_fields_loads_back_to_the_same_answers(tmp_path):
    model = build_classifier(
        "efficientnet_lite0", 32, None, metadata_width=WIDTH, fusion="metablock"
    )
    model.save(tmp_path / "m.keras")
    loaded = keras.saving.load_model(tmp_path / "m.keras", compile=False)
    inputs = _inputs(size=(32, 32))
    expected = model.predict(inputs, verbose=0)
    np.testing.assert_allclose(loaded.predict(inputs, verbose=0), expected, atol=1e-6)
    assert metadata_shape(loaded) == (WIDTH, "metablock")
