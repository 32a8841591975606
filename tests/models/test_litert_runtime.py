"""A Keras model on LiteRT: the float32 flatbuffer answers as the Keras model does, for any batch
size, with patient fields too; the conversion says nothing and freezes the weights; bad arguments
are named and damaged bytes refused."""

from __future__ import annotations

import numpy as np
import pytest

from skin_tf.models.litert_runtime import LiteRTRunner, float_flatbuffer
from tests.fakes import small_classifier


@pytest.fixture(scope="module", params=[0, 5], ids=["images", "with_fields"])
def model_and_runner(request):
    model = small_classifier((32, 48), metadata_width=request.param, seed=2)
    return model, LiteRTRunner(float_flatbuffer(model)), request.param


def test_the_runner_answers_as_the_keras_model_for_any_batch_size(model_and_runner):
    from skin_tf.models.meta_fusion import META_INPUT

    model, runner, width = model_and_runner
    assert runner.image_shape == (32, 48) and runner.fields_width == width
    assert len(runner.outputs) == 1
    rng = np.random.default_rng(0)
    for n in (3, 1, 5, 3):  # the batch dimension is resized each time N changes
        images = rng.uniform(0, 255, (n, 32, 48, 3)).astype("float32")
        fields = rng.uniform(0, 1, (n, width)).astype("float32") if width else None
        inputs = images if not width else {"image": images, META_INPUT: fields}
        expected = np.asarray(model(inputs, training=False))
        (probs,) = runner.run(images, fields)
        assert probs.shape == (n, 7)
        np.testing.assert_allclose(probs, expected, atol=1e-5)


def test_a_model_with_many_outputs_gets_them_in_its_own_order():
    """The interpreter lists a converted model's outputs in its graph's order (two outputs came
    reversed); the runner gives them in the Keras model's order (output_0, output_1, …, output_11:
    a name sort would put output_10 before output_2)."""
    import keras

    image = keras.Input((8, 8, 3))
    outputs = [keras.layers.Conv2D(k + 1, 1, name=f"c{k}")(image) for k in range(12)]
    model = keras.Model(image, outputs)
    runner = LiteRTRunner(float_flatbuffer(model))
    assert len(runner.outputs) == 12
    interpreter_order = [int(d["index"]) for d in runner.interpreter.get_output_details()]
    assert interpreter_order != runner.outputs  # the case this guards against happens
    images = np.random.default_rng(1).uniform(0, 255, (2, 8, 8, 3)).astype("float32")
    got = runner.run(images)
    assert [a.shape[-1] for a in got] == list(range(1, 13))
    for mine, theirs in zip(got, model.predict_on_batch(images), strict=True):
        np.testing.assert_allclose(mine, theirs, rtol=1e-5, atol=1e-4)


def test_the_conversion_prints_nothing_and_freezes_the_weights(capfd):
    model = small_classifier((32, 32), seed=3)
    blob = float_flatbuffer(model)
    assert len(blob) > 4 * model.count_params()  # float32 weights in it, not left as variables
    out, err = capfd.readouterr()
    assert out == "" and err == ""


def test_bad_arguments_are_named_and_damaged_bytes_refused(tmp_path):
    with pytest.raises(ValueError, match="content.*path"):
        LiteRTRunner()
    with pytest.raises(ValueError, match="not both"):
        LiteRTRunner(b"x", path=tmp_path / "m.tflite")
    with pytest.raises((ValueError, RuntimeError)):
        LiteRTRunner(b"not a flatbuffer" * 10)
