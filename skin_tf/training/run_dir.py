"""A classifier run's directory: making a new one, checking one to resume, a worker's copy.

`skin_tf.training.fit.train` calls these; nothing here trains. A new run gets config.json,
splits.csv and meta.json (`create_run`); `prepare_resume` and `check_resume_replicas` check that a
stopped run can go on as it started; non-chief workers of a multi-worker run write into a private
copy (`worker_folder`, `worker_copy`) that is deleted when they finish.

    >>> default_run_name(load_config("baseline", profile="cpu"))  # doctest: +SKIP
    'baseline-cpu'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pandas as pd

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import resolve_data_root
from skin_tf.data.splits import write_splits
from skin_tf.runs import (
    EPOCH_SECONDS,
    collect_meta,
    create_run_dir,
    read_json,
    resumable_config,
    write_json,
)
from skin_tf.training.config import TrainConfig, config_from_dict

if TYPE_CHECKING:
    from skin_tf.training.distribute import Distribution


def default_run_name(config: TrainConfig) -> str:
    """ "baseline" for the full profile, "baseline-cpu" / "baseline-smoke" otherwise."""
    return config.name if config.profile == "full" else f"{config.name}-{config.profile}"


def create_run(
    config: TrainConfig,
    frame: pd.DataFrame,
    root: Path,
    runs_dir: Path,
    run_name: str | None,
    precision_policy: str,
    dist: Distribution,
    learning_rates: dict[str, Any],
) -> Path:
    """A new run directory holding config.json, splits.csv and meta.json (which records the
    precision policy, the distribution and the learning rate of each phase)."""
    run_dir = create_run_dir(runs_dir, run_name or default_run_name(config))
    write_json(run_dir / "config.json", config.to_dict())
    write_splits(frame, run_dir / "splits.csv")
    meta = collect_meta(config, root, frame, run_name=run_dir.name.split("__", 1)[-1])
    meta["precision"] = precision_policy
    meta["distribution"] = {
        **dist.describe(),
        "per_replica_batch_size": config.batch_size,
        "global_batch_size": dist.global_batch_size(config.batch_size),
        "dataset_sharding": "data",  # images listed in splits.csv, not file shards
        "learning_rate": learning_rates,
    }
    write_json(run_dir / "meta.json", meta)
    return run_dir


def prepare_resume(
    run_dir: Path, config: TrainConfig | None, data_root: str | os.PathLike | None
) -> tuple[Path, TrainConfig, Path]:
    """(run_dir, its stored config, its data root) for a resume, after checking the run is
    resumable: its files are there, it is unfinished, and `config` (if given) is its own."""
    stored = resumable_config(run_dir, "metrics.json", config_from_dict, config)
    if data_root is None:
        data_root = read_json(run_dir / "meta.json")["data"]["root"]
    return run_dir, stored, resolve_data_root(data_root)


def check_resume_replicas(run_dir: Path, dist: Distribution) -> None:
    """A resumed run keeps its global batch and learning rate, so its number of replicas."""
    stored = read_json(run_dir / "meta.json").get("distribution", {}).get("replicas", 1)
    if stored != dist.replicas:
        raise ConfigError(
            f"{run_dir} was trained on {stored} replica(s) but this resume has {dist.replicas}: "
            "the global batch and learning rate would change mid-run. Resume with the same "
            "devices/workers (SKIN_TF_CPU_DEVICES, CUDA_VISIBLE_DEVICES, TF_CONFIG), or start a "
            "new run"
        )


def worker_folder() -> Path:
    """A private folder for a non-chief worker's copy of the run (deleted when it finishes)."""
    return Path(tempfile.mkdtemp(prefix="skin_tf_worker_"))


def worker_copy(run_dir: Path) -> Path:
    """A non-chief worker's private copy of the chief's run (config, splits, history, backup)."""
    copy = worker_folder() / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("best.keras", "predictions_*"))
    return copy


def record_train_seconds(run_dir: Path) -> None:
    """Write `train_seconds` into meta.json: the sum of history.csv's `epoch_seconds`, i.e. the
    wall time of every epoch that made the run (training, validation, checkpoint), over all
    sessions of a resumed run. Epochs logged before the column existed count as unknown (the
    sum is then left out)."""
    history = pd.read_csv(run_dir / "history.csv")
    seconds = history.get(EPOCH_SECONDS)
    meta = read_json(run_dir / "meta.json")
    if seconds is not None and seconds.notna().all():
        meta["train_seconds"] = round(float(seconds.sum()), 1)
    else:
        meta.pop("train_seconds", None)
    write_json(run_dir / "meta.json", meta)
