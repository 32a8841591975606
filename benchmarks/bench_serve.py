"""Serving speed, every figure measured in this one run on this one machine: the SavedModel, the
LiteRT float and int8 models (and an eager PyTorch EfficientNet-B0 forward when torch is there).

    .venv/bin/python benchmarks/bench_serve.py --data-root ../shared/data/ham10000 [--json out.json]
    .venv/bin/python benchmarks/bench_serve.py --data-root ../shared/data/ham10000 --quick

Builds EfficientNet-B0 at --size (no pretrained weights: latency does not depend on weight
values), exports it with `skin_tf.serving.archive.export_model` (SavedModel + model.tflite +
model_int8.tflite, the int8 model calibrated on random images), then measures:

1. One image per call (after warm-up calls), p50/p95 wall time and CPU time per call:
   the SavedModel's `serve` (uint8 at the model size and a 600x450 image resized inside),
   `explain`, the LiteRT float and int8 models through `ServedModel.predict` (the resize of a
   600x450 image included), Keras `model.predict` and an eager `model(x)`, and, when `torch` and
   `torchvision` are installed (`pip install -e '.[bench]'`), an eager PyTorch forward of
   EfficientNet-B0 on a 1x3xSxS tensor under `torch.no_grad()` with torch's default threads (one
   per core), timed in its own process so TensorFlow's thread pools do not touch it: the
   baseline every "× PyTorch" ratio divides by. Without torch that row is skipped and says so; no
   ratio is then printed against a figure from elsewhere. The out-of-distribution guard's cost:
   a second export of the same model with a guard (Mahalanobis on the fourth stage, where the
   demo run's export put it), and each engine's `ServedModel.assess` on one image with the guard
   and, in the row before it, without; the ratio of their p50s is printed. The patient
   fields' cost (issue 31): a third export, the same backbone with age, sex and site beside it
   (concatenation fusion) and the same guard, each engine's `ServedModel.assess` on one image
   with its fields given as a client gives them (a dict, encoded per call), against the guarded
   image-only export, called in turn; the ratio of their p50s is printed.
2. A folder of --folder-images HAM10000 files (the first ones by name, linked into a temporary
   folder; --upscale: 600x450 JPEG copies, the size of the originals) through
   `skin-tf predict FOLDER --json --engine E` in a fresh process per engine: wall time end to end
   (start-up, TensorFlow import, loading, reading and scoring every file) and images/s; a
   one-image run of the same command gives the start-up cost.
3. Cold start in a fresh process: import TensorFlow, `load_served` (the export's default engine),
   first predict, first explain (the page pays it once per process).

The load average is printed before and after, since other work on the machine skews the figures.
--quick (64 px, 10 calls, 40 images) only shows that the script runs; its figures mean nothing.

`--ensemble MODEL… [--ensemble-size S]` measures an ensemble export instead (issue 30): the
members built with their ImageNet weights and pooled by
`skin_tf.models.ensemble.combine_classifiers` as `skin-tf ensemble` pools trained runs (the
same layers; latency does not depend on the weights),
exported with both LiteRT models, and each engine's one-image `predict` timed in turn with the
same export of its first member alone, beside the PyTorch B0 at --size in its own process:

    .venv/bin/python benchmarks/bench_serve.py --ensemble efficientnet_lite0 efficientnet_lite0 \\
        efficientnet_lite0 efficientnet_lite1 --ensemble-size 128    # ensemble_128px-cpu's

`--explain-methods METHOD… [--explain-model M --explain-size S --explain-calls N]` measures
what a heatmap costs the page instead (issue 33): one SavedModel per method (EfficientNet-Lite0
at 128 px by default, the cpu runs' shape, ImageNet weights), and `ServedModel.explain` on one
200×150 image timed in turn across them, N calls each (RISE is `rise.MASKS` forward passes a
call, so N is small and the table gives p50 and the slowest call, not a p95):

    .venv/bin/python benchmarks/bench_serve.py --explain-methods gradcam rise
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

COLD_START_SCRIPT = """
import json, sys, time
start = time.perf_counter()
import numpy as np
import tensorflow as tf
imported = time.perf_counter()
from skin_tf.serving.served import load_served
served = load_served(sys.argv[1])
loaded = time.perf_counter()
image = np.zeros((int(sys.argv[2]), int(sys.argv[2]), 3), np.uint8)
served.predict(image)
first = time.perf_counter()
served.explain(image)
first_explain = time.perf_counter()
print(json.dumps({"engine": served.engine, "import_s": imported - start,
                  "load_s": loaded - imported, "first_predict_s": first - loaded,
                  "first_explain_s": first_explain - first}))
