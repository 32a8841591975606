"""Run directories: unique names, JSON files, meta.json (provenance) and a one-line caption.

This is the one home of the JSON helpers (`json_ready`, `write_json`, `read_json`) and of what
names and captions a run (`run_name_of`, `provenance`, `run_caption`).

A run lives in `runs/<UTC time>__<run-name>/` and holds config.json, meta.json, splits.csv,
history.csv, best.keras, predictions_{val,test}.csv and metrics.json.

    >>> run_dir = create_run_dir("runs", "baseline-smoke")  # doctest: +SKIP
    >>> run_dir.name  # doctest: +SKIP
    '20250101T120000Z__baseline-smoke'
"""

from __future__ import annotations

import collections
import datetime as dt
import hashlib
import json
import math
import os
import platform
import re
import subprocess
import sys
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import Any, Protocol, TypeVar

import numpy as np
import pandas as pd
from PIL import Image

C = TypeVar("C")  # a config dataclass (TrainConfig, VaeConfig)


class RunConfig(Protocol):
    """What `collect_meta` reads of a config; TrainConfig and VaeConfig both have it (this module
    sits below both, so it names the fields instead of importing either)."""

    name: str
    profile: str
    seed: int
    precision: str
    model: str
    weights: str | None
    image_size: int
    epochs: int


RUN_NAME_PATTERN = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
TIME_FORMAT = "%Y%m%dT%H%M%SZ"
SOURCE_SIZE_SAMPLE = 200  # image headers read to find the most common source size
EPOCH_SECONDS = "epoch_seconds"  # history.csv: wall time of each epoch, validation included


def create_run_dir(runs_dir: str | os.PathLike, run_name: str) -> Path:
    """Make and return a new `runs_dir/<UTC %Y%m%dT%H%M%SZ>__<run_name>` directory.

    Never reuses a directory: when the name is taken (two runs started in the same second), a
    counter is appended (`__name-2`, `__name-3`, …).

    >>> create_run_dir("/tmp/runs", "demo").name  # doctest: +SKIP
    '20250101T120000Z__demo'
    """
    if not RUN_NAME_PATTERN.match(run_name):
        raise ValueError(
            f"run name {run_name!r} must start with a letter or digit and contain only letters, "
            "digits, '.', '_' and '-' (it becomes part of a folder name)"
        )
    runs_dir = Path(runs_dir)
    runs_dir.mkdir(parents=True, exist_ok=True)
    stamp = dt.datetime.now(dt.UTC).strftime(TIME_FORMAT)
    for attempt in range(1, 1000):
        suffix = "" if attempt == 1 else f"-{attempt}"
        path = runs_dir / f"{stamp}__{run_name}{suffix}"
        try:
            path.mkdir()  # atomic: fails if another process created it first
        except FileExistsError:
            continue
        return path
    raise FileExistsError(f"could not find a free run directory name for {run_name} in {runs_dir}")


def json_ready(value: Any) -> Any:
    """Plain-JSON copy of `value`: numpy to Python, tuples to lists, NaN/inf to None (null).

    >>> json_ready({"auc": np.float32(0.5), "ci": (np.int64(2), math.nan)})
    {'auc': 0.5, 'ci': [2, None]}
    """
    if isinstance(value, Mapping):
        return {str(k): json_ready(v) for k, v in value.items()}
    if isinstance(value, list | tuple | np.ndarray):
        return [json_ready(v) for v in value]
    if isinstance(value, np.generic):
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, Path):
        return str(value)
    return value


def write_json(path: str | os.PathLike, value: Any) -> Path:
    """Write `json_ready(value)` as strict indented JSON (UTF-8, trailing newline); return the path.

    Metrics hold numpy numbers and NaN (e.g. melanoma AUC without melanoma), so values pass through
    `json_ready` first: NaN/inf become null and the file stays strict JSON that any reader accepts.

    >>> write_json("runs/r1/metrics.json", {"mel_roc_auc": float("nan")})  # doctest: +SKIP
    PosixPath('runs/r1/metrics.json')
    """
    path = Path(path)
    text = json.dumps(json_ready(value), indent=2, allow_nan=False)
    path.write_text(text + "\n", encoding="utf-8")
    return path


