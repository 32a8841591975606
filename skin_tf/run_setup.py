"""Preparing a classifier run before its first epoch: inputs, data and split, the run directory,
the model, and what a resume needs.

skin_tf.train calls these in order — `check_inputs` (before any image is read), `prepare_data`
(index, smoke subset, lesion split or given splits), `build_model` (seeded, in the strategy's
scope; before the run directory exists, so missing weights leave no half-made run), then
`create_run` (config.json, splits.csv, meta.json). A resume goes through `prepare_resume` and
`check_resume_replicas` instead. Non-chief workers of a multi-worker run keep a private copy
(`worker_folder`, `worker_copy`).

    >>> default_run_name(load_config("baseline", profile="cpu"))  # doctest: +SKIP
    'baseline-cpu'
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import pandas as pd

from skin_tf.config import TrainConfig, config_from_dict
from skin_tf.config_files import ConfigError
from skin_tf.data import MEL_INDEX
from skin_tf.runs import collect_meta, create_run_dir, read_json, resumable_config, write_json
from skin_tf.splits import SPLITS

if TYPE_CHECKING:
    import keras

    from skin_tf.distribute import Distribution
    from skin_tf.train import Phase


def default_run_name(config: TrainConfig) -> str:
    """ "baseline" for the full profile, "baseline-cpu" / "baseline-smoke" otherwise."""
    return config.name if config.profile == "full" else f"{config.name}-{config.profile}"


def check_inputs(config: TrainConfig) -> None:
    """Errors that can be found before reading any image."""
    if config.synthetic_dir is not None and not Path(config.synthetic_dir).expanduser().is_dir():
        raise ConfigError(
            f"synthetic_dir={config.synthetic_dir!r} is not a folder: generate synthetic images "
            "first (see the cVAE notebook / `skin-tf synth`), or set synthetic_dir=null"
        )
    if config.weights not in (None, "imagenet") and not Path(config.weights).is_file():
        raise ConfigError(f"weights={config.weights!r}: no such file")


def prepare_data(
    config: TrainConfig, data_root: str | os.PathLike | None, splits: pd.DataFrame | None = None
) -> tuple[pd.DataFrame, Path]:
    """The run's index with its `split` column (subset first for smoke runs), and the data root.

    With `splits` (image_id, split), those images and splits are used as given.
    """
    from skin_tf.data import read_metadata, resolve_data_root
    from skin_tf.splits import lesion_subset, split_by_lesion

    check_inputs(config)
    root = resolve_data_root(data_root)
    frame = read_metadata(root)
    if splits is not None:
        frame = apply_splits(frame, splits)
    else:
        if config.subset_per_class is not None:
            frame = lesion_subset(frame, config.subset_per_class, seed=config.seed)
        frame = split_by_lesion(frame, fractions=config.fractions, seed=config.seed)
    check_split(frame, config)
    return frame, root


def apply_splits(frame: pd.DataFrame, splits: pd.DataFrame) -> pd.DataFrame:
    """Rows of `frame` named in `splits`, in frame order, with splits' `split` column."""
    missing_columns = {"image_id", "split"} - set(splits.columns)
    if missing_columns:
        raise ValueError(f"splits lacks column(s) {sorted(missing_columns)}: needs image_id, split")
    unknown = sorted(set(splits["split"]) - set(SPLITS))
    if unknown:
        raise ValueError(f"splits has split values {unknown}: use only {', '.join(SPLITS)}")
    if splits["image_id"].duplicated().any():
        raise ValueError("splits lists an image_id twice: give each image one split")
    absent = ~splits["image_id"].isin(frame["image_id"])
    if absent.any():
        raise ValueError(
            f"{absent.sum()} image_ids of the given splits are not in the data "
            f"(e.g. {splits.loc[absent, 'image_id'].head(3).tolist()}): check the data root"
        )
    split_of = splits.set_index("image_id")["split"]
    out = frame[frame["image_id"].isin(split_of.index)].reset_index(drop=True)
    out["split"] = out["image_id"].map(split_of).to_numpy()
    return out


def worker_folder() -> Path:
    """A private folder for a non-chief worker's copy of the run (deleted when it finishes)."""
    return Path(tempfile.mkdtemp(prefix="skin_tf_worker_"))


def worker_copy(run_dir: Path) -> Path:
    """A non-chief worker's private copy of the chief's run (config, splits, history, backup)."""
    copy = worker_folder() / run_dir.name
    shutil.copytree(run_dir, copy, ignore=shutil.ignore_patterns("best.keras", "predictions_*"))
    return copy


def create_run(
    config: TrainConfig,
    frame: pd.DataFrame,
    root: Path,
    runs_dir: Path,
    run_name: str | None,
    precision_policy: str,
    dist: Distribution,
    phases: Sequence[Phase],
) -> Path:
    """A new run directory holding config.json, splits.csv and meta.json (which records the
    precision policy, the distribution and the learning rates of `phases`)."""
    from skin_tf.distribute import learning_rate_record, scale_phases
    from skin_tf.splits import write_splits

    run_dir = create_run_dir(runs_dir, run_name or default_run_name(config))
    write_json(run_dir / "config.json", config.to_dict())
    write_splits(frame, run_dir / "splits.csv")
    meta = collect_meta(config, root, frame, run_name=run_dir.name.split("__", 1)[-1])
    meta["precision"] = precision_policy
    phases = scale_phases(list(phases), dist.replicas, config.lr_scaling)
    meta["distribution"] = {
        **dist.describe(),
        "per_replica_batch_size": config.batch_size,
        "global_batch_size": dist.global_batch_size(config.batch_size),
        "dataset_sharding": "data",  # images listed in splits.csv, not file shards
        "learning_rate": learning_rate_record(
            config.learning_rate, phases, dist.replicas, config.lr_scaling
        ),
    }
    write_json(run_dir / "meta.json", meta)
    return run_dir


def build_model(config: TrainConfig, dist: Distribution) -> tuple[keras.Model, str]:
    """Seed everything, set the precision policy, build the classifier in the strategy's scope;
    returns (model, policy)."""
    import keras

    from skin_tf.losses import configure_precision
    from skin_tf.models import build_classifier

    keras.utils.set_random_seed(config.seed)
    policy = configure_precision(config.precision)
    with dist.strategy.scope():
        model = build_classifier(config.model, config.image_size, config.weights, config.dropout)
    return model, policy


def check_split(frame: pd.DataFrame, config: TrainConfig) -> None:
    """Every split non-empty, and melanoma in val when checkpoints are chosen by its recall."""
    for split in ("train", "val", "test"):
        if not (frame["split"] == split).any():
            raise ValueError(f"the {split} split is empty: use more data or other fractions")
    val = frame[frame["split"] == "val"]
    if config.select_metric == "val_mel_recall" and not (val["label"] == MEL_INDEX).any():
        raise ConfigError(
            "select_metric='val_mel_recall' but the val split holds no melanoma: choose "
            "another select_metric or a larger subset"
        )


def prepare_resume(
    run_dir: Path, config: TrainConfig | None, data_root: str | os.PathLike | None
) -> tuple[Path, TrainConfig, Path]:
    """(run_dir, its stored config, its data root) for a resume, after checking the run is
    resumable: its files are there, it is unfinished, and `config` (if given) is its own."""
    from skin_tf.data import resolve_data_root

    stored = resumable_config(run_dir, "metrics.json", config_from_dict, config)
    check_inputs(stored)
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