"""
PREDICT_SCRIPT = "import sys; from skin_tf.cli import main; sys.exit(main())"
ENGINES = ("savedmodel", "tflite", "tflite-int8")
LATENCY_LABELS = {
    "serve": "SavedModel `serve`, uint8 {s}²",
    "serve_600x450": "SavedModel `serve`, uint8 600×450 (resized inside)",
    "tflite": "LiteRT float32 (`--engine tflite`), {s}²",
    "tflite_600x450": "LiteRT float32, 600×450 (resized before the call)",
    "tflite_int8": "LiteRT int8 (`--engine tflite-int8`), {s}²",
    "serve_guard": "SavedModel `serve` with the OOD guard, uint8 {s}²",
    "tflite_guard": "LiteRT float32 with the OOD guard (features + numpy score), {s}²",
    "tflite_int8_guard": "LiteRT int8 with the OOD guard, {s}²",
    "serve_fields": "SavedModel `serve` with the guard and patient fields (a dict), uint8 {s}²",
    "tflite_fields": "LiteRT float32 with the guard and patient fields, {s}²",
    "tflite_int8_fields": "LiteRT int8 with the guard and patient fields, {s}²",
    "explain": "SavedModel `explain` (probs + Grad-CAM), {s}²",
    "keras_predict": "Keras `model.predict(x)`",
    "keras_call": "Keras `model(x, training=False)` (eager)",
    "torch_eager": "PyTorch eager forward, EfficientNet-B0, {s}² (own process)",
}


def time_calls(fn: Callable[[], object], calls: int, warmup: int = 5) -> dict[str, float]:
    """Wall-clock p50/p95/mean (ms) of `calls` timed calls after `warmup` untimed ones, and the
    process CPU time per call (all threads), which other jobs on the machine disturb less."""
    for _ in range(warmup):
        fn()
    times = []
    cpu_start = time.process_time()
    for _ in range(calls):
        start = time.perf_counter()
        fn()
        times.append((time.perf_counter() - start) * 1000.0)
    cpu_ms = (time.process_time() - cpu_start) * 1000.0 / calls
    values = np.array(times)
    return {
        "p50_ms": float(np.percentile(values, 50)),
        "p95_ms": float(np.percentile(values, 95)),
        "mean_ms": float(values.mean()),
        "cpu_ms_per_call": cpu_ms,
        "calls": calls,
    }


def time_alternating(
    fns: dict[str, Callable[[], object]], calls: int, warmup: int = 5
) -> dict[str, dict[str, float]]:
    """`time_calls` for several functions called in turn (A, B, A, B, …), so that load which
    comes and goes on a shared machine falls on each of them alike: what a with/without ratio
    needs."""
    for _ in range(warmup):
        for fn in fns.values():
            fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    cpu = dict.fromkeys(fns, 0.0)
    for _ in range(calls):
        for name, fn in fns.items():
            cpu_start, start = time.process_time(), time.perf_counter()
            fn()
            times[name].append((time.perf_counter() - start) * 1000.0)
            cpu[name] += time.process_time() - cpu_start
    return {
        name: {
            "p50_ms": float(np.percentile(values, 50)),
            "p95_ms": float(np.percentile(values, 95)),
            "mean_ms": float(np.mean(values)),
            "max_ms": float(np.max(values)),
            "cpu_ms_per_call": cpu[name] * 1000.0 / calls,
            "calls": calls,
        }
        for name, values in times.items()
    }


def torch_forward(size: int) -> tuple[Callable[[], object] | None, str]:
    """An eager PyTorch EfficientNet-B0 forward on one image, or (None, why it is skipped).

    torchvision's model when torchvision loads; otherwise (its PyPI wheel is built for CUDA and
    its C extension fails on a CPU-only torch) the same network written out below in plain torch.
    """
    try:
        import torch
    except ImportError:
        return None, "skipped: torch is not installed; pip install -e '.[bench]'"
    try:
        import torchvision

        model = torchvision.models.efficientnet_b0(weights=None, num_classes=7).eval()
        note = f"torchvision {torchvision.__version__} efficientnet_b0"
    except (ImportError, RuntimeError, OSError) as err:
        from torch_efficientnet import plain_torch_efficientnet_b0  # beside this script

        model = plain_torch_efficientnet_b0(7).eval()
        note = (
            "plain-torch EfficientNet-B0 of benchmarks/torch_efficientnet.py (torchvision "
            f"unusable: {err})"
        )
    x = torch.rand(1, 3, size, size)

    def forward():
        with torch.no_grad():
            return model(x).softmax(dim=1).numpy()

    params = sum(p.numel() for p in model.parameters())
    return forward, (
        f"torch {torch.__version__}, {note}, {params / 1e6:.2f} M parameters, "
        f"{torch.get_num_threads()} threads"
    )


def torch_latency(size: int, calls: int) -> tuple[dict | None, str]:
    """The PyTorch row, timed in a fresh process (`--torch-only`); (None, why) without torch."""
    out = subprocess.run(
        [sys.executable, __file__, "--torch-only", "--size", str(size), "--calls", str(calls)],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(out.stdout.strip().splitlines()[-1])
    return result["latency"], result["note"]


def cold_start(model_dir: Path, size: int) -> dict[str, float]:
    """Import + load + first calls in a fresh interpreter (what the Streamlit page pays once)."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    out = subprocess.run(
        [sys.executable, "-c", COLD_START_SCRIPT, str(model_dir), str(size)],
        capture_output=True,
        text=True,
        env=env,
        check=True,
    )
    return json.loads(out.stdout.strip().splitlines()[-1])


