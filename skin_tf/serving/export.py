"""Export a trained run as a TensorFlow SavedModel with `serve` and `explain` endpoints.

    skin-tf export runs/20250101T120000Z__baseline --out saved_models/b0

writes `saved_models/b0/` (a SavedModel) and `saved_models/b0/metadata.json` (classes, input
size, resize rule, melanoma threshold with its validation sensitivity/specificity, temperature,
the run's test metrics and provenance).

Endpoints (both take a batch of RGB images, shape (N, H, W, 3), any H and W, dtype uint8 or
float32 with pixels in 0..255; each is traced once per dtype, and `tf.saved_model.load` picks
the trace that matches the input dtype):
- `serve(images)` → (N, 7) class probabilities, temperature-scaled when the run has a
  temperature (softmax(logits / T)). Images are resized inside with the training resize rule.
- `explain(images)` → {"probs": (N, 7), "heatmap": (N, H, W)}: Grad-CAM for the top class on
  the last conv layer, computed inside the graph with a GradientTape, mapped back onto the input
  pixels (H, W) and scaled to 0..1.

TF-Serving sees one signature per endpoint: the float32 trace (plus `serving_default` = serve).

Clients use `load_served(path)`, never the Keras training model:
    >>> served = load_served("saved_models/b0")  # doctest: +SKIP
    >>> probs, heatmaps = served.explain(image_uint8)  # doctest: +SKIP
"""

from __future__ import annotations

import datetime as dt
import json
import os
import shutil
import tempfile
from pathlib import Path
from typing import Any

import keras
import numpy as np
import tensorflow as tf

from skin_tf.data.ham10000 import CLASS_NAMES, CLASSES, MEL_INDEX
from skin_tf.data.pipeline import resize_rule
from skin_tf.explain.gradcam import heatmap_to_input, normalize_heatmaps
from skin_tf.runs import json_ready, read_json

METADATA_FILE = "metadata.json"
FORMAT = "skin_tf.export/1"
DISCLAIMER = (
    "Research and teaching use only: not a medical device, not validated for clinical use, "
    "and not medical advice."
)
INPUT_DTYPES = (tf.float32, tf.uint8)  # float32 first: it is the TF-Serving signature


# ---------------------------------------------------------------- in-graph preprocessing


