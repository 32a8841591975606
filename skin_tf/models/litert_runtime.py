"""A Keras model on LiteRT (TensorFlow Lite) and its XNNPACK CPU engine: the float32 conversion,
and the interpreter that runs batches of any size.

`skin_tf.serving.litert` builds the export's `.tflite` files on top of this; the explanation
checks (`skin_tf.explain.faithfulness.probability_function`) run most of their forward passes
through it, because on two CPU cores the same float32 network answers a batch faster here than
under TensorFlow (benchmarks/README.md, "The check's forward passes on LiteRT").

Example:
    >>> runner = LiteRTRunner(float_flatbuffer(model))  # doctest: +SKIP
    >>> runner.run(np.zeros((4, 128, 128, 3), np.float32))[0].shape  # doctest: +SKIP
    (4, 7)
"""

from __future__ import annotations

import contextlib
import io
import os
import re
import sys
import tempfile
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import keras


def float_flatbuffer(model: keras.Model) -> bytes:
    """The float32 LiteRT flatbuffer of a Keras model as it is (its own outputs, weights frozen
    in), with the batch dimension left open; quietly (`quietly`, and Keras's printout of the
    signature it traces on stdout).

    Example:
        >>> len(float_flatbuffer(model)) > 0  # doctest: +SKIP
        True
    """
    import tensorflow as tf

    converter = tf.lite.TFLiteConverter.from_keras_model(model)
    with contextlib.redirect_stdout(io.StringIO()):
        return quietly(converter.convert)


class LiteRTRunner:
    """One LiteRT flatbuffer (bytes or a file) under the interpreter, with one thread per
    available core: `run(images, fields)` → every output, in the model's output order.

    The image input is the one of rank 4; a model with patient fields has a second input of
    rank 2. The batch dimension is resized when N changes, and calls are serialised with a
    lock: an interpreter is not thread-safe.

    Example:
        >>> runner = LiteRTRunner(path="saved_models/demo/model.tflite")  # doctest: +SKIP
        >>> runner.image_shape, runner.fields_width  # doctest: +SKIP
        ((96, 96), 0)
    """

    def __init__(
        self,
        content: bytes | None = None,
        path: str | os.PathLike | None = None,
        num_threads: int | None = None,
    ) -> None:
        from ai_edge_litert.interpreter import Interpreter

        if (content is None) == (path is None):
            raise ValueError("give the flatbuffer's bytes (content) or its file (path), not both")
        threads = num_threads or len(os.sched_getaffinity(0))
        if content is not None:
            self.interpreter = Interpreter(model_content=content, num_threads=threads)
        else:
            self.interpreter = Interpreter(model_path=str(path), num_threads=threads)
        self.interpreter.allocate_tensors()
        inputs = sorted(self.interpreter.get_input_details(), key=lambda d: -len(d["shape"]))
        if len(inputs) not in (1, 2) or (len(inputs) == 2 and len(inputs[1]["shape"]) != 2):
            raise ValueError(
                f"inputs {[list(d['shape']) for d in inputs]}, not images [+ patient fields]"
            )
        self._image, self._fields = inputs[0], (inputs[1] if len(inputs) == 2 else None)
        shape = self._image["shape_signature"]
        if len(shape) != 4 or shape[3] != 3 or min(shape[1:3]) < 1:
            raise ValueError(f"takes {list(shape)}, not RGB image batches of one size")
        self.image_shape = (int(shape[1]), int(shape[2]))  # (height, width)
        self.fields_width = 0 if self._fields is None else int(self._fields["shape"][-1])
        self.outputs = _outputs_in_order(self.interpreter)
        self._batch = int(self._image["shape"][0])
        self._lock = threading.Lock()

    def run(self, images: np.ndarray, fields: np.ndarray | None = None) -> list[np.ndarray]:
        """Every output (N, …) for float32 images (N, H, W, 3) at the model's size and, for a
        model with patient fields, their encoded rows (N, fields_width); N ≥ 1. The caller
        checks shapes and says what to fix (`skin_tf.serving.litert.LiteRTModel` does)."""
        height, width = self.image_shape
        with self._lock:
            if len(images) != self._batch:
                self.interpreter.resize_tensor_input(
                    self._image["index"], [len(images), height, width, 3]
                )
                if self._fields is not None:
                    self.interpreter.resize_tensor_input(
                        self._fields["index"], [len(images), self.fields_width]
                    )
                self.interpreter.allocate_tensors()
                self._batch = len(images)
            self.interpreter.set_tensor(self._image["index"], np.asarray(images, np.float32))
            if self._fields is not None:
                self.interpreter.set_tensor(self._fields["index"], np.asarray(fields, np.float32))
            self.interpreter.invoke()
            return [self.interpreter.get_tensor(index).copy() for index in self.outputs]


def _outputs_in_order(interpreter) -> list[int]:
    """The output tensors' indices in the model's own order. A converted Keras model's signature
    names them output_0, output_1, …, while the interpreter lists them in its graph's order,
    which can differ (two outputs of a small test model: reversed); a flatbuffer with no
    signature (the export's, from a concrete function) keeps the interpreter's order."""
    listed = [int(d["index"]) for d in interpreter.get_output_details()]
    if len(interpreter.get_signature_list()) != 1:
        return listed
    named = interpreter.get_signature_runner().get_output_details()
    numbers = {name: re.fullmatch(r"output_(\d+)", name) for name in named}
    if len(named) != len(listed) or not all(numbers.values()):
        return listed
    return [int(named[n]["index"]) for n in sorted(named, key=lambda n: int(numbers[n][1]))]


# ---------------------------------------------------------------- the converter's chatter


def quietly(fn, *args, **kwargs):
    """Call `fn` without the converter's chatter (absl info lines, the tf.lite.Interpreter
    deprecation warning of the quantisation debugger, which we do not use to run models, and what
    the converter's C++ code prints on file descriptor 2, such as "fully_quantize: 0,
    inference_type: 6, …"). What went to fd 2 is printed when the call fails: it may say why."""
    import warnings

    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        with warnings.catch_warnings(), native_stderr_captured():
            warnings.simplefilter("ignore")
            return fn(*args, **kwargs)
    finally:
        absl_logging.set_verbosity(previous)


@contextlib.contextmanager
def native_stderr_captured() -> Iterator[None]:
    """File descriptor 2 (where C++ code writes, past Python's sys.stderr) into a temporary file
    for the block; on an exception its text goes to sys.stderr before the exception. fd 2 is the
    process's: native output of other threads in the meantime is held back the same way."""
    sys.stderr.flush()
    with tempfile.TemporaryFile() as captured:
        saved = os.dup(2)
        os.dup2(captured.fileno(), 2)
        try:
            yield
        except BaseException:
            os.dup2(saved, 2)
            captured.seek(0)
            sys.stderr.write(captured.read().decode(errors="replace"))
            raise
        finally:
            os.dup2(saved, 2)
            os.close(saved)