def link_folder(data_root: Path, count: int, folder: Path, upscale: bool = False) -> int:
    """The first `count` HAM10000 images (by file name) in `folder`: symlinks, or with
    upscale=True 600x450 JPEG copies (quality 95), the size of the originals; returns count."""
    from PIL import Image

    from skin_tf.data.ham10000 import read_metadata

    paths = sorted(read_metadata(data_root)["path"], key=lambda p: Path(p).name)[:count]
    folder.mkdir(parents=True)
    for path in paths:
        target = folder / Path(path).name
        if upscale:
            image = Image.open(path).convert("RGB").resize((600, 450), Image.Resampling.BICUBIC)
            image.save(target.with_suffix(".jpg"), "JPEG", quality=95)
        else:
            target.symlink_to(path)
    return len(paths)


def predict_wall(model_dir: Path, target: Path, engine: str, expected: int) -> float:
    """Seconds for `skin-tf predict target --json --engine engine` in a fresh process."""
    env = {**os.environ, "TF_CPP_MIN_LOG_LEVEL": "2"}
    command = [sys.executable, "-c", PREDICT_SCRIPT, "predict", str(model_dir), str(target)]
    start = time.perf_counter()
    out = subprocess.run(
        [*command, "--json", "--engine", engine], capture_output=True, text=True, env=env
    )
    wall = time.perf_counter() - start
    lines = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
    if out.returncode != 0 or len(lines) != expected or any(r["error"] for r in lines):
        raise RuntimeError(f"skin-tf predict --engine {engine} failed: {out.stderr[-2000:]}")
    return wall


