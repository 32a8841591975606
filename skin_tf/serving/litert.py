"""LiteRT (TensorFlow Lite) flatbuffers of an exported classifier: conversion and the interpreter.

`skin-tf export` writes, beside the SavedModel,
- `model.tflite`: float32, the same network, head and temperature as the SavedModel's `serve`;
- `model_int8.tflite` (optional): the backbone quantised to int8 (weights and activations),
  calibrated on training images; the final dense layer and the temperature softmax stay float32,
  so the probabilities still sum to 1.

Both take float32 images already at the model's size, (N, S, S, 3) with pixels 0..255, and return
(N, 7) probabilities. `serve` resizes inside its graph; here `to_model_size` runs that very resize
(`skin_tf.serving.endpoints.resize_images`) before the call, so the two engines see the same pixels.
An export with the out-of-distribution guard gives both models a second output, the penultimate
features, which `skin_tf.serving.served` scores with the guard's constants. A model with patient
fields has a second input, the encoded fields (N, width) float32, in both models.

Which runtime: the converter is `tf.lite.TFLiteConverter`, still TensorFlow 2.21's supported (and
only) Keras → LiteRT path; the interpreter is `ai_edge_litert.interpreter.Interpreter` from the
`ai-edge-litert` package, because TF 2.21 deprecates `tf.lite.Interpreter` in its favour. The
interpreter uses the XNNPACK CPU delegate and one thread per available core.

Example:
    >>> runner = LiteRTModel("saved_models/b0/model.tflite")  # doctest: +SKIP
    >>> runner.predict(np.zeros((4, 224, 224, 3), np.float32)).shape  # doctest: +SKIP
    (4, 7)
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from skin_tf.models.litert_runtime import LiteRTRunner, quietly

if TYPE_CHECKING:
    import keras

FLOAT_FILE = "model.tflite"
INT8_FILE = "model_int8.tflite"
# The int8 model keeps these ops in float32: the head's matmul and the temperature softmax.
FLOAT_OPS_IN_INT8 = ("FULLY_CONNECTED", "SOFTMAX")
RUNTIME = (
    "converted with tf.lite.TFLiteConverter (TensorFlow's Keras → LiteRT path); run with "
    "ai_edge_litert.interpreter.Interpreter (XNNPACK CPU delegate)"
)


class LiteRTError(ValueError):
    """A .tflite file that is missing, damaged or not the model its metadata.json describes."""


# ---------------------------------------------------------------- conversion


def convert_float(
    model: keras.Model,
    temperature: float | None = None,
    features: bool = False,
    layer: str | None = None,
) -> bytes:
    """The float32 LiteRT flatbuffer of `probabilities_function(model, temperature, features,
    layer)`.

    features=True adds a second output (N, d): the mean-pooled output of `layer` (None: the
    penultimate features), which the out-of-distribution guard scores (`skin_tf.serving.guard`).

    Example:
        >>> Path("model.tflite").write_bytes(convert_float(model, 1.2))  # doctest: +SKIP
    """
    converter = _converter(model, temperature, features, layer)
    return quietly(converter.convert)


def convert_int8(
    model: keras.Model,
    calibration: np.ndarray,
    temperature: float | None = None,
    features: bool = False,
    layer: str | None = None,
    calibration_fields: np.ndarray | None = None,
) -> bytes:
    """The int8 LiteRT flatbuffer: weights and activations of the backbone in int8, calibrated on
    `calibration` (uint8 or float images (N, S, S, 3) at the model's size, e.g. training images);
    the head (FULLY_CONNECTED) and softmax stay float32, and so do input and output.
    features=True outputs the (int8, dequantised) guard features too, as `convert_float`.
    `calibration_fields`: the calibration images' encoded patient fields, for a model that
    takes them (the fields input stays float32).

    Selective quantisation goes through `tf.lite.experimental.QuantizationDebugger`, TensorFlow's
    documented way to keep named ops in float.

    Example:
        >>> blob = convert_int8(model, train_images[:200], temperature=1.2)  # doctest: +SKIP
    """
    import tensorflow as tf

    from skin_tf.serving.endpoints import fields_width

    images = np.asarray(calibration, np.float32)
    if images.ndim != 4 or len(images) == 0:
        raise ValueError(f"calibration images must be (N, S, S, 3) with N > 0, got {images.shape}")
    if (calibration_fields is None) != (fields_width(model) == 0):
        raise ValueError(
            "calibrate a model with patient fields with the images' fields (calibration_fields),"
            " and an image-only model without"
        )

    def representative() -> Iterable[list[np.ndarray]]:
        for i, image in enumerate(images):
            extra = [] if calibration_fields is None else [calibration_fields[i : i + 1]]
            yield [image[None], *(np.asarray(f, np.float32) for f in extra)]

    converter = _converter(model, temperature, features, layer)
    converter.optimizations = [tf.lite.Optimize.DEFAULT]
    converter.representative_dataset = representative
    options = tf.lite.experimental.QuantizationDebugOptions(denylisted_ops=list(FLOAT_OPS_IN_INT8))
    debugger = quietly(
        tf.lite.experimental.QuantizationDebugger,
        converter=converter,
        debug_dataset=representative,
        debug_options=options,
    )
    return quietly(debugger.get_nondebug_quantized_model)


def _converter(
    model: keras.Model, temperature: float | None, features: bool = False, layer: str | None = None
):
    import tensorflow as tf

    from skin_tf.serving.endpoints import probabilities_function

    probabilities = probabilities_function(model, temperature, features, layer)
    return tf.lite.TFLiteConverter.from_concrete_functions(
        [probabilities.get_concrete_function()], probabilities.features_model
    )


# ---------------------------------------------------------------- preprocessing


def to_model_size(
    image: np.ndarray, size: int | tuple[int, int], resize: str = "squash"
) -> np.ndarray:
    """An (H, W, 3) image as float32 pixels at the model's size (a side or (height, width)),
    resized exactly as `serve` does.

    An image already at the model's size (what `skin_tf.data.images.prepare_image` returns for
    files the pipeline decodes) is only cast; any other size goes through
    `skin_tf.serving.endpoints.resize_images`, the resize inside `serve`.

    Example:
        >>> to_model_size(np.zeros((64, 64, 3), np.uint8), 64).dtype
        dtype('float32')
    """
    from skin_tf.data.sizes import image_hw

    target = image_hw(size)
    array = np.asarray(image)
    if array.ndim != 3 or array.shape[-1] != 3:
        raise ValueError(f"expected an RGB image (H, W, 3), got shape {array.shape}")
    if array.shape[:2] == target:
        return array.astype(np.float32)
    from skin_tf.serving.endpoints import resize_images

    return resize_images(array[None], target, resize)[0].numpy()


# ---------------------------------------------------------------- the interpreter


class LiteRTModel:
    """One .tflite classifier under the LiteRT interpreter: (N, H, W, 3) images → (N, 7) probs,
    and, from a model exported with the out-of-distribution guard, the (N, d) penultimate
    features beside them (`predict_with_features`). A model with patient fields also takes
    their encoded vectors (N, `fields_width`).

    Calls are serialised with a lock (an interpreter is not thread-safe, and the Streamlit page
    shares one per process); the batch dimension is resized when N changes. A model written
    before the guard has one output, the probabilities: it still runs, with no features.

    Example:
        >>> runner = LiteRTModel("saved_models/b0/model_int8.tflite")  # doctest: +SKIP
        >>> runner.image_size, runner.has_features  # doctest: +SKIP
        ((224, 224), True)
    """

    def __init__(self, path: str | os.PathLike, num_threads: int | None = None):
        self.path = Path(path)
        if not self.path.is_file():
            raise LiteRTError(
                f"{self.path} not found: the LiteRT model is missing from this export; re-run "
                "`skin-tf export RUN_DIR --out FOLDER --overwrite`, or choose --engine savedmodel"
            )
        try:
            self._runner = LiteRTRunner(path=self.path, num_threads=num_threads)
        except (RuntimeError, ValueError) as err:
            raise LiteRTError(
                f"{self.path} is not a readable LiteRT model ({err}); re-run `skin-tf export "
                "RUN_DIR --out FOLDER --overwrite`, or choose --engine savedmodel"
            ) from None
        self._interpreter = self._runner.interpreter
        if len(self._runner.outputs) not in (1, 2):
            raise LiteRTError(
                f"{self.path} has {len(self._runner.outputs)} outputs, not probabilities [+ "
                "features]; re-run `skin-tf export RUN_DIR --out FOLDER --overwrite`"
            )
        self.fields_width = self._runner.fields_width
        self.image_size = self._runner.image_shape  # (height, width)

    @property
    def has_features(self) -> bool:
        """Whether the model outputs the penultimate features (exported with the guard)."""
        return len(self._runner.outputs) == 2

    def predict(self, images: np.ndarray, fields: np.ndarray | None = None) -> np.ndarray:
        """(N, 7) float32 probabilities of images (N, H, W, 3) or one image (H, W, 3)."""
        return self.predict_with_features(images, fields)[0]

    def predict_with_features(
        self, images: np.ndarray, fields: np.ndarray | None = None
    ) -> tuple[np.ndarray, np.ndarray | None]:
        """(probabilities (N, 7), features (N, d) or None for a model without them), float32.
        `fields`: the images' encoded patient fields (N, fields_width), for a model with them."""
        batch = np.asarray(images, np.float32)
        if batch.ndim == 3:
            batch = batch[None]
        height, width = self.image_size
        if batch.ndim != 4 or batch.shape[1:] != (height, width, 3):
            raise ValueError(
                f"{self.path.name} takes images of {height}x{width}x3, got {batch.shape}: resize "
                "them with skin_tf.serving.litert.to_model_size"
            )
        vectors = self._checked_fields(fields, len(batch))
        if len(batch) == 0:
            return self._empty(0), self._empty(1)
        outputs = self._runner.run(batch, vectors)
        return outputs[0], (outputs[1] if self.has_features else None)

    def _checked_fields(self, fields: np.ndarray | None, n: int) -> np.ndarray | None:
        if self.fields_width == 0:
            if fields is not None:
                raise ValueError(f"{self.path.name} takes no patient fields, only images")
            return None
        vectors = None if fields is None else np.atleast_2d(np.asarray(fields, np.float32))
        if vectors is None or vectors.shape != (n, self.fields_width):
            raise ValueError(
                f"{self.path.name} takes the images' encoded patient fields, ({n}, "
                f"{self.fields_width}), got {None if vectors is None else vectors.shape}: encode "
                "them with skin_tf.data.meta_fields.encode_fields (blank_vector: not given)"
            )
        return vectors

    def _empty(self, output: int) -> np.ndarray | None:
        """(0, width) of output 0 (probabilities) or 1 (features), None for a missing output:
        the export's function returns (probs, features) as a tuple, whose order LiteRT keeps."""
        if output >= len(self._runner.outputs):
            return None
        index = self._runner.outputs[output]
        details = next(d for d in self._interpreter.get_output_details() if d["index"] == index)
        return np.zeros((0, details["shape_signature"][-1]), np.float32)
