"""The computations an exported model serves, as TensorFlow functions: the in-graph resize, the
temperature-scaled probabilities, the out-of-distribution guard's score, and the SavedModel's
`serve` and `explain` endpoints.

`skin_tf.serving.archive` writes `serve` and `explain` into the SavedModel and converts
`probabilities_function` (the same network, head and temperature, on images already at the model's
size) into the LiteRT flatbuffers (`skin_tf.serving.litert`). Both engines therefore compute the
same probabilities; only where the resize happens differs (inside `serve`, before the LiteRT call).
With a guard (`GuardGraph`), `serve` and `explain` add `ood_score` and `in_distribution` to what
they return, and the LiteRT models output the penultimate features the guard reads.

A model trained with patient fields (`skin_tf.data.meta_fields`) takes them as a second input
everywhere, `metadata` (N, width) float32, encoded; the blank vector means "not given". Its
guard reads image features only (the backbone's, before the fields join), so whether an image is
in distribution never depends on what the fields say.

Example:
    >>> import numpy as np
    >>> resize_images(np.zeros((1, 150, 200, 3), np.uint8), (64, 64), "squash").shape
    TensorShape([1, 64, 64, 3])
"""

from __future__ import annotations

from collections.abc import Callable

import keras
import tensorflow as tf

from skin_tf.data.pipeline import resize_rule
from skin_tf.models.meta_fusion import META_INPUT, image_input, metadata_shape
from skin_tf.serving.guard import OodGuard

# ---------------------------------------------------------------- in-graph preprocessing