def folder_rows(
    model_dir: Path, data_root: Path, count: int, tmp: Path, upscale: bool
) -> dict[str, dict]:
    folder = tmp / "folder"
    n = link_folder(data_root, count, folder, upscale)
    one = next(folder.iterdir())
    rows = {}
    for engine in ENGINES:
        startup = predict_wall(model_dir, one, engine, 1)
        wall = predict_wall(model_dir, folder, engine, n)
        rows[engine] = {
            "images": n,
            "wall_s": wall,
            "images_per_s": n / wall,
            "one_image_wall_s": startup,
            "images_per_s_after_startup": (n - 1) / (wall - startup) if wall > startup else None,
        }
        print(f"  predict --engine {engine}: {n} images in {wall:.1f} s", flush=True)
    return rows


def run(
    size: int,
    calls: int,
    data_root: Path | None,
    folder_images: int,
    calibration: int,
    upscale: bool = False,
    torch: bool = True,
) -> dict[str, object]:
    import keras
    import tensorflow as tf

    from skin_tf.data.meta_fields import META_FIELDS, blank_vector
    from skin_tf.models.classifier import build_classifier
    from skin_tf.serving.archive import export_model
    from skin_tf.serving.engines import CheckImages
    from skin_tf.serving.served import load_served

    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_b0", size, weights=None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    full_size = rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)
    batch = image[None].astype(np.float32)
    calibration_images = rng.integers(0, 256, (calibration, size, size, 3), dtype=np.uint8)
    torch_row, torch_note = None, "skipped: --no-torch"
    if torch:
        print("timing the PyTorch baseline in its own process…", flush=True)
        torch_row, torch_note = torch_latency(size, calls)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model_dir = export_model(model, Path(tmp) / "b0", calibration=calibration_images)
        export_s = time.perf_counter() - start
        metadata = json.loads((model_dir / "metadata.json").read_text())["engines"]
        served = load_served(model_dir, engine="savedmodel")
        tflite, int8 = served.using("tflite"), served.using("tflite-int8")
        guarded = load_served(
            export_model(model, Path(tmp) / "b0_guard", calibration=calibration_images,
                         guard=bench_guard(model, rng.integers(0, 256, (32, size, size, 3)))),
            engine="savedmodel",
        )  # fmt: skip
        guarded_tflite, guarded_int8 = guarded.using("tflite"), guarded.using("tflite-int8")
        fields_model = build_classifier("efficientnet_b0", size, weights=None, metadata_width=20)
        fields_calibration = CheckImages(calibration_images, None, "random", np.tile(
            blank_vector(META_FIELDS), (calibration, 1)))  # fmt: skip
        fields_guard = bench_guard(fields_model, rng.integers(0, 256, (32, size, size, 3)))
        with_fields = load_served(
            export_model(fields_model, Path(tmp) / "b0_fields", calibration=fields_calibration,
                         fields=META_FIELDS, guard=fields_guard),
            engine="savedmodel",
        )  # fmt: skip
        patient = [{"age": 55, "sex": "male", "localization": "back"}]
        print("timing single images…", flush=True)
        # The guard's cost: `assess` (probabilities, ood_score, in_distribution) on the export
        # with the guard and on the one without, called in turn.
        pairs = {
            "serve": (served, guarded),
            "tflite": (tflite, guarded_tflite),
            "tflite_int8": (int8, guarded_int8),
        }
        latency = {}
        for name, (without, with_guard) in pairs.items():
            latency.update(time_alternating({
                f"{name}_assess": lambda s=without: s.assess([image]),
                f"{name}_guard": lambda s=with_guard: s.assess([image]),
            }, calls))  # fmt: skip
        # The fields' cost: the guarded image-only export against the guarded one with fields.
        for name, engine in (("serve", "savedmodel"), ("tflite", "tflite"),
                             ("tflite_int8", "tflite-int8")):  # fmt: skip
            fields_engine = with_fields.using(engine)
            latency.update(time_alternating({
                f"{name}_guard_again": lambda s=pairs[name][1]: s.assess([image]),
                f"{name}_fields": lambda s=fields_engine: s.assess([image], patient),
            }, calls))  # fmt: skip
        calls_of = {
            "serve": lambda: served.predict(image),
            "serve_600x450": lambda: served.predict(full_size),
            "tflite": lambda: tflite.predict(image),
            "tflite_600x450": lambda: tflite.predict(full_size),
            "tflite_int8": lambda: int8.predict(image),
            "explain": lambda: served.explain(image),
            "keras_predict": lambda: model.predict(batch, verbose=0),
            "keras_call": lambda: model(batch, training=False).numpy(),
        }
        latency.update({name: time_calls(fn, calls) for name, fn in calls_of.items()})
        if torch_row is not None:
            latency["torch_eager"] = torch_row
        folder = None
        if data_root is not None:
            print("timing skin-tf predict over a folder…", flush=True)
            folder = folder_rows(model_dir, data_root, folder_images, Path(tmp), upscale)
        cold = cold_start(model_dir, size)
    return {
        "model": "efficientnet_b0 (weights=None)",
        "image_size": size,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "torch": torch_note,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "export_s": export_s,
        "file_bytes": {e: metadata[e]["bytes"] for e in ("tflite", "tflite-int8")},
        "cold_start": cold,
        "latency": latency,
        "folder": folder,
        "folder_images": "600x450 JPEG copies" if upscale else "HAM10000 200x150 JPEGs",
    }


