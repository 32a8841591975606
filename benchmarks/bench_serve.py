"""Single-image latency of the exported `serve` and `explain` endpoints vs the Keras model.

    .venv/bin/python benchmarks/bench_serve.py            # B0 at 224 px, 100 calls each
    .venv/bin/python benchmarks/bench_serve.py --size 112 --calls 50

Builds EfficientNet-B0 (no pretrained weights: latency does not depend on weight values), exports it
with `skin_tf.serving.export.export_model`, reloads it with `load_served`, and times one image per
call (after warm-up calls) for:
- serve / explain on a uint8 image at the model size, and serve on a 600x450 image (a full-size
  HAM10000 original, resized inside the graph);
- `model.predict(x)` and `model(x, training=False)` on the same Keras model, same process.
Cold start is measured in a fresh Python process: import TensorFlow, `load_served`, first call.
The machine's load average is printed before and after, since other work skews the figures.
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
print(json.dumps({"import_s": imported - start, "load_s": loaded - imported,
                  "first_serve_s": first - loaded, "first_explain_s": first_explain - first}))
"""


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


def run(size: int, calls: int) -> dict[str, object]:
    import keras
    import tensorflow as tf

    from skin_tf.models.classifier import build_classifier
    from skin_tf.serving.export import export_model
    from skin_tf.serving.served import load_served

    load_before = os.getloadavg()
    keras.utils.set_random_seed(0)
    model = build_classifier("efficientnet_b0", size, weights=None)
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
    full_size = rng.integers(0, 256, (450, 600, 3), dtype=np.uint8)
    batch = image[None].astype(np.float32)

    with tempfile.TemporaryDirectory() as tmp:
        start = time.perf_counter()
        model_dir = export_model(model, Path(tmp) / "b0")
        export_s = time.perf_counter() - start
        start = time.perf_counter()
        served = load_served(model_dir, engine="savedmodel")
        load_s = time.perf_counter() - start
        latency = {
            "serve": time_calls(lambda: served.predict(image), calls),
            "serve_600x450": time_calls(lambda: served.predict(full_size), calls),
            "explain": time_calls(lambda: served.explain(image), calls),
            "keras_predict": time_calls(lambda: model.predict(batch, verbose=0), calls),
            "keras_call": time_calls(lambda: model(batch, training=False).numpy(), calls),
        }
        cold = cold_start(model_dir, size)
    return {
        "model": "efficientnet_b0 (weights=None)",
        "image_size": size,
        "tensorflow": tf.__version__,
        "keras": keras.__version__,
        "cpu_cores": len(os.sched_getaffinity(0)),
        "load_average_before": [round(x, 2) for x in load_before],
        "load_average_after": [round(x, 2) for x in os.getloadavg()],
        "export_s": export_s,
        "load_in_process_s": load_s,
        "cold_start": cold,
        "latency": latency,
    }


def table(result: dict) -> str:
    """A markdown table of the latencies with ratios to `serve`."""
    latency = result["latency"]
    serve_p50 = latency["serve"]["p50_ms"]
    rows = [
        "| call (1 image) | p50 ms | p95 ms | p50 / serve p50 | CPU ms per call |",
        "|---|---:|---:|---:|---:|",
    ]
    names = {
        "serve": f"SavedModel `serve`, uint8 {result['image_size']}²",
        "serve_600x450": "SavedModel `serve`, uint8 600×450 (resized inside)",
        "explain": f"SavedModel `explain` (probs + Grad-CAM), {result['image_size']}²",
        "keras_predict": "Keras `model.predict(x)`",
        "keras_call": "Keras `model(x, training=False)` (eager)",
    }
    for key, label in names.items():
        row = latency[key]
        ratio = row["p50_ms"] / serve_p50
        rows.append(
            f"| {label} | {row['p50_ms']:.1f} | {row['p95_ms']:.1f} | {ratio:.2f}× "
            f"| {row['cpu_ms_per_call']:.1f} |"
        )
    cold = result["cold_start"]
    rows += [
        "",
        f"Cold start in a fresh process: import TensorFlow {cold['import_s']:.1f} s, "
        f"load_served {cold['load_s']:.1f} s, first serve call {cold['first_serve_s']:.2f} s, "
        f"first explain call {cold['first_explain_s']:.2f} s "
        f"(total {sum(cold.values()):.1f} s). Export took {result['export_s']:.1f} s.",
        f"Load average (1/5/15 min) before {result['load_average_before']}, after "
        f"{result['load_average_after']}, on {result['cpu_cores']} cores.",
    ]
    return "\n".join(rows)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=224, help="model input side (px)")
    parser.add_argument("--calls", type=int, default=100, help="timed calls per variant (>= 50)")
    parser.add_argument("--json", type=Path, help="also write the raw figures to this file")
    args = parser.parse_args(argv)
    if args.calls < 50:
        parser.error("--calls must be at least 50 for a meaningful p95")
    result = run(args.size, args.calls)
    print(table(result))
    if args.json:
        args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