def resize_images(images: tf.Tensor, size: tuple[int, int], resize: str) -> tf.Tensor:
    """Batch (N, H, W, 3) → float32 (N, h, w, 3): `skin_tf.data.pipeline.decode_resize` after
    decoding.

    The same steps in the same order: "crop" takes the centre square, the resize antialiases
    only when the longer side exceeds twice the target, and pixels are rounded to whole values
    (the pipeline stores uint8) so the model sees what it saw in evaluation. What cannot be
    repeated on pixels is the pipeline's DCT-domain JPEG downscaling of large files; that is
    why `skin_tf.data.images.prepare_image` feeds decodable files through the pipeline itself.
    """
    images = tf.cast(images, tf.float32)
    if resize_rule(resize) == "crop":
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        side = tf.minimum(height, width)
        images = images[:, (height - side) // 2 :, (width - side) // 2 :][:, :side, :side]
    target = tf.constant(size, tf.int32)
    resized = tf.cond(
        tf.reduce_max(tf.shape(images)[1:3]) > 2 * tf.reduce_max(target),
        lambda: tf.image.resize(images, target, antialias=True),
        lambda: tf.image.resize(images, target),
    )
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


# ---------------------------------------------------------------- endpoints


def build_endpoints(
    model: keras.Model,
    resize: str = "squash",
    temperature: float | None = None,
    layer: str | None = None,
) -> tuple[tf.types.experimental.GenericFunction, tf.types.experimental.GenericFunction]:
    """The `serve` and `explain` tf.functions of a flat softmax classifier (traced on first use).

    The last layer must be a Dense softmax layer: its input and weights give the logits, which
    both Grad-CAM (tf-keras-vis' ReplaceToLinear convention) and temperature scaling need.
    One functional model with two outputs (conv activations, pre-logit features) over the same
    layers gives activations and prediction in one forward pass.
    """
    from skin_tf.models.classifier import last_conv_layer_name

    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense) or head.activation is not keras.activations.softmax:
        raise ValueError(
            f"the model's last layer {head.name!r} must be a Dense softmax layer (as "
            "skin_tf.models.classifier.build_classifier makes); export a model with that head"
        )
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    conv = model.get_layer(layer or last_conv_layer_name(model))
    resize = resize_rule(resize)
    size = tuple(int(d) for d in model.input_shape[1:3])
    if size[0] != size[1]:
        raise ValueError(
            f"model input {size} is not square: skin_tf.data.pipeline makes square images, "
            "so export a model built with one image_size"
        )
    features_model = keras.Model(model.inputs[0], head.input)
    cam_model = keras.Model(model.inputs[0], [conv.output, head.input])
    inv_t = tf.constant(1.0 / (temperature or 1.0), tf.float32)

    def logits_of(features):
        features = tf.cast(features, tf.float32)
        return tf.matmul(features, tf.cast(head.kernel, tf.float32)) + tf.cast(
            head.bias, tf.float32
        )

    float_batch = tf.TensorSpec([None, None, None, 3], tf.float32, name="images")

    @tf.function(input_signature=[float_batch])
    def serve_float(images):
        x = resize_images(images, size, resize)
        return tf.nn.softmax(logits_of(features_model(x, training=False)) * inv_t)

    @tf.function(input_signature=[float_batch])
    def explain_float(images):
        x = resize_images(images, size, resize)
        with tf.GradientTape() as tape:
            activations, features = cam_model(x, training=False)
            tape.watch(activations)
            logits = logits_of(features)
            top_score = tf.gather(logits, tf.argmax(logits, axis=-1), batch_dims=1)
        grads = tf.cast(tape.gradient(top_score, activations), tf.float32)
        weights = tf.reduce_mean(grads, axis=(1, 2), keepdims=True)
        cam = tf.nn.relu(tf.reduce_sum(tf.cast(activations, tf.float32) * weights, axis=-1))
        cam = heatmap_to_input(cam, tf.shape(images)[1:3], size, resize)
        return {"probs": tf.nn.softmax(logits * inv_t), "heatmap": normalize_heatmaps(cam)}

    # Public endpoints: one trace per input dtype, each a thin cast around the single float32
    # graph, so the network is traced and stored once per endpoint rather than once per dtype.
    @tf.function
    def serve(images):
        return serve_float(tf.cast(images, tf.float32))

    @tf.function
    def explain(images):
        return explain_float(tf.cast(images, tf.float32))

    return serve, explain


def export_model(
    model: keras.Model,
    out: str | os.PathLike,
    *,
    resize: str = "squash",
    temperature: float | None = None,
    metadata: dict[str, Any] | None = None,
    overwrite: bool = False,
) -> Path:
    """Write `model` as a SavedModel with `serve` and `explain` plus metadata.json to `out`.

    Refuses an existing non-empty `out` unless overwrite=True, and even then only replaces a
    folder that holds an exported model. The archive is written beside `out` first and moved
    into place, so a failed export never leaves half a model behind.

    Example:
        >>> export_model(model, "saved_models/demo", metadata={"note": "test"})  # doctest: +SKIP
    """
    out = Path(out)
    _check_destination(out, overwrite)
    serve, explain = build_endpoints(model, resize=resize, temperature=temperature)
    for fn in (serve, explain):  # ExportArchive stores the traces a tf.function already has
        for dtype in INPUT_DTYPES:
            fn.get_concrete_function(tf.TensorSpec([None, None, None, 3], dtype, name="images"))
    # No archive.track(model): the endpoints' variables are tracked automatically, and leaving
    # the Keras layer objects out of the SavedModel makes writing it ~1.5x faster.
    archive = keras.export.ExportArchive()
    archive.add_endpoint("serve", serve)
    archive.add_endpoint("explain", explain)
    out.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{out.name}.", dir=out.parent))
    try:
        # The endpoints already hold their gradients (explain's tape runs at trace time), so the
        # custom gradients of EfficientNet's swish need not be stored: 10x faster export.
        options = tf.saved_model.SaveOptions(experimental_custom_gradients=False)
        archive.write_out(str(staging), verbose=False, options=options)
        info = {
            "format": FORMAT,
            "classes": list(CLASSES),
            "class_names": dict(CLASS_NAMES),
            "mel_index": MEL_INDEX,
            "input_size": [int(d) for d in model.input_shape[1:3]],
            "resize": resize_rule(resize),
            "input": "RGB images (N, H, W, 3), uint8 or float32 pixels 0..255, any H and W",
            "endpoints": {
                "serve": "images -> (N, 7) class probabilities (temperature-scaled if any)",
                "explain": "images -> {probs (N, 7), heatmap (N, H, W) Grad-CAM of the top "
                "class on the input pixels, 0..1}",
            },
            "temperature": temperature,
            **(metadata or {}),
            "exported_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "disclaimer": DISCLAIMER,
        }
        (staging / METADATA_FILE).write_text(
            json.dumps(json_ready(info), indent=2, allow_nan=False) + "\n"
        )
        if out.exists():
            shutil.rmtree(out)
        staging.rename(out)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    return out