def ensemble_run(
    models: list[str], ensemble_size: int, size: int, calls: int, calibration: int, torch: bool
) -> dict[str, object]:
    """One-image `predict` p50 of an ensemble export and of its first member exported alone,
    each engine called in turn, and the PyTorch B0 row (see the module docstring)."""
    import keras

    from skin_tf.models.classifier import build_classifier
    from skin_tf.models.ensemble import combine_classifiers
    from skin_tf.serving.archive import export_model
    from skin_tf.serving.served import load_served

    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (ensemble_size, ensemble_size, 3), dtype=np.uint8)
    shape = (calibration, ensemble_size, ensemble_size, 3)
    calibration_images = rng.integers(0, 256, shape, dtype=np.uint8)
    torch_row, torch_note = None, "skipped: --no-torch"
    if torch:
        print("timing the PyTorch baseline in its own process…", flush=True)
        torch_row, torch_note = torch_latency(size, calls)
    members = [build_classifier(name, ensemble_size, weights="imagenet") for name in models]
    ensemble = combine_classifiers(members)
    latency, file_bytes = {}, {}
    with tempfile.TemporaryDirectory() as tmp:
        exports = {}
        for name, model in (("ensemble", ensemble), ("member", members[0])):
            folder = export_model(model, Path(tmp) / name, calibration=calibration_images)
            engines = json.loads((folder / "metadata.json").read_text())["engines"]
            file_bytes[name] = {e: engines[e]["bytes"] for e in ("tflite", "tflite-int8")}
            exports[name] = load_served(folder, engine="savedmodel")
        print("timing single images…", flush=True)
        for engine, key in (("savedmodel", "serve"), ("tflite", "tflite"),
                            ("tflite-int8", "tflite_int8")):  # fmt: skip
            using = {name: served.using(engine) for name, served in exports.items()}
            latency.update(time_alternating({
                f"{name}_{key}": lambda s=served: s.predict(image) for name, served in using.items()
            }, calls))  # fmt: skip
    if torch_row is not None:
        latency["torch_eager"] = torch_row
    return {
        "ensemble": list(models),
        "ensemble_size": ensemble_size,
        "image_size": size,
        "torch": torch_note,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "file_bytes": file_bytes,
        "latency": latency,
    }


