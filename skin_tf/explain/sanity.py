"""Does a heatmap depend on the model? The model-parameter randomisation test (Adebayo et al.
2018, "Sanity checks for saliency maps"), cascading from the top of the network down.

A copy of the model has its layers re-initialised step by step, from the head down: `head`
(the Dense softmax layer), `top` (the last 1×1 convolution and its batch norm, with the head
randomised too), then whole stages, `block7`, `block6`, … (each adding to the ones above). At
every step the maps are computed again for the same images and classes and compared with the
trained model's maps by Spearman rank correlation. A map that barely changes (a high
correlation) shows the input, not what the model learned.

Re-initialising uses each weight's own initializer (`kernel_initializer`,
`depthwise_initializer`, `gamma_initializer`, …, seeded): convolutions and the head get fresh
random weights, batch norms their identity (gamma 1, beta 0, mean 0, variance 1), since their
statistics were learned from the data too. An ensemble's members (`m0_…`) are randomised
stage by stage together.

Example:
    >>> for step, random_model in cascade(model, depth=3):  # doctest: +SKIP
    ...     print(step, spearman_rows(original, gradcam_heatmaps(random_model, x, classes)))
"""

from __future__ import annotations

import re
from collections.abc import Iterator, Sequence

import keras
import numpy as np
from scipy.stats import rankdata

TOP_STEPS = ("head", "top")  # then the stages, from the last one down
_MEMBER = re.compile(r"^m\d+_")


def cascade_steps(model: keras.Model, depth: int = 5) -> list[tuple[str, list[str]]]:
    """The first `depth` steps of the cascade: (step name, the layers it re-initialises).

    Example:
        >>> lite0 = build_classifier("efficientnet_lite0", 96)  # doctest: +SKIP
        >>> [step for step, _ in cascade_steps(lite0, 4)]  # doctest: +SKIP
        ['head', 'top', 'block7', 'block6']
    """
    if depth < 1:
        raise ValueError(f"depth must be at least 1, got {depth}")
    weighted = [layer for layer in model.layers if layer.weights]
    base = {layer.name: _MEMBER.sub("", layer.name) for layer in weighted}
    stages = sorted(
        {int(m.group(1)) for name in base.values() if (m := re.match(r"block(\d+)", name))},
        reverse=True,
    )
    head = model.layers[-1]
    steps = [("head", [head.name]), ("top", [n for n, b in base.items() if b.startswith("top_")])]
    steps += [
        (f"block{s}", [n for n, b in base.items() if re.match(rf"block{s}[a-z]_", b)])
        for s in stages
    ]
    if not steps[1][1] or not stages:
        raise ValueError(
            f"model {model.name!r} has no EfficientNet layer names (top_conv, block1…): the "
            "randomisation cascade follows them; build the model with "
            "skin_tf.models.classifier.build_classifier"
        )
    return steps[:depth]


def cascade(model: keras.Model, depth: int = 5, seed: int = 0) -> Iterator[tuple[str, keras.Model]]:
    """A copy of `model`, re-initialised one more step at each iteration: (step name, copy).

    The same copy is yielded each time, changed in place: use it before the next step.
    """
    copy = keras.models.clone_model(model)
    copy.set_weights(model.get_weights())
    for index, (step, layers) in enumerate(cascade_steps(model, depth)):
        for offset, name in enumerate(layers):
            reinitialise(copy.get_layer(name), seed=seed + 1000 * index + offset)
        yield step, copy


def trunk_split(model: keras.Model, depth: int = 5) -> tuple[keras.Model, keras.Model] | None:
    """(lower, upper): `model` cut at the output of the stage below the deepest one the
    cascade's first `depth` steps re-initialise (every member's, in an ensemble), so `lower`
    is the same for every step and only `upper` changes. `upper` takes the cut's feature maps,
    then a model's patient fields. Both share `model`'s layers (and so its re-initialisation).
    None when the cascade reaches the first stage (nothing below to share).

    Example:
        >>> lower, upper = trunk_split(lite0, depth=4)  # doctest: +SKIP
        >>> lower.layers[-1].name  # doctest: +SKIP
        'block5c_add'
    """
    from skin_tf.explain.gradcam import cam_layers
    from skin_tf.models.meta_fusion import image_input

    all_steps = [step for step, _ in cascade_steps(model, depth=10**6)]
    stages = [int(step[5:]) for step in all_steps[:depth] if step.startswith("block")]
    below = (min(stages) if stages else int(all_steps[2][5:]) + 1) - 1
    if below < 1:
        return None
    cuts = [model.get_layer(name).output for name in cam_layers(model, [f"block{below}"])]
    image = image_input(model)
    fields = [tensor for tensor in model.inputs if tensor is not image]
    lower = keras.Model(image, cuts if len(cuts) > 1 else cuts[0])
    inputs = [*cuts, *fields]
    upper = keras.Model(inputs if len(inputs) > 1 else inputs[0], model.output)
    return lower, upper


def reinitialise(layer: keras.layers.Layer, seed: int = 0) -> None:
    """Give every weight of `layer` a fresh value from its own initializer (seeded).

    Example:
        >>> dense = keras.layers.Dense(3); dense.build((None, 2))
        >>> reinitialise(dense, seed=1); dense.bias.numpy().tolist()
        [0.0, 0.0, 0.0]
    """
    for k, variable in enumerate(layer.weights):
        short = variable.name.split("/")[-1]
        initializer = getattr(layer, f"{short}_initializer", None)
        if initializer is None and short == "kernel":  # DepthwiseConv2D names it "kernel"
            initializer = getattr(layer, "depthwise_initializer", None)
        if initializer is None:
            raise ValueError(
                f"layer {layer.name!r} has no initializer for its weight {short!r}: the "
                "randomisation test cannot re-initialise it"
            )
        config = initializer.get_config()
        if "seed" in config:  # random initializers: a fixed seed per weight
            initializer = type(initializer).from_config({**config, "seed": seed * 16 + k})
        variable.assign(keras.ops.convert_to_numpy(initializer(variable.shape, variable.dtype)))


def spearman_rows(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Spearman rank correlation of each pair of maps (N, h, w), one per image; 0 where either
    map is constant (a constant map ranks nothing, so it says nothing about the other).

    Example:
        >>> x = np.array([[[0.1, 0.5], [0.2, 0.9]]])
        >>> spearman_rows(x, x ** 2).tolist(), spearman_rows(x, -x).tolist()
        ([1.0], [-1.0])
    """
    a = rankdata(np.asarray(a).reshape(len(a), -1), axis=1)
    b = rankdata(np.asarray(b).reshape(len(b), -1), axis=1)
    a, b = a - a.mean(axis=1, keepdims=True), b - b.mean(axis=1, keepdims=True)
    norms = np.sqrt((a * a).sum(axis=1) * (b * b).sum(axis=1))
    with np.errstate(invalid="ignore", divide="ignore"):
        rho = (a * b).sum(axis=1) / norms
    return np.where(norms > 0, rho, 0.0)


def median_by_step(rho: Sequence[tuple[str, np.ndarray]]) -> dict[str, float]:
    """{step: median correlation} of a cascade's per-image correlations.

    Example:
        >>> median_by_step([("head", np.array([0.1, 0.5, 0.9]))])
        {'head': 0.5}
    """
    return {step: float(np.median(values)) for step, values in rho}
