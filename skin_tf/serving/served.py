"""Loading an exported model for clients (`skin-tf predict`, the Streamlit page): one engine for
probabilities, the SavedModel's `explain` endpoint for Grad-CAM.

    >>> served = load_served("saved_models/b0")  # doctest: +SKIP
    >>> served.engine, served.engine_note  # doctest: +SKIP
    ('tflite-int8', 'the default of this export: ...')
    >>> served.predict(image_uint8).shape, served.explain(image_uint8)[1].shape  # doctest: +SKIP
    ((1, 7), (1, 450, 600))

The engine is the export's default (`skin_tf.serving.engines`: the fastest one that passed its
checks) unless one is asked for. An export written before the LiteRT models existed has only the
SavedModel: it loads with engine "savedmodel" and a note saying how to add them. Asking for an
engine an export lacks, or a missing or damaged .tflite file, raises an error naming the fix.
The SavedModel itself is loaded on first use, so a LiteRT engine starts without it.
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Any

import numpy as np

from skin_tf.runs import read_json
from skin_tf.serving.engines import ENGINES
from skin_tf.serving.litert import FLOAT_FILE, INT8_FILE

METADATA_FILE = "metadata.json"
FORMAT = "skin_tf.export/1"
DISCLAIMER = (
    "Research and teaching use only: not a medical device, not validated for clinical use, "
    "and not medical advice."
)
LITERT_FILES = {"tflite": FLOAT_FILE, "tflite-int8": INT8_FILE}
BATCH_SIZE = 32


class _Loaded:
    """What an export folder loads, once, shared by the ServedModels of its engines."""

    def __init__(self, path: Path):
        self.path = path
        self._saved_model: Any = None
        self._runners: dict[str, Any] = {}
        self._lock = threading.Lock()

    def saved_model(self) -> Any:
        with self._lock:
            if self._saved_model is None:
                self._saved_model = _load_quietly(self.path)
            return self._saved_model

    def runner(self, engine: str) -> Any:
        from skin_tf.serving.litert import LiteRTModel

        with self._lock:
            if engine not in self._runners:
                self._runners[engine] = LiteRTModel(self.path / LITERT_FILES[engine])
            return self._runners[engine]


class ServedModel:
    """An exported model plus its metadata.json, scoring with one engine.

    Example:
        >>> served = load_served("saved_models/b0", engine="tflite")  # doctest: +SKIP
        >>> served.predict(np.zeros((450, 600, 3), np.uint8)).shape  # doctest: +SKIP
        (1, 7)
        >>> served.using("savedmodel").engine  # doctest: +SKIP
        'savedmodel'
    """

    def __init__(
        self,
        path: Path,
        metadata: dict[str, Any],
        engine: str = "savedmodel",
        engine_note: str | None = None,
        loaded: _Loaded | None = None,
    ):
        self.path = Path(path)
        self.metadata = metadata
        self.engine = engine
        self.engine_note = engine_note
        self._loaded = loaded or _Loaded(self.path)

    @property
    def classes(self) -> list[str]:
        return list(self.metadata["classes"])

    @property
    def image_size(self) -> tuple[int, int]:
        return tuple(self.metadata["input_size"])

    @property
    def resize(self) -> str:
        """The training resize rule ("squash" or "crop"), for
        `skin_tf.data.images.prepare_image`."""
        return self.metadata["resize"]

    @property
    def temperature(self) -> float | None:
        return self.metadata.get("temperature")

    @property
    def available_engines(self) -> list[str]:
        """The engines this export can score with, fastest first."""
        return available_engines(self.metadata)

    @property
    def mel_point(self) -> dict[str, Any]:
        """The melanoma operating point of this engine: the run's (metadata.json's `mel_threshold`)
        for the SavedModel and the float LiteRT model, which give the same probabilities; the int8
        model's own, re-chosen on validation at export."""
        if self.engine == "tflite-int8":
            return self.metadata["engines"][self.engine].get("mel_threshold") or {}
        return self.metadata.get("mel_threshold") or {}

    @property
    def threshold(self) -> float | None:
        """The melanoma operating threshold on P(mel) of this engine, or None when there is none."""
        return self.mel_point.get("value")

    @property
    def disclaimer(self) -> str:
        return self.metadata.get("disclaimer", DISCLAIMER)

    def using(self, engine: str) -> ServedModel:
        """The same export scoring with `engine` (what is already loaded is shared)."""
        engine = check_engine(self.path, self.metadata, engine)
        if engine != "savedmodel":
            self._loaded.runner(engine)  # a missing or damaged file fails here, not mid-run
        return ServedModel(self.path, self.metadata, engine, None, self._loaded)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, 7) probabilities of an image (H, W, 3) or a batch (N, H, W, 3), uint8 or float."""
        batch = _as_batch(images)
        if self.engine == "savedmodel":
            import tensorflow as tf

            return self._loaded.saved_model().serve(tf.convert_to_tensor(batch)).numpy()
        return self.predict_many(list(batch))

    def predict_many(self, images: list[np.ndarray]) -> np.ndarray:
        """(N, 7) probabilities of N images (H, W, 3), each of any size.

        SavedModel: one `serve` call per image, as `predict` always did. LiteRT: each image is
        resized like `serve` would (`skin_tf.serving.litert.to_model_size`) and they are scored
        in batches of BATCH_SIZE.
        """
        if not images:
            return np.zeros((0, len(self.classes)), np.float32)
        if self.engine == "savedmodel":
            return np.concatenate([self.predict(image) for image in images])
        from skin_tf.serving.litert import to_model_size

        side = self.image_size[0]
        runner = self._loaded.runner(self.engine)
        batch = np.stack([to_model_size(image, side, self.resize) for image in images])
        return np.concatenate(
            [runner.predict(batch[i : i + BATCH_SIZE]) for i in range(0, len(batch), BATCH_SIZE)]
        )

    def explain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N, 7), heatmaps (N, H, W) in 0..1 for each image's top class), both from the
        SavedModel's `explain` endpoint whatever the engine."""
        import tensorflow as tf

        out = self._loaded.saved_model().explain(tf.convert_to_tensor(_as_batch(images)))
        return out["probs"].numpy(), out["heatmap"].numpy()