def ensemble_table(result: dict) -> str:
    """The ensemble's rows: p50, and its ratios to its first member and to PyTorch's B0."""
    latency, side = result["latency"], result["ensemble_size"]
    torch_p50 = latency.get("torch_eager", {}).get("p50_ms")
    members = ", ".join(result["ensemble"])
    rows = [
        f"Ensemble of {len(result['ensemble'])} ({members}) at {side}², one image per call "
        "(`ServedModel.predict`; each engine timed in turn with the first member exported "
        "alone):",
        "",
        "| engine | ensemble p50 ms | p95 ms | member alone p50 ms | ensemble / member | "
        f"ensemble / PyTorch B0 {result['image_size']}² p50 |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in (("serve", "SavedModel `serve`"), ("tflite", "LiteRT float32"),
                       ("tflite_int8", "LiteRT int8")):  # fmt: skip
        ours, alone = latency[f"ensemble_{key}"], latency[f"member_{key}"]
        versus = f"{ours['p50_ms'] / torch_p50:.2f}×" if torch_p50 else "—"
        rows.append(
            f"| {label} | {ours['p50_ms']:.1f} | {ours['p95_ms']:.1f} | {alone['p50_ms']:.1f} | "
            f"{ours['p50_ms'] / alone['p50_ms']:.2f}× | {versus} |"
        )
    if torch_p50:
        row = latency["torch_eager"]
        rows.append(
            f"| PyTorch eager B0, {result['image_size']}² (own process) | {row['p50_ms']:.1f} | "
            f"{row['p95_ms']:.1f} | — | — | 1.00× |"
        )
    sizes = result["file_bytes"]["ensemble"]
    rows += [
        f"\nPyTorch baseline: {result['torch']}.",
        f"\nEnsemble files: model.tflite {sizes['tflite'] / 1e6:.1f} MB, model_int8.tflite "
        f"{sizes['tflite-int8'] / 1e6:.1f} MB.",
        f"Load average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores.",
    ]
    return "\n".join(rows)


def explain_run(methods: list[str], model_name: str, side: int, calls: int) -> dict[str, object]:
    """`ServedModel.explain` of one 200×150 image, per heatmap method, called in turn."""
    import keras

    from skin_tf.models.classifier import build_classifier
    from skin_tf.serving.archive import export_model
    from skin_tf.serving.served import load_served

    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    image = np.random.default_rng(0).integers(0, 256, (150, 200, 3), dtype=np.uint8)
    model = build_classifier(model_name, side, weights="imagenet")
    with tempfile.TemporaryDirectory() as tmp:
        served = {
            method: load_served(export_model(
                model, Path(tmp) / method.replace("@", "_").replace("+", "-"),
                explain_method=method, litert_models=False,
            ))
            for method in methods
        }  # fmt: skip
        print("timing explain…", flush=True)
        latency = time_alternating(
            {method: lambda s=s: s.explain(image) for method, s in served.items()}, calls, warmup=2
        )
    return {
        "model": f"{model_name} at {side}² (ImageNet weights)",
        "calls": calls,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "latency": latency,
    }


def explain_table(result: dict) -> str:
    """p50 and slowest call per method, and each p50 over the first method's."""
    latency = result["latency"]
    first = next(iter(latency))
    rows = [
        f"`ServedModel.explain` (SavedModel), one 200×150 image per call, {result['model']}, "
        f"{result['calls']} calls per method, the methods called in turn:",
        "",
        f"| method | p50 ms | slowest ms | CPU ms per call | p50 / {first} p50 |",
        "|---|---:|---:|---:|---:|",
    ]
    for method, row in latency.items():
        rows.append(
            f"| {method} | {row['p50_ms']:.0f} | {row['max_ms']:.0f} | "
            f"{row['cpu_ms_per_call']:.0f} | {row['p50_ms'] / latency[first]['p50_ms']:.1f}× |"
        )
    rows.append(
        f"\nLoad average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores."
    )
    return "\n".join(rows)


