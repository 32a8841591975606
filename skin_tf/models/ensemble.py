"""Several trained classifiers as one: a flat Keras model whose single Dense softmax head pools the
members' calibrated predictions, so it exports, quantises, explains and guards like any classifier.

The pooling is the renormalised geometric mean of the members' temperature-scaled probabilities:

    p(c) ∝ Π_i softmax(z_i / T_i)(c) ^ (1/n)  =  softmax(Σ_i z_i / (n · T_i))(c)

(each member's log-normaliser is the same for every class, so it cancels), which is one Dense
layer over the members' concatenated penultimate features: kernel [W_1 / (n·T_1); …; W_n /
(n·T_n)], bias Σ_i b_i / (n·T_i). Every member layer keeps its weights under a prefixed name
(`m0_stem_conv`, `m1_top_conv`, …), so Grad-CAM and the out-of-distribution guard reach them.

    >>> combined = combine_classifiers([model_a, model_b], [1.3, 0.9])  # doctest: +SKIP
    >>> combined.get_layer("m1_top_conv")  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Sequence

import keras
import numpy as np

from skin_tf.models.classifier import HEAD_LAYER_NAMES
from skin_tf.models.meta_fusion import metadata_shape

MEMBER_PREFIX = "m{index}_"
ENSEMBLE_NAME = "ensemble"


def combine_classifiers(
    members: Sequence[keras.Model], temperatures: Sequence[float | None] | None = None
) -> keras.Model:
    """One flat classifier pooling `members` (built by `build_classifier`, same input shape).

    temperatures: each member's fitted temperature (None: 1). The result's probabilities are
    the renormalised geometric mean of the members' temperature-scaled probabilities.

    Example:
        >>> from skin_tf.models.classifier import build_classifier
        >>> a = build_classifier("efficientnet_lite0", 32, weights=None)
        >>> b = build_classifier("efficientnet_lite0", 32, weights=None)
        >>> combine_classifiers([a, b]).output_shape
        (None, 7)
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    temperatures = list(temperatures) if temperatures is not None else [None] * len(members)
    if len(temperatures) != len(members):
        raise ValueError(f"{len(temperatures)} temperatures for {len(members)} members")
    if any(metadata_shape(m)[0] for m in members):
        raise ValueError(
            "ensemble members must be image-only: combining models that take patient fields "
            "(metadata) is not built; ensemble image-only runs"
        )
    shapes = {tuple(m.input_shape[1:]) for m in members}
    if len(shapes) != 1 or None in next(iter(shapes)):
        raise ValueError(
            f"ensemble members must share one fixed input shape, got {sorted(map(str, shapes))}: "
            "combine runs trained at the same image_size"
        )
    inputs = keras.Input(next(iter(shapes)), dtype="float32", name="image")
    features, kernels, biases = [], [], []
    for index, (member, temperature) in enumerate(zip(members, temperatures, strict=True)):
        head = member.get_layer("predictions")
        if not temperature or not temperature > 0:
            temperature = 1.0
        scale = 1.0 / (len(members) * float(temperature))
        kernel, bias = head.get_weights()
        kernels.append(kernel * scale)
        biases.append(bias * scale)
        features.append(_member_features(member, inputs, MEMBER_PREFIX.format(index=index)))
    pooled = keras.layers.Concatenate(name="head_pool")(features)
    pooled = keras.layers.Dropout(0.0, name="head_dropout")(pooled)
    head = keras.layers.Dense(
        len(biases[0]), activation="softmax", dtype="float32", name="predictions"
    )
    outputs = head(pooled)
    head.set_weights([np.concatenate(kernels), np.sum(biases, axis=0)])
    return keras.Model(inputs, outputs, name=ENSEMBLE_NAME)


def member_count(model: keras.Model) -> int:
    """How many members a combined model has (0 for a single classifier).

    >>> member_count(build_classifier("efficientnet_lite0", 32, weights=None))  # doctest: +SKIP
    0
    """
    prefixes = {layer.name.split("_", 1)[0] for layer in model.layers}
    return sum(1 for p in prefixes if p[:1] == "m" and p[1:].isdigit())


def _member_features(member: keras.Model, inputs: keras.KerasTensor, prefix: str):
    """The member's backbone and pooling, rebuilt on `inputs` under prefixed layer names with
    the member's weights: the pooled features its head reads (dropout is off at inference)."""
    pooled = member.get_layer("head_pool").output
    backbone = keras.Model(member.inputs[0], pooled)

    def renamed(layer: keras.layers.Layer) -> keras.layers.Layer:
        config = layer.get_config()
        config["name"] = prefix + layer.name
        return layer.__class__.from_config(config)

    clone = keras.models.clone_model(backbone, input_tensors=inputs, clone_function=renamed)
    for original in backbone.layers:
        if original.weights and original.name not in HEAD_LAYER_NAMES:
            clone.get_layer(prefix + original.name).set_weights(original.get_weights())
    return clone.output
