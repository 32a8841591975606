"""How the patient fields (`skin_tf.data.meta_fields`) join the image features in a classifier.

Two fusions of the pooled image features f (one value per backbone channel) and the encoded
fields m, both ending in the classifier's own dropout → softmax head:

- "concat": m through a small MLP (two Dense+ReLU layers of META_UNITS), concatenated with f
  (Gessert et al. 2020, "Skin lesion classification using ensembles of multi-resolution
  EfficientNets with meta data").
- "metablock": m scales and shifts f through a gate, σ(tanh(f ⊙ BN(W₁m)) + BN(W₂m)), so the
  fields decide which image features count (Pacheco & Krohling 2021, "An attention-based
  mechanism to combine images and metadata in deep learning models applied to skin cancer
  classification", MetaBlock), applied here to the pooled features.

Every layer added here is named with META_PREFIX: it is head, trained in every phase.
"""

from __future__ import annotations

import keras

FUSIONS = ("concat", "metablock")
META_PREFIX = "meta_"
META_INPUT = "metadata"  # the input's name, and the key of the pipeline's batches
META_UNITS = 64


def fuse_metadata(features, fields, fusion: str = "concat"):
    """The fused features of pooled image `features` and encoded `fields` (Keras tensors).

    >>> image = keras.Input((1280,))
    >>> fused = fuse_metadata(image, keras.Input((20,), name=META_INPUT))
    >>> tuple(fused.shape)
    (None, 1344)
    """
    if fusion not in FUSIONS:
        raise ValueError(f"fusion={fusion!r} is not one of {', '.join(map(repr, FUSIONS))}.")
    if fusion == "concat":
        encoded = keras.layers.Dense(META_UNITS, activation="relu", name="meta_dense_1")(fields)
        encoded = keras.layers.Dense(META_UNITS, activation="relu", name="meta_dense_2")(encoded)
        return keras.layers.Concatenate(name="meta_concat")([features, encoded])
    channels = int(features.shape[-1])
    scale = keras.layers.Dense(channels, name="meta_scale")(fields)
    scale = keras.layers.BatchNormalization(name="meta_scale_bn")(scale)
    shift = keras.layers.Dense(channels, name="meta_shift")(fields)
    shift = keras.layers.BatchNormalization(name="meta_shift_bn")(shift)
    gated = keras.layers.Multiply(name="meta_gate")([features, scale])
    gated = keras.layers.Activation("tanh", name="meta_tanh")(gated)
    gated = keras.layers.Add(name="meta_shift_add")([gated, shift])
    return keras.layers.Activation("sigmoid", name="meta_sigmoid")(gated)


def image_input(model: keras.Model) -> keras.KerasTensor:
    """The model's image input: its only input, or "image" beside the patient fields."""
    return model.input["image"] if isinstance(model.input, dict) else model.input


def metadata_shape(model: keras.Model) -> tuple[int, str | None]:
    """(width of the model's metadata input, its fusion), (0, None) for an image-only model.

    >>> from skin_tf.models.classifier import build_classifier
    >>> metadata_shape(build_classifier("efficientnet_lite0", 32, weights=None))
    (0, None)
    """
    inputs = {tensor.name: tensor for tensor in model.inputs}
    if META_INPUT not in inputs:
        return 0, None
    names = {layer.name for layer in model.layers}
    fusion = "metablock" if "meta_gate" in names else "concat"
    return int(inputs[META_INPUT].shape[-1]), fusion
