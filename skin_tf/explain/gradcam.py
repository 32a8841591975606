"""Class-activation maps (Grad-CAM, Grad-CAM++, Score-CAM, LayerCAM via tf-keras-vis; RISE,
`skin_tf.explain.rise`) and overlays.

A method is a name, optionally with the layers it reads after `@` (joined by `+`): "gradcam"
reads the last conv layer ("top_conv" for EfficientNets); "layercam@block5+top" fuses LayerCAM
on the output of stage 5 (stride 16, a grid twice as fine) with LayerCAM on the last conv.
Layers are named by stage ("top", "block5", …) or by layer name; for an ensemble of
classifiers (layers `m0_…`, `m1_…`) a stage means every member's, so the map is the members'
maps averaged (`cam_layers`). Each layer's map is scaled to 0..1 at the input's size, and the
maps of several layers are averaged and scaled again.

Grad-CAM, Grad-CAM++ and LayerCAM differentiate the logits (the softmax is replaced by a linear
activation in a clone, tf-keras-vis' `ReplaceToLinear`); Score-CAM weighs channels by the
softmax probability of the class on inputs masked by each channel (of the same logits: without
the linear clone tf-keras-vis would take a softmax of the probabilities, which hardly depends on
the class). Overlays are drawn on each image at its own size, undoing the training resize rule
(squash or crop). The exported `explain` endpoint (`skin_tf.serving.endpoints`) reuses
`cam_from_gradients`, `heatmap_to_input` and `normalize_heatmaps`, the Streamlit page draws with
`overlay`, and `skin_tf.explain.gallery` turns a run into galleries and a README;
`skin_tf.explain.checks` measures which method's maps mean something.

Example:
    >>> maps = gradcam_heatmaps(model, images)  # (N, h, w) in 0..1  # doctest: +SKIP
    >>> picture = overlay(original_uint8, maps[0], resize="squash")  # doctest: +SKIP
"""

from __future__ import annotations

import contextlib
import re
import warnings
from collections.abc import Callable, Iterator, Sequence

import keras
import numpy as np
import tensorflow as tf

from skin_tf.explain.methods import GRADIENT_METHODS, parse_method
from skin_tf.models.meta_fusion import META_INPUT, image_input, metadata_shape

SCORECAM_MAX_CHANNELS = 64  # "Faster Score-CAM": only the 64 most varied channels are scored
_EPSILON = 1e-7  # tf-keras-vis' normalisation epsilon
_MEMBER = re.compile(r"^(m\d+_)")  # an ensemble member's layer prefix (skin_tf.models.ensemble)
_BATCH = 32  # images per tf-keras-vis call


# ---------------------------------------------------------------- methods and layers


def cam_layers(model: keras.Model, layers: Sequence[str] = ("top",)) -> tuple[str, ...]:
    """The model layers a method reads: "top" is the last conv layer, "blockN" the output of
    stage N (its last layer), anything else a layer name. In an ensemble (layers `m0_…`,
    `m1_…`) a stage gives every member's layer, in member order.

    Example:
        >>> lite0 = build_classifier("efficientnet_lite0", 96)  # doctest: +SKIP
        >>> cam_layers(lite0, ["block5", "top"])  # doctest: +SKIP
        ('block5c_add', 'top_conv')
    """
    from skin_tf.models.classifier import last_conv_layer_name

    names = [layer.name for layer in model.layers]
    members = sorted({m.group(1) for n in names if (m := _MEMBER.match(n))}, key=_member_order)
    resolved: list[str] = []
    for layer in layers:
        if layer in names:
            resolved.append(layer)
        elif layer == "top" and not members:
            resolved.append(last_conv_layer_name(model))
        elif layer == "top" or re.fullmatch(r"block\d+", layer):
            stem = "top_conv" if layer == "top" else layer
            for prefix in members or [""]:
                found = [n for n in names if n == prefix + stem or n.startswith(prefix + stem)]
                if not found or len(model.get_layer(found[-1]).output.shape) != 4:
                    raise ValueError(
                        f"model {model.name!r} has no {prefix + stem!r} feature maps for layer "
                        f"{layer!r}: name a layer of it (e.g. {last_conv_layer_name(model)!r})"
                    )
                resolved.append(found[-1])
        else:
            raise ValueError(
                f"model {model.name!r} has no layer {layer!r}: use 'top', a stage such as "
                "'block5', or a layer name"
            )
    return tuple(resolved)


def _member_order(prefix: str) -> int:
    return int(prefix[1:-1])