def _check_destination(out: Path, overwrite: bool) -> None:
    if out.is_file():
        raise FileExistsError(f"{out} is a file; choose a folder name for the exported model")
    if not out.exists() or not any(out.iterdir()):
        return
    if not overwrite:
        raise FileExistsError(
            f"{out} already exists and is not empty; choose another --out or pass "
            "--overwrite (overwrite=True) to replace the exported model there"
        )
    if not (out / "saved_model.pb").is_file():
        raise FileExistsError(
            f"{out} is not an exported model (no saved_model.pb), so it is not replaced even "
            "with overwrite; choose another --out"
        )


# ---------------------------------------------------------------- a run → an exported model


def export_run(run_dir: str | os.PathLike, out: str | os.PathLike, overwrite: bool = False) -> Path:
    """Export a run's best.keras with its temperature, threshold, test metrics and provenance.

    Example:
        >>> export_run("runs/20250101T120000Z__baseline", "saved_models/b0")  # doctest: +SKIP
        PosixPath('saved_models/b0')
    """
    from skin_tf.evaluation.calibration import read_temperature

    run_dir = Path(run_dir)
    model_path = run_dir / "best.keras"
    if not model_path.is_file():
        raise FileNotFoundError(f"{model_path} not found: train the run first (skin-tf train)")
    config = read_json(run_dir / "config.json")
    temperature = read_temperature(run_dir)
    metadata = {
        "run": _run_name(run_dir),
        "run_dir": str(run_dir.resolve()),
        "model": config.get("model"),
        "calibrated": temperature is not None,
        "mel_threshold": mel_threshold(run_dir, temperature),
        "test_metrics": _test_metrics(run_dir),
        "tta": {
            "used_in_run": bool(config.get("tta", False)),
            "in_endpoints": False,
            "note": "the endpoints score the image once; test_metrics used flip-averaging (TTA)"
            if config.get("tta")
            else None,
        },
        "provenance": _provenance(run_dir),
    }
    model = keras.models.load_model(model_path, compile=False)
    return export_model(
        model,
        out,
        resize=resize_rule(str(config.get("resize", "squash"))),
        temperature=temperature,
        metadata=metadata,
        overwrite=overwrite,
    )


def mel_threshold(run_dir: Path, temperature: float | None) -> dict[str, Any]:
    """The melanoma operating point of operating_point.json, checked against the temperature."""
    path = run_dir / "operating_point.json"
    if not path.is_file():
        return {
            "value": None,
            "note": "no operating_point.json in the run: run `skin-tf threshold` to choose one "
            "on validation; until then no melanoma flag is given",
        }
    point = read_json(path)
    chosen_with = point.get("temperature")
    if point.get("calibrated") != (temperature is not None) or (
        temperature is not None and not np.isclose(chosen_with or 0.0, temperature)
    ):
        raise ValueError(
            f"{path} was chosen on {'calibrated' if point.get('calibrated') else 'raw'} "
            f"probabilities (temperature {chosen_with}) but the run's temperature is "
            f"{temperature}: re-run `skin-tf threshold` on this run, then export"
        )
    val = point.get("val", {})
    return {
        "value": float(point["threshold"]),
        "target_sensitivity": point.get("target_sensitivity"),
        "calibrated": point.get("calibrated"),
        "chosen_on": point.get("chosen_on", "val"),
        "val_sensitivity": val.get("sensitivity"),
        "val_specificity": val.get("specificity"),
        "test": {k: point.get("test", {}).get(k) for k in ("sensitivity", "specificity")},
        "rule": "melanoma flag when P(mel) >= value",
        "note": point.get("note"),
    }


