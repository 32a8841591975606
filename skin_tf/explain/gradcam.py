"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM via tf-keras-vis) and overlays.

Heatmaps come from the model's last conv layer ("top_conv" for EfficientNets) with tf-keras-vis:
Grad-CAM and Grad-CAM++ on the logits (the softmax is replaced by a linear activation in a clone,
tf-keras-vis' `ReplaceToLinear`), or Score-CAM on the probabilities. Overlays are drawn on each
image at its own size, undoing the training resize rule (squash or crop). The exported `explain`
endpoint (`skin_tf.serving.endpoints`) reuses `heatmap_to_input` and `normalize_heatmaps`, the
Streamlit page draws with `overlay`, and `skin_tf.explain.gallery` turns a run into galleries and a
README.

Example:
    >>> maps = gradcam_heatmaps(model, images)  # (N, h, w) in 0..1  # doctest: +SKIP
    >>> picture = overlay(original_uint8, maps[0], resize="squash")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np
import tensorflow as tf

METHODS = ("gradcam", "gradcam++", "scorecam")
SCORECAM_MAX_CHANNELS = 64  # "Faster Score-CAM": only the 64 most varied channels are scored
_EPSILON = 1e-7  # tf-keras-vis' normalisation epsilon


# ---------------------------------------------------------------- heatmaps


def gradcam_heatmaps(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | None = None,
    method: str = "gradcam",
    layer: str | None = None,
) -> np.ndarray:
    """Class-activation maps (N, h, w) in 0..1 for images already at the model's input size.

    Maps are computed by tf-keras-vis on the conv grid, then resized to (h, w) bilinearly and
    scaled to 0..1 per image, exactly as the exported `explain` endpoint does.

    class_index: None for each image's predicted class, an int for one class for all images,
    or one index per image. `images` are float pixels 0..255, (N, h, w, 3) or (h, w, 3), e.g.
    from `skin_tf.data.pipeline.load_image`.

    Example:
        >>> maps = gradcam_heatmaps(model, images, method="gradcam++")  # doctest: +SKIP
        >>> maps.shape  # doctest: +SKIP
        (2, 64, 64)
    """
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.scorecam import Scorecam
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear
    from tf_keras_vis.utils.scores import CategoricalScore

    from skin_tf.models.classifier import last_conv_layer_name

    if method not in METHODS:
        raise ValueError(f"unknown method {method!r}: choose one of {', '.join(METHODS)}")
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    expected = tuple(model.input_shape[1:])
    if batch.ndim != 4 or batch.shape[1:] != expected:
        raise ValueError(
            f"images must have the model's input shape (N, {', '.join(map(str, expected))}), got "
            f"{batch.shape}; read files with "
            "skin_tf.data.pipeline.load_image(path, image_size, resize)"
        )
    targets = _target_classes(model, batch, class_index)
    layer = layer or last_conv_layer_name(model)
    # tf-keras-vis gives the map on the conv grid; it is upsampled here with tf.image.resize
    # (pixel centres, as the `explain` endpoint does) instead of tf-keras-vis' scipy zoom, which
    # pins the corner cells to the image corners and shifts the map by up to half a cell.
    grid = {"expand_cam": False, "normalize_cam": False}
    if method == "scorecam":  # gradient-free: scores the softmax probabilities themselves
        cams = Scorecam(model)(
            CategoricalScore(targets),
            batch,
            penultimate_layer=layer,
            max_N=SCORECAM_MAX_CHANNELS,
            **grid,
        )
    else:
        visualizer = Gradcam if method == "gradcam" else GradcamPlusPlus
        cams = visualizer(model, model_modifier=ReplaceToLinear(), clone=True)(
            CategoricalScore(targets), batch, penultimate_layer=layer, **grid
        )
    cams = np.asarray(cams, dtype=np.float32)
    if cams.ndim == 2:  # a single image may come back without its batch axis
        cams = cams[None]
    maps = normalize_heatmaps(heatmap_to_input(cams, batch.shape[1:3], batch.shape[1:3], "squash"))
    return np.clip(maps.numpy(), 0.0, 1.0)


def _target_classes(
    model: keras.Model, batch: np.ndarray, class_index: int | Sequence[int] | None
) -> list[int]:
    n_classes = int(model.output_shape[-1])
    if class_index is None:
        return model.predict(batch, verbose=0).argmax(axis=1).astype(int).tolist()
    targets = [int(class_index)] * len(batch) if np.isscalar(class_index) else list(class_index)
    if len(targets) != len(batch) or not all(0 <= t < n_classes for t in targets):
        raise ValueError(
            f"class_index must be None, one index in 0..{n_classes - 1}, or one per image "
            f"({len(batch)}); got {class_index}"
        )
    return [int(t) for t in targets]


def heatmap_to_input(
    cam: tf.Tensor, input_hw: tf.Tensor, size: tuple[int, int], resize: str
) -> tf.Tensor:
    """Map heatmaps on the model grid (N, a, b) onto an input image's pixels (N, H, W).

    Undoes the geometry of the training resize rule (`size` is the model input (h, w)):
    "squash" rescales each axis; "crop" lays the map over the central crop
    with the model's aspect ratio and leaves zero outside it. Works eagerly and inside a
    tf.function (the `explain` endpoint uses it).
    """
    height, width = input_hw[0], input_hw[1]
    cam = tf.convert_to_tensor(cam, tf.float32)[..., None]
    if resize == "squash":
        out = tf.image.resize(cam, (height, width))
    elif resize == "crop":
        h, w = float(size[0]), float(size[1])
        scale = tf.minimum(tf.cast(height, tf.float32) / h, tf.cast(width, tf.float32) / w)
        crop_h = tf.minimum(tf.cast(tf.round(h * scale), tf.int32), height)
        crop_w = tf.minimum(tf.cast(tf.round(w * scale), tf.int32), width)
        out = tf.image.pad_to_bounding_box(
            tf.image.resize(cam, (crop_h, crop_w)),
            (height - crop_h) // 2,
            (width - crop_w) // 2,
            height,
            width,
        )
    else:
        raise ValueError(f"unknown resize rule {resize!r}: use squash or crop")
    return out[..., 0]


def normalize_heatmaps(cam: tf.Tensor) -> tf.Tensor:
    """Scale each map of a batch to 0..1: (x - min) / (max - min + 1e-7), as tf-keras-vis does."""
    low = tf.reduce_min(cam, axis=(1, 2), keepdims=True)
    high = tf.reduce_max(cam, axis=(1, 2), keepdims=True)
    return (cam - low) / (high - low + _EPSILON)


def overlay(
    image_uint8: np.ndarray,
    heatmap: np.ndarray,
    alpha: float = 0.4,
    cmap: str = "jet",
    resize: str = "squash",
) -> np.ndarray:
    """Blend a 0..1 heatmap, coloured with `cmap`, over an RGB uint8 image at the image's size.

    A heatmap on the model grid is mapped onto the image with `heatmap_to_input` (`resize` is
    the rule the model was trained with); one already at the image's size is used as it is.

    Example:
        >>> overlay(np.zeros((450, 600, 3), np.uint8), np.ones((7, 7))).shape
        (450, 600, 3)
    """
    import matplotlib

    image = np.asarray(image_uint8)
    if image.ndim != 3 or image.shape[-1] != 3 or image.dtype != np.uint8:
        raise ValueError(f"image must be RGB uint8 (H, W, 3), got {image.dtype} {image.shape}")
    if not 0.0 <= alpha <= 1.0:
        raise ValueError(f"alpha must be in [0, 1], got {alpha}")
    heat = np.asarray(heatmap, dtype=np.float32)
    if heat.ndim != 2:
        raise ValueError(f"heatmap must be 2-D (h, w), got shape {heat.shape}")
    if heat.shape != image.shape[:2]:
        heat = heatmap_to_input(heat[None], image.shape[:2], heat.shape, resize).numpy()[0]
    colours = matplotlib.colormaps[cmap](np.clip(heat, 0.0, 1.0))[..., :3] * 255.0
    blended = (1.0 - alpha) * image.astype(np.float32) + alpha * colours
    return np.clip(np.round(blended), 0, 255).astype(np.uint8)