def grid_shape(model: keras.Model, method: str) -> tuple[int, int]:
    """(rows, columns) of the finest feature grid a method reads.

    Example:
        >>> lite0 = build_classifier("efficientnet_lite0", [150, 200])  # doctest: +SKIP
        >>> grid_shape(lite0, "gradcam")  # doctest: +SKIP
        (5, 7)
    """
    name, layers = parse_method(method)
    if name == "rise":  # the masks' cells, its coarsest structure
        from skin_tf.explain.rise import GRID

        return GRID, GRID
    shapes = [model.get_layer(layer).output.shape[1:3] for layer in cam_layers(model, layers)]
    return max((int(h), int(w)) for h, w in shapes)


# ---------------------------------------------------------------- heatmaps


def gradcam_heatmaps(
    model: keras.Model,
    images: np.ndarray,
    class_index: int | Sequence[int] | None = None,
    method: str = "gradcam",
    layer: str | None = None,
    *,
    logits: bool = False,
    fields: np.ndarray | None = None,
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
) -> np.ndarray:
    """Class-activation maps (N, h, w) in 0..1 for images already at the model's input size.

    Maps are computed by tf-keras-vis on each layer's grid, then resized to (h, w) bilinearly
    and scaled to 0..1 per image, exactly as the exported `explain` endpoint does; a method on
    several layers (`parse_method`) averages their scaled maps and scales the mean.

    class_index: None for each image's predicted class, an int for one class for all images,
    or one index per image. `images` are float pixels 0..255, (N, h, w, 3) or (h, w, 3), e.g.
    from `skin_tf.data.pipeline.load_image`. `layer` (a layer name) overrides the method's.
    logits=True: `model` already outputs logits (`logit_model`), so no copy with a linear head
    is made; this saves a clone per call when many calls share one model. `fields`: for a model
    with patient fields, each image's encoded fields (N, width), held fixed: the map is then the
    image's, given those fields (as the exported `explain` computes it). `predict`: the same
    model's probabilities on another engine (`skin_tf.explain.faithfulness.probability_function`,
    LiteRT by default), for the forward passes of the methods that read the model's answers on
    altered copies of the images, RISE and Score-CAM; the checks pass it for speed, and the maps
    agree with TensorFlow's to float rounding.

    Example:
        >>> maps = gradcam_heatmaps(model, images, method="layercam@block5+top")  # doctest: +SKIP
        >>> maps.shape  # doctest: +SKIP
        (2, 96, 96)
    """
    name, layers = parse_method(method)
    batch = np.asarray(images, dtype=np.float32)
    if batch.ndim == 3:
        batch = batch[None]
    expected = tuple(image_input(model).shape[1:])
    if batch.ndim != 4 or batch.shape[1:] != expected:
        raise ValueError(
            f"images must have the model's input shape (N, {', '.join(map(str, expected))}), got "
            f"{batch.shape}; read files with "
            "skin_tf.data.pipeline.load_image(path, image_size, resize)"
        )
    fields = _checked_fields(model, fields, len(batch))
    targets = _target_classes(model, batch, class_index, fields)
    network = model if logits else logit_model(model)
    if name == "rise":
        from skin_tf.explain.rise import rise_maps, rise_maps_of

        if layer is not None:
            raise ValueError(f"rise masks the input and reads no layer: drop layer={layer!r}")
        if predict is None:
            raw = rise_maps(network, batch, targets, fields)
        else:
            raw = rise_maps_of(predict, batch, targets, fields)
        return np.clip(normalize_heatmaps(raw).numpy(), 0, 1)
    visualizer = None if name == "scorecam" else _visualizer(network, name)
    hw = batch.shape[1:3]
    total = np.zeros((len(batch), *hw), np.float32)
    resolved = (layer,) if layer is not None else cam_layers(model, layers)
    for conv in resolved:
        if visualizer is None:
            cams = _scorecam_cams(network, conv, batch, targets, fields, predict)
        else:
            cams = _layer_cams(visualizer, conv, batch, targets, fields)
        total += normalize_heatmaps(heatmap_to_input(cams, hw, hw, "squash")).numpy()
    maps = total if len(resolved) == 1 else normalize_heatmaps(total / len(resolved)).numpy()
    return np.clip(maps, 0.0, 1.0)


def logit_model(model: keras.Model) -> keras.Model:
    """A copy of a softmax classifier whose last layer gives the logits (tf-keras-vis'
    `ReplaceToLinear` on a clone), with the same weights; the classes keep their order.

    Example:
        >>> logits = logit_model(model)  # doctest: +SKIP
        >>> gradcam_heatmaps(logits, images, method="layercam", logits=True)  # doctest: +SKIP
    """
    from tf_keras_vis.utils.model_modifiers import ReplaceToLinear

    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    ReplaceToLinear()(copy)
    return copy