def read_json(path: str | os.PathLike) -> Any:
    """Read a JSON file, with an error naming the file when it is missing or broken."""
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(
            f"{path} not found: is {path.parent} a complete run directory (or exported model)?"
        )
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON ({err}): rewrite or delete it") from err


def git_sha(start: str | os.PathLike | None = None) -> str | None:
    """The current commit of the git checkout holding `start` (default: this package), or None."""
    folder = Path(start) if start else Path(__file__).resolve().parent
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"],
            cwd=folder,
            capture_output=True,
            text=True,
            timeout=10,
            check=True,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    sha = out.stdout.strip()
    return sha or None


def package_versions() -> dict[str, str | None]:
    """Versions of python, tensorflow, keras, numpy and skin_tf (None when not installed)."""
    versions: dict[str, str | None] = {"python": platform.python_version()}
    for name in ("tensorflow", "keras", "numpy", "skin_tf"):
        try:
            versions[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            versions[name] = None
    return versions


def hardware() -> str:
    """ "CPU (N cores, <model name>)", or the GPU names TensorFlow sees ("GPU: NVIDIA A100").

    The processor's name is there because a wall time means little without the machine that
    produced it, and "2 cores" does not tell two such machines apart.
    """
    import tensorflow as tf

    gpus = tf.config.list_physical_devices("GPU")
    if gpus:
        names = []
        for gpu in gpus:
            details = tf.config.experimental.get_device_details(gpu)
            names.append(details.get("device_name", gpu.name))
        return "GPU: " + ", ".join(names)
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    name = cpu_model_name()
    return f"CPU ({cores} cores, {name})" if name else f"CPU ({cores} cores)"


def cpu_model_name(cpuinfo: Path = Path("/proc/cpuinfo")) -> str | None:
    """The processor's model name ("AMD EPYC", "Intel(R) Xeon(R) …"): Linux's cpuinfo, else
    platform.processor(); None when neither says."""
    try:
        for line in cpuinfo.read_text(errors="replace").splitlines():
            key, _, value = line.partition(":")
            if key.strip() == "model name" and value.strip():
                return value.strip()
    except OSError:
        pass
    return platform.processor() or None


def source_image_size(paths: list[str], sample: int = SOURCE_SIZE_SAMPLE) -> str | None:
    """Most common "WxH" among an evenly spaced sample of image headers (pixels are not decoded).

    >>> source_image_size(frame["path"].tolist())  # doctest: +SKIP
    '200x150'
    """
    if not paths:
        return None
    step = max(1, len(paths) // sample)
    sizes: collections.Counter[str] = collections.Counter()
    for path in paths[::step][:sample]:
        with Image.open(path) as image:
            sizes[f"{image.width}x{image.height}"] += 1
    return sizes.most_common(1)[0][0]


def collect_meta(
    config: RunConfig,
    data_root: str | os.PathLike,
    frame: pd.DataFrame,
    run_name: str | None = None,
) -> dict[str, Any]:
    """Provenance of a run for meta.json: code, library versions, seed, host, hardware and data.

    `frame` is the index the run trains on (read_metadata, possibly subset); n_images counts it.

    >>> meta = collect_meta(config, root, frame, run_name="baseline")  # doctest: +SKIP
    >>> meta["data"]["source_size"]  # doctest: +SKIP
    '200x150'
    """
    weights = "none" if config.weights is None else config.weights
    return {
        "run_name": run_name or config.name,
        "config_name": config.name,
        "profile": config.profile,
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "git_sha": git_sha(),
        "versions": package_versions(),
        "seed": config.seed,
        "host": platform.node(),
        "platform": f"{platform.system()} {platform.release()} ({platform.machine()})",
        "hardware": hardware(),
        "precision": config.precision,
        "model": config.model,
        "weights": weights,
        "image_size": config.image_size,
        "epochs": config.epochs,
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        "data": {
            "root": str(Path(data_root).resolve()),
            "source_size": source_image_size(frame["path"].astype(str).tolist()),
            "n_images": len(frame),
        },
    }


_FULL_SIZE = "600x450"  # the size of the original HAM10000 images


def provenance(run_dir: str | os.PathLike) -> str:
    """One-line caption of what produced a run's figures, from its meta.json (and history.csv).

    The run is named by its folder (`<UTC time>__<name>`) when the folder carries the name, so a
    retrained run's figures are told apart from the run it replaced.

    >>> provenance("runs/20250101T120000Z__baseline-cpu")  # doctest: +SKIP
    'HAM10000 200x150 copy · weights: imagenet · LITE0 128 px · 10 epochs · CPU (2 cores) · run …'
    >>> provenance("runs/20250101T120000Z__baseline-cpu").split(" · ")[-1]  # doctest: +SKIP
    'run 20250101T120000Z__baseline-cpu'
    """
    run_dir = Path(run_dir)
    meta = read_json(run_dir / "meta.json")
    name = str(meta.get("run_name"))
    run_id = run_dir.name if run_dir.name.endswith(f"__{name}") else name
    size = meta.get("data", {}).get("source_size")
    data = data_label(size)
    model = str(meta.get("model", "?"))
    short_model = model.replace("efficientnet_", "").upper() if model.startswith("eff") else model
    epochs = epochs_trained(run_dir)
    if meta.get("ensemble"):  # no epochs of its own: say what it pools
        short_model, epochs_text = "ensemble", ensemble_label(meta["ensemble"])
    elif epochs is None:
        epochs_text = f"{meta.get('epochs')} epochs"
    elif epochs == meta.get("epochs"):
        epochs_text = f"{epochs} epochs"
    else:
        epochs_text = f"{epochs} of {meta.get('epochs')} epochs"
    return " · ".join(
        [
            data,
            f"weights: {meta.get('weights')}",
            f"{short_model} {_size_text(meta.get('image_size'))} px",
            epochs_text,
            str(meta.get("hardware")),
            f"run {run_id}",
        ]
    )


def ensemble_label(ensemble: dict[str, Any]) -> str:
    """What an ensemble run pools, from meta.json's `ensemble` block.

    >>> ensemble_label({"members": [{"model": "efficientnet_lite0"}] * 3
    ...                            + [{"model": "efficientnet_lite1"}]})
    '4 runs pooled (LITE0 ×3, LITE1)'
    """
    models = [str(m.get("model", "?")).replace("efficientnet_", "").upper()
              for m in ensemble.get("members", [])]  # fmt: skip
    counts = {model: models.count(model) for model in dict.fromkeys(models)}
    parts = [model if n == 1 else f"{model} ×{n}" for model, n in counts.items()]
    return f"{len(models)} runs pooled ({', '.join(parts)})"


def _size_text(size: Any) -> str:
    """128 → "128", [150, 200] → "150×200" (skin_tf.data.sizes.size_label, which sits above)."""
    if isinstance(size, list | tuple) and len(size) == 2 and size[0] != size[1]:
        return f"{size[0]}×{size[1]}"
    return str(size[0] if isinstance(size, list | tuple) else size)


def file_digest(path: str | os.PathLike) -> str | None:
    """The sha256 of a file in hex (None when it does not exist): ties a record, such as a
    run's explain_check.json, to the best.keras it was made from.

    >>> file_digest("runs/…/best.keras")[:12]  # doctest: +SKIP
    '3f1c0a9e4b7d'
    """
    path = Path(path)
    if not path.is_file():
        return None
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def run_name_of(run_dir: str | os.PathLike) -> str:
    """The run's name from meta.json (`run_name`), else the directory name.

    >>> run_name_of("runs/20250101T120000Z__baseline-cpu")  # doctest: +SKIP
    'baseline-cpu'
    """
    meta_path = Path(run_dir) / "meta.json"
    if meta_path.is_file():
        name = json.loads(meta_path.read_text()).get("run_name")
        if name:
            return str(name)
    return Path(run_dir).name


def patient_fields(run_dir: str | os.PathLike) -> tuple[str, ...]:
    """The patient fields a run was trained with (config.json's `metadata`), () for none.

    >>> patient_fields("runs/20250101T120000Z__baseline_meta-cpu")  # doctest: +SKIP
    ('age', 'sex', 'localization')
    """
    return tuple(read_json(Path(run_dir) / "config.json").get("metadata") or ())


def run_caption(run_dir: str | os.PathLike, produced_by: str) -> str:
    """One-line figure/table footer: what produced it, then the run's `provenance`.

    >>> run_caption(run_dir, "evaluate_run, test split")  # doctest: +SKIP
    'evaluate_run, test split · HAM10000 200x150 copy · weights: none · …'
    """
    return f"{produced_by} · {provenance(run_dir)}"


def data_label(source_size: str | None) -> str:
    """Which copy of HAM10000 a run used, from meta.json's data.source_size.

    >>> data_label("600x450"), data_label("200x150")
    ('HAM10000 full-size', 'HAM10000 200x150 copy')
    """
    return (
        "HAM10000 full-size" if source_size == _FULL_SIZE else f"HAM10000 {source_size or '?'} copy"
    )


def epochs_trained(run_dir: str | os.PathLike) -> int | None:
    """Rows of the run's history.csv (epochs finished), or None when it is absent or unreadable."""
    history = Path(run_dir) / "history.csv"
    if not history.is_file():
        return None
    try:
        return len(pd.read_csv(history))
    except (pd.errors.EmptyDataError, pd.errors.ParserError):
        return None


# ------------------------------------------------------------------ resuming: history and backups


def resumable_config(
    run_dir: Path,
    done_file: str,
    config_from_dict: Callable[..., C],
    config: C | None = None,
) -> C:
    """The config a resume continues with — the run's own config.json — after checking that the
    run can be resumed: config.json, meta.json and splits.csv are there, `done_file` (written
    when a run completes) is not, and `config`, when given, is the stored one.

    >>> resumable_config(Path("runs/<run>"), "metrics.json", config_from_dict)  # doctest: +SKIP
    """
    from skin_tf.config_files import ConfigError

    for name in ("config.json", "meta.json", "splits.csv"):
        if not (run_dir / name).is_file():
            raise FileNotFoundError(f"cannot resume {run_dir}: it has no {name}")
    if (run_dir / done_file).is_file():
        raise FileExistsError(f"{run_dir} is already complete (it has {done_file})")
    stored = config_from_dict(read_json(run_dir / "config.json"), source=str(run_dir))
    if config is not None and config != stored:
        raise ConfigError(
            f"--resume continues {run_dir} with its own config.json: drop --config/--set, or "
            "start a new run"
        )
    return stored


def completed_epochs(backup_dir: str | os.PathLike) -> int:
    """Epochs finished according to the BackupAndRestore state below `backup_dir` (0 if none).

    Each training phase keeps its own `<backup_dir>/<phase>/training_metadata.json`.
    """
    done = 0
    for path in Path(backup_dir).glob("*/training_metadata.json"):
        done = max(done, int(read_json(path).get("epoch", 0)))
    return done


def trim_history(history_path: str | os.PathLike, epochs: int) -> None:
    """Keep only history rows of epochs < `epochs` (an epoch logged after its last backup is
    re-run on resume and must not appear twice); delete the file when none remain."""
    path = Path(history_path)
    if not path.is_file():
        return
    try:
        history = pd.read_csv(path)
    except pd.errors.EmptyDataError:
        path.unlink()
        return
    kept = history[history["epoch"] < epochs]
    if kept.empty:
        path.unlink()
    elif len(kept) < len(history):
        kept.to_csv(path, index=False)


def add_history_column(history_path: str | os.PathLike, column: str) -> None:
    """Give an existing history.csv an empty `column` when it lacks one, in Keras CSVLogger's
    column order ("epoch", then the names sorted), so that rows appended on resume, which carry
    the column, line up with the header."""
    path = Path(history_path)
    if not path.is_file():
        return
    history = pd.read_csv(path)
    if column in history.columns:
        return
    history[column] = np.nan
    order = ["epoch", *sorted(c for c in history.columns if c != "epoch")]
    history[order].to_csv(path, index=False)


def best_so_far(history_path: str | os.PathLike, metric: str, mode: str) -> float | None:
    """Best value of `metric` in history.csv (min or max), None without rows; seeds the
    checkpoint callback on resume so it only replaces best.keras with a better epoch."""
    path = Path(history_path)
    if not path.is_file():
        return None
    column = pd.read_csv(path)[metric].dropna()
    if column.empty:
        return None
    return float(column.min() if mode == "min" else column.max())