def _test_metrics(run_dir: Path) -> dict[str, Any] | None:
    path = run_dir / "metrics.json"
    if not path.is_file():
        return None
    metrics = read_json(path)
    return metrics.get("test", metrics) if isinstance(metrics, dict) else metrics


def _provenance(run_dir: Path) -> dict[str, Any]:
    meta_path = run_dir / "meta.json"
    if not meta_path.is_file():
        raise FileNotFoundError(f"{meta_path} not found: every run directory needs its meta.json")
    from skin_tf.runs import provenance

    return {"caption": provenance(run_dir), "meta": read_json(meta_path)}


def _run_name(run_dir: Path) -> str:
    from skin_tf.runs import run_name_of

    return run_name_of(run_dir)


# ---------------------------------------------------------------- loading for clients


class ServedModel:
    """An exported model plus its metadata.json: what the Streamlit page and `predict` use.

    Example:
        >>> served = load_served("saved_models/b0")  # doctest: +SKIP
        >>> served.predict(np.zeros((450, 600, 3), np.uint8)).shape  # doctest: +SKIP
        (1, 7)
    """

    def __init__(self, path: Path, loaded: Any, metadata: dict[str, Any]):
        self.path = path
        self.metadata = metadata
        self._loaded = loaded

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
    def threshold(self) -> float | None:
        """The melanoma operating threshold on P(mel), or None when the run had none."""
        return (self.metadata.get("mel_threshold") or {}).get("value")

    @property
    def disclaimer(self) -> str:
        return self.metadata.get("disclaimer", DISCLAIMER)

    def predict(self, images: np.ndarray) -> np.ndarray:
        """(N, 7) probabilities of an image (H, W, 3) or a batch (N, H, W, 3), uint8 or float."""
        return self._loaded.serve(_as_batch(images)).numpy()

    def explain(self, images: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(probs (N, 7), heatmaps (N, H, W) in 0..1 for each image's top class)."""
        out = self._loaded.explain(_as_batch(images))
        return out["probs"].numpy(), out["heatmap"].numpy()


def _as_batch(images: np.ndarray) -> tf.Tensor:
    array = np.asarray(images)
    if array.ndim == 3:
        array = array[None]
    if array.ndim != 4 or array.shape[-1] != 3:
        raise ValueError(
            f"expected an RGB image (H, W, 3) or a batch (N, H, W, 3), got shape {array.shape}; "
            "read files with skin_tf.data.images.read_rgb_image"
        )
    if array.dtype != np.uint8:
        array = array.astype(np.float32)
    return tf.convert_to_tensor(array)


def load_served(path: str | os.PathLike) -> ServedModel:
    """Load an exported model folder (SavedModel + metadata.json)."""
    path = Path(path)
    if not (path / "saved_model.pb").is_file():
        raise FileNotFoundError(
            f"{path} is not an exported model (no saved_model.pb): create one with "
            "`skin-tf export RUN_DIR --out {path}`"
        )
    metadata = read_json(path / METADATA_FILE)
    if metadata.get("format") != FORMAT:
        raise ValueError(f"{path / METADATA_FILE} is not a {FORMAT} metadata file: re-export")
    return ServedModel(path, _load_quietly(path), metadata)


def _load_quietly(path: Path) -> Any:
    """tf.saved_model.load without one absl warning per function about unsaved custom gradients
    (export drops them on purpose: the endpoints are for inference, never differentiated)."""
    from absl import logging as absl_logging

    previous = absl_logging.get_verbosity()
    absl_logging.set_verbosity(absl_logging.ERROR)
    try:
        return tf.saved_model.load(str(path))
    finally:
        absl_logging.set_verbosity(previous)


# ---------------------------------------------------------------- command line


def load_served_metadata(path: str | os.PathLike) -> dict[str, Any]:
    """metadata.json of an exported model, without loading the graph."""
    return read_json(Path(path) / METADATA_FILE)