def _visualizer(logits: keras.Model, name: str):
    from tf_keras_vis.gradcam import Gradcam
    from tf_keras_vis.gradcam_plus_plus import GradcamPlusPlus
    from tf_keras_vis.layercam import Layercam

    kind = {"gradcam": Gradcam, "gradcam++": GradcamPlusPlus, "layercam": Layercam}[name]
    return kind(logits, model_modifier=None, clone=False)


def _layer_cams(
    visualizer,
    layer: str,
    batch: np.ndarray,
    targets: list[int],
    fields: np.ndarray | None = None,
) -> np.ndarray:
    """tf-keras-vis' raw gradient maps (N, a, b) of one layer, on the layer's grid (a model with
    patient fields gets [images, fields], in its inputs' order)."""
    from tf_keras_vis.utils.scores import CategoricalScore

    # tf-keras-vis gives the map on the conv grid; it is upsampled by the caller with
    # tf.image.resize (pixel centres, as the `explain` endpoint does) instead of tf-keras-vis'
    # scipy zoom, which pins the corner cells to the image corners and shifts the map by up to
    # half a cell. seek_penultimate_conv_layer=False: the named layer itself (a stage's output
    # is an Add layer, not a convolution).
    grid = {"expand_cam": False, "normalize_cam": False, "seek_penultimate_conv_layer": False}
    parts = []
    with _quiet_tf_keras_vis():
        for i in range(0, len(batch), _BATCH):
            rows = slice(i, i + _BATCH)
            cams = visualizer(
                CategoricalScore(targets[rows]),
                batch[rows] if fields is None else [batch[rows], fields[rows]],
                penultimate_layer=layer,
                **grid,
            )
            cams = np.asarray(cams, dtype=np.float32)
            parts.append(cams[None] if cams.ndim == 2 else cams)  # one image: no batch axis
    return np.concatenate(parts)


def _scorecam_cams(
    logits: keras.Model,
    layer: str,
    batch: np.ndarray,
    targets: list[int],
    fields: np.ndarray | None = None,
    predict: Callable[[np.ndarray, np.ndarray | None], np.ndarray] | None = None,
) -> np.ndarray:
    """tf-keras-vis' Score-CAM with max_N=64, image by image, with one compiled forward pass
    (or, given `predict`, the masked copies' probabilities from it, one call an image).

    tf-keras-vis keeps the union of every image's 64 most varied channels and scores all of them
    on every image of a call, and its model.predict costs about a second per call on 2 cores;
    this is the same computation per image (its channel choice, scipy zoom of the channels
    to the input, 0..1 scaling, masked inputs, softmax of the class logit as the channel's
    weight, ReLU of the weighted sum), in batches of the model's own predict_on_batch.
    """
    from scipy.ndimage import zoom

    features = keras.Model(image_input(logits), logits.get_layer(layer).output)
    activations = np.concatenate(
        [features(batch[i : i + _BATCH], training=False) for i in range(0, len(batch), _BATCH)]
    ).astype(np.float32)
    cams = []
    for k, (image, act, target) in enumerate(zip(batch, activations, targets, strict=True)):
        spread = act.reshape(-1, act.shape[-1]).std(axis=0)
        top = np.argsort(-spread, kind="stable")[: min(SCORECAM_MAX_CHANNELS, act.shape[-1])]
        chosen = act[..., top]  # (a, b, k)
        factors = [t / f for f, t in zip(chosen.shape[:2], image.shape[:2], strict=True)]
        masks = zoom(chosen, (*factors, 1), order=1, mode="nearest")
        low = masks.min(axis=(0, 1), keepdims=True)
        masks = (masks - low) / (masks.max(axis=(0, 1), keepdims=True) - low + _EPSILON)
        masked = image[None] * np.moveaxis(masks, -1, 0)[..., None]  # (k, H, W, 3)
        if predict is not None:
            held = None if fields is None else np.repeat(fields[k : k + 1], len(top), axis=0)
            weights = predict(masked, held)[:, target]
        else:
            # predict_on_batch: traced once per model (the cascade reuses one copy), no progress bar
            held = None if fields is None else np.repeat(fields[k : k + 1], _BATCH, axis=0)
            parts = [masked[i : i + _BATCH] for i in range(0, len(top), _BATCH)]
            scores = np.concatenate([
                logits.predict_on_batch(
                    part if held is None else {"image": part, META_INPUT: held[: len(part)]}
                )
                for part in parts
            ])  # fmt: skip
            weights = _softmax(scores)[:, target]
        cams.append(np.maximum(chosen @ weights, 0.0))
    return np.stack(cams).astype(np.float32)


def _softmax(logits: np.ndarray) -> np.ndarray:
    shifted = np.exp(logits - logits.max(axis=-1, keepdims=True))
    return shifted / shifted.sum(axis=-1, keepdims=True)