def resize_images(images: tf.Tensor, size: tuple[int, int], resize: str) -> tf.Tensor:
    """Batch (N, H, W, 3) → float32 (N, h, w, 3): `skin_tf.data.pipeline.decode_resize` after
    decoding.

    The same steps in the same order: "crop" takes the largest centred box of the target's shape
    (the centre square for a square target), the resize antialiases only when a side exceeds
    twice the target's, and pixels are rounded to whole values
    (the pipeline stores uint8) so the model sees what it saw in evaluation. What cannot be
    repeated on pixels is the pipeline's DCT-domain JPEG downscaling of large files; that is
    why `skin_tf.data.images.prepare_image` feeds decodable files through the pipeline itself.
    An image already at `size` comes back unchanged (as float32).
    """
    images = tf.cast(images, tf.float32)
    if resize_rule(resize) == "crop":
        height, width = tf.shape(images)[1], tf.shape(images)[2]
        box_h = tf.minimum(height, (width * size[0]) // size[1])  # as pipeline._centre_box
        box_w = tf.minimum(width, (box_h * size[1]) // size[0])
        top, left = (height - box_h) // 2, (width - box_w) // 2
        images = images[:, top : top + box_h, left : left + box_w]
    target = tf.constant(size, tf.int32)
    resized = tf.cond(
        tf.reduce_any(tf.shape(images)[1:3] > 2 * target),
        lambda: tf.image.resize(images, target, antialias=True),
        lambda: tf.image.resize(images, target),
    )
    return tf.clip_by_value(tf.round(resized), 0.0, 255.0)


# ---------------------------------------------------------------- the classifier's pieces


def softmax_head(model: keras.Model) -> keras.layers.Dense:
    """The model's last layer, checked to be the Dense softmax layer that gives the logits."""
    head = model.layers[-1]
    if not isinstance(head, keras.layers.Dense) or head.activation is not keras.activations.softmax:
        raise ValueError(
            f"the model's last layer {head.name!r} must be a Dense softmax layer (as "
            "skin_tf.models.classifier.build_classifier makes); export a model with that head"
        )
    return head


def input_size(model: keras.Model) -> tuple[int, int]:
    """(height, width) of the model's input; ValueError for a model built for any size.

    Example:
        >>> input_size(build_classifier("efficientnet_lite0", (96, 128)))  # doctest: +SKIP
        (96, 128)
    """
    height, width = image_input(model).shape[1:3]
    if height is None or width is None:
        raise ValueError(
            f"model input {image_input(model).shape} has no fixed size: build it with one "
            "(build_classifier(..., image_size=...)) before exporting"
        )
    return int(height), int(width)


def _check_temperature(temperature: float | None) -> tf.Tensor:
    if temperature is not None and not temperature > 0:
        raise ValueError(f"temperature must be positive, got {temperature}")
    return tf.constant(1.0 / (temperature or 1.0), tf.float32)


def _logits_function(head: keras.layers.Dense) -> Callable[[tf.Tensor], tf.Tensor]:
    def logits_of(features: tf.Tensor) -> tf.Tensor:
        features = tf.cast(features, tf.float32)
        kernel, bias = tf.cast(head.kernel, tf.float32), tf.cast(head.bias, tf.float32)
        return tf.matmul(features, kernel) + bias

    return logits_of


def fields_width(model: keras.Model) -> int:
    """How many floats of encoded patient fields the model takes beside the image (0: none)."""
    return metadata_shape(model)[0]


def model_input(model: keras.Model, images: tf.Tensor, fields: tf.Tensor | None = None):
    """What to call `model` (or a model over its `model.input`) with: the images alone, or
    {"image", "metadata"} for a model with patient fields, which then must be given."""
    if not fields_width(model):
        return images
    if fields is None:
        raise ValueError("this model takes patient fields: pass them (the blank vector: none)")
    return {"image": images, META_INPUT: fields}


def _specs(model: keras.Model, images: tf.TensorSpec) -> list[tf.TensorSpec]:
    """The input signature of a function of images (and, for a model with fields, fields)."""
    width = fields_width(model)
    return [images] + ([tf.TensorSpec([None, width], tf.float32, name=META_INPUT)] if width else [])


def features_model(model: keras.Model) -> keras.Model:
    """The classifier up to its head: images (and fields) → the pooled features the head reads."""
    return keras.Model(model.input, softmax_head(model).input)


def pooled_output(model: keras.Model, layer: str | None) -> keras.KerasTensor:
    """The mean over height and width of `layer`'s output (None: the head's input, already
    pooled; a layer whose output is already (N, C), e.g. `head_pool`, as it is): the features a
    guard reads, as a tensor of the model's graph.

    Example:
        >>> pooled_output(model, "block4c_add").shape  # doctest: +SKIP
        (None, 80)
    """
    if layer is None:
        return softmax_head(model).input
    output = model.get_layer(layer).output
    if len(output.shape) == 2:
        return output
    if len(output.shape) != 4:
        raise ValueError(f"layer {layer!r} gives {output.shape}, not (N, H, W, C) feature maps")
    return keras.layers.GlobalAveragePooling2D(name=f"ood_pool_{layer}")(output)


def probabilities_function(
    model: keras.Model,
    temperature: float | None = None,
    features: bool = False,
    layer: str | None = None,
) -> tf.types.experimental.GenericFunction:
    """softmax(logits / T) of float32 images already at the model's size, (N, H, W, 3) → (N, 7).

    The body of `serve` after its resize, as its own tf.function with a fixed input signature
    (batch left open): what `skin_tf.serving.litert` converts. A model with patient fields takes
    them as a second argument, (N, width) float32. features=True returns
    (probs, features (N, d)) instead: the same probabilities plus the features the
    out-of-distribution guard reads (`pooled_output(model, layer)`), from the same forward pass.
    Its `features_model` attribute is the Keras model up to the head, the object whose variables
    the LiteRT converter freezes (with the whole classifier as that object, int8 calibration
    fails on an unfrozen variable).

    Example:
        >>> fn = probabilities_function(model, temperature=1.3)  # doctest: +SKIP
        >>> fn(np.zeros((2, 224, 224, 3), np.float32)).shape  # doctest: +SKIP
        TensorShape([2, 7])
    """
    head = softmax_head(model)
    inv_t = _check_temperature(temperature)
    height, width = input_size(model)
    outputs = [head.input, pooled_output(model, layer)] if features else head.input
    body = keras.Model(model.input, outputs)
    logits_of = _logits_function(head)
    spec = tf.TensorSpec([None, height, width, 3], tf.float32, name="images")

    @tf.function(input_signature=_specs(model, spec))
    def probabilities(images, *fields):
        x = model_input(model, images, *fields)
        if not features:
            return tf.nn.softmax(logits_of(body(x, training=False)) * inv_t)
        pooled, guard_features = body(x, training=False)
        probs = tf.nn.softmax(logits_of(pooled) * inv_t)
        return probs, tf.cast(guard_features, tf.float32)  # a tuple: LiteRT keeps its order

    probabilities.features_model = body
    return probabilities


# ---------------------------------------------------------------- the out-of-distribution guard


class GuardGraph(tf.Module):
    """An `OodGuard` inside the SavedModel: the same score, computed in float32 from the same
    constants (stored as variables), and the SavedModel engine's threshold.

    The threshold is a variable because export chooses it from what `serve` itself scores on the
    validation images, after the endpoints exist; until it is set (NaN) nothing is in
    distribution, so a forgotten step shows. A guard with a confidence term adds
    `confidence_weight` x (1 - the largest probability) from the probabilities `serve` returns;
    one with a colour check also needs the images at the model's size (`OodGuard.in_distribution`).

    Example:
        >>> graph = GuardGraph(energy_guard(np.eye(3, 7), np.zeros(7)))  # doctest: +SKIP
        >>> graph.threshold.assign(0.0)  # doctest: +SKIP
        >>> out = graph(tf.zeros((2, 3)), None, tf.ones((2, 8, 8, 3)))  # doctest: +SKIP
        >>> out["in_distribution"].numpy()  # doctest: +SKIP
        array([ True,  True])
    """

    def __init__(self, guard: OodGuard):
        super().__init__(name="ood_guard")
        self.method = guard.method
        self.layer = guard.layer
        self.dim = guard.dim
        self.constants = {
            name: tf.Variable(array, trainable=False, name=name, dtype=tf.float32)
            for name, array in guard.arrays.items()
        }
        self.threshold = tf.Variable(float("nan"), trainable=False, name="threshold")
        self.confidence_weight = float(guard.confidence_weight)
        self.colour_floor = float(guard.colour_floor)

    def score(self, features: tf.Tensor, probs: tf.Tensor | None = None) -> tf.Tensor:
        """(N,) float32 scores of features (N, d) and, for a guard with a confidence term, the
        probabilities (N, C): `OodGuard.score` in TensorFlow."""
        f = tf.cast(features, tf.float32)
        if self.method == "mahalanobis":
            z = tf.matmul(f, self.constants["whiten"])
            squared = tf.reduce_sum(tf.square(z[:, None, :] - self.constants["centres"]), axis=-1)
            score = tf.reduce_min(squared, axis=-1) / float(self.dim)
        else:
            logits = tf.matmul(f, self.constants["kernel"]) + self.constants["bias"]
            score = -tf.reduce_logsumexp(logits, axis=-1)
        if not self.confidence_weight:
            return score
        if probs is None:
            raise ValueError("this guard adds a confidence term: pass the probabilities too")
        top = tf.reduce_max(tf.cast(probs, tf.float32), axis=-1)
        return score + self.confidence_weight * (1.0 - top)

    def __call__(
        self, features: tf.Tensor, probs: tf.Tensor | None, images: tf.Tensor
    ) -> dict[str, tf.Tensor]:
        """ood_score and in_distribution of images (N, h, w, 3) at the model's size, 0-255, from
        their features and probabilities."""
        score = self.score(features, probs)
        accepted = score <= self.threshold
        if self.colour_floor:
            accepted &= mean_saturation(images) >= self.colour_floor
        return {"ood_score": score, "in_distribution": accepted}


def mean_saturation(images: tf.Tensor) -> tf.Tensor:
    """(N,) `skin_tf.serving.guard.mean_saturation` in TensorFlow (float32)."""
    x = tf.cast(images, tf.float32)
    top = tf.reduce_max(x, axis=-1)
    return tf.reduce_mean((top - tf.reduce_min(x, axis=-1)) / tf.maximum(top, 1.0), axis=(1, 2))


# ---------------------------------------------------------------- endpoints


def build_endpoints(
    model: keras.Model,
    resize: str = "squash",
    temperature: float | None = None,
    layer: str | None = None,
    guard: GuardGraph | None = None,
    method: str = "gradcam",
) -> tuple[tf.types.experimental.GenericFunction, tf.types.experimental.GenericFunction]:
    """The `serve` and `explain` tf.functions of a flat softmax classifier (traced on first use).

    The last layer must be a Dense softmax layer: its input and weights give the logits, which
    both the heatmap (tf-keras-vis' ReplaceToLinear convention) and temperature scaling need.
    One functional model with the conv activations and the pre-logit features as outputs over
    the same layers gives activations and prediction in one forward pass. `method` is the
    heatmap `explain` computes (`skin_tf.explain.methods`: a gradient method, optionally on
    other layers, e.g. "gradcam@block5", or "rise", `rise.MASKS` forward passes per image;
    `skin-tf explain-check` chooses it); `layer`, a layer name, overrides a gradient method's
    layers.

    Without a guard `serve` returns the (N, 7) probabilities; with one it returns {"probs",
    "ood_score", "in_distribution"}, and `explain` adds the same two to {"probs", "heatmap"}. The
    guard reads the features the probabilities are computed from: it only adds outputs.

    A model with patient fields gives both endpoints a second argument, `metadata` (N, width)
    float32 (`skin_tf.data.meta_fields.encode_fields`; the blank vector: not given): the heatmap
    is then that of the image with those fields held fixed.
    """
    from skin_tf.explain.gradcam import (
        cam_layers,
        fused_heatmaps,
        heatmap_to_input,
        normalize_heatmaps,
    )
    from skin_tf.explain.methods import ENDPOINT_METHODS, INPUT_METHODS, parse_method
    from skin_tf.explain.rise import rise_masks, rise_saliency

    head = softmax_head(model)
    inv_t = _check_temperature(temperature)
    cam_method, cam_stages = parse_method(method)
    if cam_method not in ENDPOINT_METHODS:
        raise ValueError(
            f"the explain endpoint computes {', '.join(ENDPOINT_METHODS)} in its graph, not "
            f"{method!r}: export with one of them"
        )
    if layer and cam_method in INPUT_METHODS:
        raise ValueError(f"{method!r} reads no layer: export it without a layer ({layer!r})")
    names = [layer] if layer else cam_layers(model, cam_stages)
    convs = [model.get_layer(name) for name in names]
    resize = resize_rule(resize)
    size = input_size(model)
    guard_layer = None if guard is None else guard.layer
    probabilities = probabilities_function(model, temperature, guard is not None, guard_layer)
    cam_outputs = [*(conv.output for conv in convs), head.input]
    if guard is not None:
        cam_outputs.append(pooled_output(model, guard_layer))
    cam_model = keras.Model(model.input, cam_outputs)
    logits_of = _logits_function(head)
    # RISE weighs the masked copies by the model's own softmax, as the checks measured it
    untempered = probabilities_function(model) if cam_method == "rise" else None

    float_batch = _specs(model, tf.TensorSpec([None, None, None, 3], tf.float32, name="images"))

    @tf.function(input_signature=float_batch)
    def serve_float(images, *fields):
        resized = resize_images(images, size, resize)
        out = probabilities(resized, *fields)
        if guard is None:
            return out
        probs, features = out
        return {"probs": probs, **guard(features, probs, resized)}

    @tf.function(input_signature=float_batch)
    def explain_float(images, *fields):
        resized = resize_images(images, size, resize)
        x = model_input(model, resized, *fields)
        with tf.GradientTape() as tape:
            outputs = cam_model(x, training=False)
            outputs = outputs if isinstance(outputs, list | tuple) else [outputs]  # RISE: no conv
            activations, features = outputs[: len(convs)], outputs[len(convs)]
            guard_features = outputs[len(convs) + 1 :]
            tape.watch(activations)
            logits = logits_of(features)
            top_score = tf.gather(logits, tf.argmax(logits, axis=-1), batch_dims=1)
        if cam_method == "rise":  # the same masks and answers as `skin-tf explain-check`'s
            classes = tf.argmax(logits, axis=-1)
            saliency = rise_saliency(untempered, resized, classes, rise_masks(hw=size), *fields)
            cam = normalize_heatmaps(
                heatmap_to_input(saliency, tf.shape(images)[1:3], size, resize)
            )
        else:
            grads = tape.gradient(top_score, activations)
            cam = fused_heatmaps(
                cam_method, activations, grads, tf.shape(images)[1:3], size, resize
            )
        out = {"probs": tf.nn.softmax(logits * inv_t), "heatmap": cam}
        return out if guard is None else {**out, **guard(guard_features[0], out["probs"], resized)}

    # Public endpoints: one trace per input dtype, each a thin cast around the single float32
    # graph, so the network is traced and stored once per endpoint rather than once per dtype.
    @tf.function
    def serve(images, *fields):
        return serve_float(tf.cast(images, tf.float32), *fields)

    @tf.function
    def explain(images, *fields):
        return explain_float(tf.cast(images, tf.float32), *fields)

    return serve, explain