def bench_guard(model, images: np.ndarray):
    """A Mahalanobis guard on the fourth stage of the backbone (where the demo run's export put
    its guard), fitted on `images`: its cost does not depend on what it was fitted on."""
    from skin_tf.serving.guard import fit_mahalanobis
    from skin_tf.serving.guard_choice import candidate_layers, pooled_features

    layer = candidate_layers(model)[3]
    features = pooled_features(model, images, [layer])[layer]
    return fit_mahalanobis(features, np.arange(len(features)) % 7, layer)


def guard_cost(latency: dict) -> dict[str, float]:
    """p50 with the guard / p50 without, per engine (both through `ServedModel.assess`)."""
    return {
        engine: latency[f"{engine}_guard"]["p50_ms"] / latency[f"{engine}_assess"]["p50_ms"]
        for engine in ("serve", "tflite", "tflite_int8")
        if f"{engine}_guard" in latency
    }


def fields_cost(latency: dict) -> dict[str, float]:
    """p50 with patient fields / p50 of the image-only export, both guarded, called in turn."""
    return {
        engine: latency[f"{engine}_fields"]["p50_ms"] / latency[f"{engine}_guard_again"]["p50_ms"]
        for engine in ("serve", "tflite", "tflite_int8")
        if f"{engine}_fields" in latency
    }