@contextlib.contextmanager
def _quiet_tf_keras_vis() -> Iterator[None]:
    """No progress bar per Score-CAM call (its model.predict), and no Keras warning that
    tf-keras-vis hands the one-input model a list of inputs."""
    was_on = keras.config.is_interactive_logging_enabled()
    keras.config.disable_interactive_logging()
    try:
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message="The structure of `inputs` doesn't match")
            yield
    finally:
        if was_on:
            keras.config.enable_interactive_logging()


def cam_from_gradients(method: str, activations: tf.Tensor, grads: tf.Tensor) -> tf.Tensor:
    """A gradient method's map (N, a, b) from a layer's activations and the gradients of the
    class logit with respect to them, (N, a, b, C) each: tf-keras-vis' formulas in TensorFlow,
    for the `explain` endpoint's graph.

    gradcam: channels weighted by their mean gradient; gradcam++: by their positive gradients
    weighted with Grad-CAM++'s alphas; layercam: every position by its positive gradient. Each
    is passed through a ReLU. tf-keras-vis' Grad-CAM++ also multiplies the gradients by
    exp(logit), one factor per image, which the alphas cancel and the 0..1 scaling removes (and
    which overflows float32 above a logit of 88), so it is left out.

    Example:
        >>> a = tf.ones((1, 2, 2, 3)); g = tf.fill((1, 2, 2, 3), 0.5)
        >>> cam_from_gradients("layercam", a, g).numpy().tolist()
        [[[1.5, 1.5], [1.5, 1.5]]]
    """
    a, g = tf.cast(activations, tf.float32), tf.cast(grads, tf.float32)
    if method == "gradcam":
        weights = tf.reduce_mean(g, axis=(1, 2), keepdims=True)
    elif method == "layercam":
        return tf.nn.relu(tf.reduce_sum(a * tf.nn.relu(g), axis=-1))
    elif method == "gradcam++":
        second, third = tf.square(g), g * tf.square(g)
        total = tf.reduce_sum(a, axis=(1, 2), keepdims=True)
        denominator = 2.0 * second + third * total
        alphas = second / (denominator + tf.cast(second == 0.0, tf.float32))
        norm = tf.reduce_sum(alphas, axis=(1, 2), keepdims=True)
        alphas = alphas / (norm + tf.cast(norm == 0.0, tf.float32))
        weights = tf.reduce_sum(tf.nn.relu(g) * alphas, axis=(1, 2), keepdims=True)
    else:
        raise ValueError(f"{method!r} is not a gradient method: use one of {GRADIENT_METHODS}")
    return tf.nn.relu(tf.reduce_sum(a * weights, axis=-1))


def fused_heatmaps(
    method: str,
    activations: Sequence[tf.Tensor],
    grads: Sequence[tf.Tensor],
    input_hw: tf.Tensor,
    size: tuple[int, int],
    resize: str,
) -> tf.Tensor:
    """The `explain` endpoint's map (N, H, W) in 0..1 on the input pixels: each layer's map
    (`cam_from_gradients`) laid over the input (`heatmap_to_input`) and scaled to 0..1; several
    layers' maps averaged and scaled again, as `gradcam_heatmaps` does.

    Example:
        >>> a = [tf.ones((1, 2, 2, 3))]; g = [tf.ones((1, 2, 2, 3))]
        >>> fused_heatmaps("gradcam", a, g, (4, 4), (2, 2), "squash").shape
        TensorShape([1, 4, 4])
    """
    maps = [
        normalize_heatmaps(
            heatmap_to_input(cam_from_gradients(method, a, g), input_hw, size, resize)
        )
        for a, g in zip(activations, grads, strict=True)
    ]
    return maps[0] if len(maps) == 1 else normalize_heatmaps(tf.add_n(maps) / len(maps))


def _checked_fields(model: keras.Model, fields: np.ndarray | None, n: int) -> np.ndarray | None:
    width = metadata_shape(model)[0]
    if not width:
        if fields is not None:
            raise ValueError("this model takes images alone: pass no fields")
        return None
    if fields is None or np.shape(fields) != (n, width):
        raise ValueError(
            f"this model takes patient fields: pass fields (N, {width}) for the {n} images "
            f"(skin_tf.data.meta_fields.encode_fields; blank_vector: not given), got "
            f"{None if fields is None else np.shape(fields)}"
        )
    return np.asarray(fields, np.float32)


def _target_classes(
    model: keras.Model,
    batch: np.ndarray,
    class_index: int | Sequence[int] | None,
    fields: np.ndarray | None = None,
) -> list[int]:
    n_classes = int(model.output_shape[-1])
    if class_index is None:
        x = batch if fields is None else {"image": batch, META_INPUT: fields}
        return model.predict(x, verbose=0).argmax(axis=1).astype(int).tolist()
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
