"""Loading an exported model for clients (`skin-tf predict`, the Streamlit page): one engine for
probabilities, the SavedModel's `explain` endpoint for Grad-CAM.

    >>> served = load_served("saved_models/b0")  # doctest: +SKIP
    >>> served.engine, served.engine_note  # doctest: +SKIP
    ('tflite-int8', 'the default of this export: ...')
    >>> served.predict(image_uint8).shape, served.explain(image_uint8)[1].shape  # doctest: +SKIP
    ((1, 7), (1, 450, 600))
    >>> served.assess([image_uint8]).in_distribution  # doctest: +SKIP
    array([ True])

The engine is the export's default (`skin_tf.serving.engines`: the fastest one that passed its
checks) unless one is asked for. An export written before the LiteRT models existed has only the
SavedModel: it loads with engine "savedmodel" and a note saying how to add them. Asking for an
engine an export lacks, or a missing or damaged .tflite file, raises an error naming the fix.
The SavedModel itself is loaded on first use, so a LiteRT engine starts without it.

Every engine gives the out-of-distribution guard's `ood_score` and `in_distribution` beside the
probabilities (`ServedModel.assess`): the SavedModel computes them in its graph, the LiteRT
engines from the features their models output, with the guard's constants (`ood_guard.npz`) and
the engine's own threshold from metadata.json. An export without a guard (made before it existed,
or with guard=False) still loads: its ood fields are None and `guard_note` says how to add one.

An export of a run trained with patient fields (metadata.json `patient_fields`) takes them per
image, each optional: `served.assess(images, fields=[{"age": 55, "sex": "male"}, None])`
(`skin_tf.serving.patient`: None or a missing field is "not given"). An image-only export
refuses fields rather than ignore them.

What a client may show for an image is decided once, by `skin_tf.serving.verdict.verdict`.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from skin_tf.runs import read_json
from skin_tf.serving.engines import ENGINES
from skin_tf.serving.guard import (
    GUARD_FILE,
    OodGuard,
    checked_scores,
    load_guard,
    refused_by_colour,
)
from skin_tf.serving.litert import FLOAT_FILE, INT8_FILE, LiteRTError
from skin_tf.serving.patient import Given, any_given, encode_given

METADATA_FILE = "metadata.json"
FORMAT = "skin_tf.export/2"  # serve returns {probs, ood_score, in_distribution}
FORMAT_V1 = "skin_tf.export/1"  # serve returns the probabilities (an export without the guard)
READABLE_FORMATS = (FORMAT_V1, FORMAT)
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
        self._guard: OodGuard | None = None
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

    def guard(self) -> OodGuard:
        with self._lock:
            if self._guard is None:
                self._guard = load_guard(self.path / GUARD_FILE)
            return self._guard


@dataclass(frozen=True)
class Assessment:
    """What an engine says about N images: probabilities and, when the export has a guard, each
    image's ood_score (higher: less like the training images) and in_distribution (its score is
    at most the engine's threshold and, for a guard with a colour check, the image passes
    its colour floor: `OodGuard.in_distribution`); both None without a
    guard.

    Example:
        >>> Assessment(np.eye(7)[:2]).in_distribution is None
        True
    """

    probs: np.ndarray
    ood_score: np.ndarray | None = None
    in_distribution: np.ndarray | None = None

    def checked_scores(self, threshold: float) -> np.ndarray:
        """ood_score with +inf where the image is out of distribution although its score is
        within `threshold` (the colour check refused it): a threshold on these keeps exactly
        the images in distribution (`skin_tf.serving.guard.checked_scores`).

        Example:
            >>> Assessment(np.eye(7)[:2], np.array([1.0, 1.0]), np.array([True, False])
            ...            ).checked_scores(2.0)
            array([ 1., inf])
        """
        if self.ood_score is None or self.in_distribution is None:
            raise ValueError("an assessment without the guard has no scores")
        colour = refused_by_colour(self.in_distribution, self.ood_score, threshold)
        return checked_scores(self.ood_score, ~colour)

    @staticmethod
    def concatenate(parts: list[Assessment]) -> Assessment:
        guarded = all(p.ood_score is not None for p in parts)
        return Assessment(
            np.concatenate([p.probs for p in parts]),
            np.concatenate([p.ood_score for p in parts]) if guarded else None,
            np.concatenate([p.in_distribution for p in parts]) if guarded else None,
        )


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
        """(height, width) of the model's input."""
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
    def fields(self) -> tuple[str, ...]:
        """The patient fields the model takes beside the image, in order; () for images alone."""
        return tuple((self.metadata.get("patient_fields") or {}).get("fields") or ())

    def encoded_fields(self, fields: Sequence[Given] | None, n: int) -> np.ndarray | None:
        """The (n, width) vectors the engines take for `fields` (one per image, None: nothing
        given; fields=None: nothing given for any image), None for an image-only model, which
        refuses any given field."""
        if fields is not None and len(fields) != n:
            raise ValueError(f"{len(fields)} sets of patient fields for {n} images: give one "
                             "per image (None: not given)")  # fmt: skip
        if not self.fields:
            if any_given(fields):
                raise ValueError(
                    f"{self.path} takes images alone (its run was trained without patient "
                    "fields), so age, sex and site cannot be used: leave them out, or export a "
                    "run trained with `metadata` (e.g. the baseline_meta config)"
                )
            return None
        return encode_given(self.fields, fields if fields is not None else [None] * n)

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

    @property
    def guarded(self) -> bool:
        """Whether this export has the out-of-distribution guard."""
        return bool((self.metadata.get("ood_guard") or {}).get("method"))

    @property
    def ood_threshold(self) -> float | None:
        """This engine's guard threshold (in_distribution needs ood_score <= it), or None."""
        if not self.guarded:
            return None
        return self.metadata["ood_guard"]["thresholds"][self.engine]["threshold"]

    @property
    def guard_note(self) -> str | None:
        """None for an export with the guard; otherwise why it has none and how to add it."""
        if self.guarded:
            return None
        block = self.metadata.get("ood_guard") or {}
        why = (
            f"it was exported without one ({block['reason']})"
            if block.get("reason")
            else "it was exported before skin-tf added one"
        )
        return (
            f"this export has no out-of-distribution guard: {why}, so images unlike the training "
            "images get an answer too; re-run `skin-tf export RUN_DIR --out FOLDER --overwrite` "
            "to add it"
        )

    def predict(self, images: np.ndarray, fields: Sequence[Given] | None = None) -> np.ndarray:
        """(N, 7) probabilities of an image (H, W, 3) or a batch (N, H, W, 3), uint8 or float;
        `fields`: one set of patient fields per image (see `assess`)."""
        batch = _as_batch(images)
        if self.engine == "savedmodel":
            return self._serve(batch, self.encoded_fields(fields, len(batch))).probs
        return self.predict_many(list(batch), fields)

    def predict_many(
        self, images: list[np.ndarray], fields: Sequence[Given] | None = None
    ) -> np.ndarray:
        """(N, 7) probabilities of N images (H, W, 3), each of any size (see `assess`)."""
        return self.assess(images, fields).probs

    def assess(self, images: list[np.ndarray], fields: Sequence[Given] | None = None) -> Assessment:
        """Probabilities, ood_score and in_distribution of N images (H, W, 3), each of any size.

        `fields`: for a model with patient fields, one dict per image (e.g. {"age": 55, "sex":
        "male", "localization": "back"}; None or a missing field: not given); None: nothing
        given for any image. The guard reads the image alone, so fields never change
        in_distribution.

        SavedModel: one `serve` call per image, as `predict` always did; the guard runs in its
        graph. LiteRT: each image is resized like `serve` would
        (`skin_tf.serving.litert.to_model_size`), they are scored in batches of BATCH_SIZE, and
        the guard scores the features the model outputs beside the probabilities.

        Example:
            >>> out = load_served("saved_models/demo").assess([photo])  # doctest: +SKIP
            >>> out.ood_score, out.in_distribution  # doctest: +SKIP
            (array([41.7]), array([False]))
        """
        images = list(images)
        vectors = self.encoded_fields(fields, len(images))
        if not images:
            empty = np.zeros(0, np.float32) if self.guarded else None
            return Assessment(
                np.zeros((0, len(self.classes)), np.float32),
                empty,
                None if empty is None else empty.astype(bool),
            )
        if self.engine == "savedmodel":
            return Assessment.concatenate([
                self._serve(_as_batch(image), None if vectors is None else vectors[k : k + 1])
                for k, image in enumerate(images)
            ])  # fmt: skip
        from skin_tf.serving.litert import to_model_size

        runner = self._loaded.runner(self.engine)
        batch = np.stack([to_model_size(image, self.image_size, self.resize) for image in images])
        rows = [slice(i, i + BATCH_SIZE) for i in range(0, len(batch), BATCH_SIZE)]
        outputs = [runner.predict_with_features(batch[r], None if vectors is None else vectors[r])
                   for r in rows]  # fmt: skip
        probs = np.concatenate([p for p, _ in outputs])
        if not self.guarded:
            return Assessment(probs)
        if not runner.has_features:
            raise LiteRTError(
                f"{runner.path} has no features output although metadata.json describes a guard: "
                "re-run `skin-tf export RUN_DIR --out FOLDER --overwrite`"
            )
        guard = self._loaded.guard()
        scores = guard.score(np.concatenate([f for _, f in outputs]), probs)
        return Assessment(probs, scores, guard.in_distribution(scores, self.ood_threshold, batch))

    def _serve(self, batch: np.ndarray, vectors: np.ndarray | None) -> Assessment:
        import tensorflow as tf

        inputs = [tf.convert_to_tensor(batch)] + ([] if vectors is None else [vectors])
        return _assessment(self._loaded.saved_model().serve(*inputs))

    def explain(
        self, images: np.ndarray, fields: Sequence[Given] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N, 7), heatmaps (N, H, W) in 0..1 for each image's top class), both from the
        SavedModel's `explain` endpoint whatever the engine; with patient fields, the map of
        the image with the fields held as given."""
        assessed, heatmaps = self.explain_assessed(images, fields)
        return assessed.probs, heatmaps

    def explain_assessed(
        self, images: np.ndarray, fields: Sequence[Given] | None = None
    ) -> tuple[Assessment, np.ndarray]:
        """`explain` with the guard: (the SavedModel's Assessment, heatmaps (N, H, W))."""
        import tensorflow as tf

        batch = _as_batch(images)
        vectors = self.encoded_fields(fields, len(batch))
        inputs = [tf.convert_to_tensor(batch)] + ([] if vectors is None else [vectors])
        out = self._loaded.saved_model().explain(*inputs)
        return _assessment(out), out["heatmap"].numpy()


def _assessment(out: Any) -> Assessment:
    """An Assessment of what `serve` or `explain` returned: a dict with the guard (probs,
    ood_score, in_distribution), the probabilities alone from `serve` without it."""
    if not isinstance(out, dict):
        return Assessment(out.numpy())
    if "ood_score" not in out:
        return Assessment(out["probs"].numpy())
    return Assessment(
        out["probs"].numpy(), out["ood_score"].numpy(), out["in_distribution"].numpy()
    )


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
    if metadata.get("format") not in READABLE_FORMATS:
        raise ValueError(
            f"{path / METADATA_FILE} is not a {' or '.join(READABLE_FORMATS)} metadata file: "
            "re-export"
        )
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