def table(result: dict) -> str:
    """Markdown tables; every ratio divides by a figure of this same run."""
    latency, size = result["latency"], result["image_size"]
    serve_p50 = latency["serve"]["p50_ms"]
    torch_p50 = latency.get("torch_eager", {}).get("p50_ms")
    rows = [
        "| call (1 image) | p50 ms | p95 ms | p50 / serve p50 | p50 / PyTorch p50 "
        "| CPU ms per call |",
        "|---|---:|---:|---:|---:|---:|",
    ]
    for key, label in LATENCY_LABELS.items():
        if key not in latency:
            continue
        row = latency[key]
        versus_torch = f"{row['p50_ms'] / torch_p50:.2f}×" if torch_p50 else "—"
        rows.append(
            f"| {label.format(s=size)} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | "
            f"{row['p50_ms'] / serve_p50:.2f}× | {versus_torch} | {row['cpu_ms_per_call']:.1f} |"
        )
    cost = guard_cost(latency)
    if cost:
        rows.append(
            "\nOOD guard cost, p50 with / without the guard (`ServedModel.assess` on the two "
            "exports, called in turn): "
            + ", ".join(
                f"{engine} {ratio:.3f} ({latency[f'{engine}_guard']['p50_ms']:.2f} vs "
                f"{latency[f'{engine}_assess']['p50_ms']:.2f} ms)"
                for engine, ratio in cost.items()
            )
            + "."
        )
    cost = fields_cost(latency)
    if cost:
        rows.append(
            "\nPatient fields cost, p50 with age, sex and site / the image-only export, both "
            "with the guard (`ServedModel.assess`, the fields a dict encoded per call; called in "
            "turn): "
            + ", ".join(
                f"{engine} {ratio:.3f} ({latency[f'{engine}_fields']['p50_ms']:.2f} vs "
                f"{latency[f'{engine}_guard_again']['p50_ms']:.2f} ms)"
                for engine, ratio in cost.items()
            )
            + "."
        )
    rows.append(f"\nPyTorch baseline: {result['torch']}.")
    sizes = result["file_bytes"]
    rows.append(
        f"\nFiles: model.tflite {sizes['tflite'] / 1e6:.1f} MB, model_int8.tflite "
        f"{sizes['tflite-int8'] / 1e6:.1f} MB ({sizes['tflite-int8'] / sizes['tflite']:.0%} of "
        "the float file)."
    )
    folder = result["folder"]
    if folder:
        base = folder["savedmodel"]["images_per_s"]
        rows += [
            "",
            f"| `skin-tf predict` over {folder['savedmodel']['images']} "
            f"{result['folder_images']} | wall s | "
            "images/s | × savedmodel | one-image run s | images/s after start-up |",
            "|---|---:|---:|---:|---:|---:|",
        ]
        for engine, row in folder.items():
            after = row["images_per_s_after_startup"]
            rows.append(
                f"| `--engine {engine}` | {row['wall_s']:.1f} | {row['images_per_s']:.1f} | "
                f"{row['images_per_s'] / base:.2f}× | {row['one_image_wall_s']:.1f} | "
                f"{'—' if after is None else f'{after:.1f}'} |"
            )
    cold = result["cold_start"]
    rows += [
        "",
        f"Cold start in a fresh process (engine {cold['engine']}): import TensorFlow "
        f"{cold['import_s']:.1f} s, load_served {cold['load_s']:.1f} s, first predict "
        f"{cold['first_predict_s']:.2f} s, first explain (loads the SavedModel) "
        f"{cold['first_explain_s']:.2f} s. Export (SavedModel + both LiteRT models) took "
        f"{result['export_s']:.1f} s.",
        f"Load average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="model input side (px)")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per row (>= 50)")
    parser.add_argument(
        "--data-root", type=Path, help="HAM10000 folder for the predict rows (else skipped)"
    )
    parser.add_argument("--folder-images", type=int, default=1000, help="images in the folder")
    parser.add_argument(
        "--upscale", action="store_true", help="folder of 600x450 JPEG copies (original size)"
    )
    parser.add_argument("--calibration", type=int, default=32, help="int8 calibration images")
    parser.add_argument("--quick", action="store_true", help="tiny settings: proves it runs")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    parser.add_argument(
        "--no-torch", action="store_true", help="skip the PyTorch row (minutes on busy cores)"
    )
    parser.add_argument("--torch-only", action="store_true", help=argparse.SUPPRESS)
    parser.add_argument(
        "--ensemble", nargs="+", metavar="MODEL", help="time an ensemble of these backbones"
    )
    parser.add_argument("--ensemble-size", type=int, default=128, help="the ensemble's side (px)")
    parser.add_argument(
        "--explain-methods", nargs="+", metavar="METHOD", help="time explain with these methods"
    )
    parser.add_argument("--explain-model", default="efficientnet_lite0", help="its backbone")
    parser.add_argument("--explain-size", type=int, default=128, help="its side (px)")
    parser.add_argument("--explain-calls", type=int, default=10, help="timed calls per method")
    args = parser.parse_args(argv)
    if args.torch_only:  # the PyTorch row, in its own process (see torch_latency)
        forward, note = torch_forward(args.size)
        row = None if forward is None else time_calls(forward, args.calls)
        print(json.dumps({"latency": row, "note": note}))
        return 0
    if args.quick:
        args.size, args.calls, args.folder_images, args.calibration = 64, 10, 40, 4
    elif args.calls < 50:
        parser.error("--calls must be at least 50 for a meaningful p95")
    if args.explain_methods:
        result = explain_run(
            args.explain_methods,
            args.explain_model,
            32 if args.quick else args.explain_size,
            2 if args.quick else args.explain_calls,
        )
        text = explain_table(result)
    elif args.ensemble:
        if len(args.ensemble) < 2:
            parser.error("--ensemble needs at least two backbones")
        result = ensemble_run(
            args.ensemble,
            32 if args.quick else args.ensemble_size,
            args.size,
            args.calls,
            args.calibration,
            torch=not args.no_torch,
        )
        text = ensemble_table(result)
    else:
        result = run(
            args.size,
            args.calls,
            args.data_root,
            args.folder_images,
            args.calibration,
            args.upscale,
            torch=not args.no_torch,
        )
        text = table(result)
    print(text)
    if args.quick:
        print("\n(--quick: tiny settings, these figures are not measurements to quote)")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