def _as_batch(images: np.ndarray) -> np.ndarray:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"expected an RGB image (H, W, 3) or a batch (N, H, W, 3), got shape {array.shape}; "
            "read files with skin_tf.data.images.read_rgb_image"
        )
    return array if array.dtype == np.uint8 else array.astype(np.float32)


# ---------------------------------------------------------------- engines of an export


def available_engines(metadata: dict[str, Any]) -> list[str]:
    """Engines written into an export, fastest first ("savedmodel" always).

    Example:
        >>> available_engines({"engines": {"tflite": {"file": "model.tflite"}}})
        ['tflite', 'savedmodel']
    """
    block = metadata.get("engines") or {}
    written = [e for e in LITERT_FILES if (block.get(e) or {}).get("file")]
    return [e for e in ("tflite-int8", "tflite") if e in written] + ["savedmodel"]


def check_engine(path: Path, metadata: dict[str, Any], engine: str) -> str:
    """`engine` when the export at `path` has it; a ValueError naming the fix otherwise."""
    if engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if engine in available_engines(metadata):
        return engine
    block = (metadata.get("engines") or {}).get(engine) or {}
    why = (
        f"it was not written ({block['reason']})"
        if block.get("reason")
        else "it was exported before skin-tf wrote LiteRT models"
        if "engines" not in metadata
        else "it has none"
    )
    raise ValueError(
        f"{path} has no {engine} model: {why}. Re-run `skin-tf export RUN_DIR --out {path} "
        f"--overwrite` to write it, or choose --engine "
        f"{' or '.join(available_engines(metadata))}"
    )


def default_engine(metadata: dict[str, Any]) -> tuple[str, str]:
    """(the engine to use when none is asked for, a sentence saying why).

    Example:
        >>> default_engine({})[0]
        'savedmodel'
    """
    block = metadata.get("engines")
    if not block:
        return "savedmodel", (
            "this export has only the SavedModel (it was written before skin-tf exported LiteRT "
            "models): re-run `skin-tf export RUN_DIR --out FOLDER --overwrite` for the faster "
            "tflite engines"
        )
    engine = block.get("default", "savedmodel")
    if engine == "tflite-int8":
        gate = block["tflite-int8"].get("gate", {})
        return engine, (
            "default of this export: the int8 model passed its validation check (balanced "
            f"accuracy {_fmt(gate.get('int8_balanced_accuracy'))} vs float "
            f"{_fmt(gate.get('float_balanced_accuracy'))}; its own melanoma threshold)"
        )
    if engine == "tflite":
        why = (block.get("tflite-int8") or {}).get("gate", {}).get("why") or (
            block.get("tflite-int8") or {}
        ).get("reason", "no int8 model")
        return engine, f"default of this export: LiteRT float32 (int8 not used: {why})"
    return engine, "default of this export: the LiteRT models did not pass their export checks"


def _fmt(value: Any) -> str:
    return f"{value:.3f}" if isinstance(value, int | float) else "n/a"


# ---------------------------------------------------------------- loading


def load_served(path: str | os.PathLike, engine: str | None = None) -> ServedModel:
    """Load an exported model folder (SavedModel + metadata.json [+ .tflite files]).

    engine: "savedmodel", "tflite" or "tflite-int8"; None takes the export's default.
    """
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{path} is not an exported model (no saved_model.pb): create one with "
            f"`skin-tf export RUN_DIR --out {path}`"
        )
    metadata = read_json(path / METADATA_FILE)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path / METADATA_FILE} is not a {FORMAT} metadata file: re-export")
    note = None
    if engine is None:
        engine, note = default_engine(metadata)
    served = ServedModel(path, metadata, "savedmodel", note).using(engine)
    served.engine_note = note
    if engine == "savedmodel":
        served._loaded.saved_model()  # the old behaviour: a broken SavedModel fails at load
    return served


def _load_quietly(path: Path) -> Any:
    """tf.saved_model.load without one absl warning per function about unsaved custom gradients
    (export drops them on purpose: the endpoints are for inference, never differentiated)."""
    import tensorflow as tf
    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return tf.saved_model.load(str(path))
    finally:
        absl_logging.set_verbosity(previous)


def load_served_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of an exported model, without loading the graph."""
    return read_json(Path(path) / METADATA_FILE)
