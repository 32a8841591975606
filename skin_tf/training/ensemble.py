"""An ensemble of trained runs as a run of its own: `ensemble_run` combines the members' best.keras
(`skin_tf.models.ensemble.combine_classifiers`, their calibrated predictions pooled) into one
classifier and writes it into a new run directory with the members' split, so calibration, the
melanoma threshold, evaluation (a results row with intervals), Grad-CAM and export treat it like
any run.

    >>> run = ensemble_run(["runs/A__baseline-cpu", "runs/B__imbalance_sampler-cpu"],
    ...                    runs_dir="runs", name="ensemble-cpu")  # doctest: +SKIP

The members must have been calibrated (`skin-tf calibrate`: the pooling uses their temperatures),
split alike (the same splits.csv: no member may have trained on the ensemble's val or test
images) and trained at the same image size and resize rule. The run directory holds config.json
(the first member's, renamed, `model` "ensemble"), meta.json (with an `ensemble` block naming the
members, their temperatures and the pooling rule), splits.csv, best.keras and
predictions_{val,test}.csv + metrics.json from the combined model; it has no history.csv.
"""

from __future__ import annotations

import dataclasses
import datetime as dt
import os
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pandas as pd

from skin_tf.config_files import ConfigError
from skin_tf.runs import create_run_dir, git_sha, read_json, run_name_of, write_json

POOLING = (
    "renormalised geometric mean of the members' temperature-scaled probabilities "
    "(softmax of the mean of their logits / T), one Dense softmax head over their features"
)


@dataclasses.dataclass(frozen=True)
class Member:
    """One member run: its folder, temperature and the facts the ensemble must share."""

    run_dir: Path
    temperature: float
    image_size: Any
    resize: str
    splits: pd.DataFrame


def ensemble_run(
    run_dirs: Sequence[str | os.PathLike],
    runs_dir: str | os.PathLike = Path("runs"),
    name: str = "ensemble",
    data_root: str | os.PathLike | None = None,
) -> Path:
    """Combine the runs in `run_dirs` into a new run `runs_dir/<UTC time>__<name>`; return it.

    Every problem with the members (too few, missing files, no temperature, different splits,
    sizes or resize rules) is reported before anything is written. data_root: where the images
    are (default: the first member's data folder).
    """
    import keras

    from skin_tf.models.ensemble import combine_classifiers

    members = check_members([Path(d) for d in run_dirs])
    first = members[0].run_dir
    models = [keras.saving.load_model(m.run_dir / "best.keras", compile=False) for m in members]
    combined = combine_classifiers(models, [m.temperature for m in members])
    run_dir = create_run_dir(runs_dir, name)
    try:
        shutil.copy(first / "splits.csv", run_dir / "splits.csv")
        config = read_json(first / "config.json")
        config.update(
            name=name,
            model="ensemble",
            description=f"Ensemble of {len(members)} runs ("
            + ", ".join(run_name_of(m.run_dir) for m in members)
            + f"): {POOLING}.",
        )
        write_json(run_dir / "config.json", config)
        write_json(run_dir / "meta.json", _meta(members, run_dir, name))
        combined.save(run_dir / "best.keras")
        _predict_and_score(run_dir, combined, config, data_root)
    except BaseException:
        shutil.rmtree(run_dir, ignore_errors=True)  # no half-made run
        raise
    return run_dir


def check_members(run_dirs: list[Path]) -> list[Member]:
    """The members, after checking what an ensemble needs of them (ConfigError naming the fix)."""
    from skin_tf.evaluation.calibration import read_temperature

    if len(run_dirs) < 2:
        raise ConfigError(f"an ensemble needs at least 2 runs, got {len(run_dirs)}")
    if len({d.resolve() for d in run_dirs}) < len(run_dirs):
        raise ConfigError("a run is listed twice: list each member once")
    members = []
    for run_dir in run_dirs:
        for file in ("best.keras", "config.json", "splits.csv", "meta.json"):
            if not (run_dir / file).is_file():
                raise ConfigError(f"{run_dir} has no {file}: pass finished run directories")
        temperature = read_temperature(run_dir)
        if temperature is None:
            raise ConfigError(
                f"{run_dir} is not calibrated: run `skin-tf calibrate {run_dir}` first (the "
                "ensemble pools the members' temperature-scaled probabilities)"
            )
        config = read_json(run_dir / "config.json")
        splits = pd.read_csv(run_dir / "splits.csv")[["image_id", "split"]]
        members.append(
            Member(run_dir, temperature, config.get("image_size"), config.get("resize"), splits)
        )
    first = members[0]
    for member in members[1:]:
        if (
            not member.splits.sort_values("image_id")
            .reset_index(drop=True)
            .equals(first.splits.sort_values("image_id").reset_index(drop=True))
        ):
            raise ConfigError(
                f"{member.run_dir} and {first.run_dir} were split differently: an ensemble's "
                "members must share one splits.csv (same seed and fractions), or one of them "
                "has trained on the other's val or test images"
            )
        for what in ("image_size", "resize"):
            if getattr(member, what) != getattr(first, what):
                raise ConfigError(
                    f"{member.run_dir} has {what}={getattr(member, what)!r} but "
                    f"{first.run_dir} has {getattr(first, what)!r}: combine runs trained alike"
                )
    return members


def _meta(members: list[Member], run_dir: Path, name: str) -> dict[str, Any]:
    """The first member's meta.json (data, hardware, versions) with this run's own fields."""
    meta = read_json(members[0].run_dir / "meta.json")
    meta.update(
        run_name=run_dir.name.split("__", 1)[-1],
        config_name=name,
        created_utc=dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
        git_sha=git_sha(),
        model="ensemble",
        command=" ".join([Path(sys.argv[0]).name, *sys.argv[1:]]) if sys.argv else None,
        ensemble={
            "pooling": POOLING,
            "members": [
                {
                    "run_id": m.run_dir.name,
                    "model": read_json(m.run_dir / "meta.json").get("model"),
                    "temperature": m.temperature,
                    "train_seconds": read_json(m.run_dir / "meta.json").get("train_seconds"),
                }
                for m in members
            ],
        },
    )
    seconds = [m["train_seconds"] for m in meta["ensemble"]["members"]]
    meta["train_seconds"] = None if None in seconds else round(sum(seconds), 1)
    meta.pop("distribution", None)  # the members' training setup, not this run's
    return meta


def _predict_and_score(
    run_dir: Path, model: Any, config: dict[str, Any], data_root: str | os.PathLike | None
) -> None:
    """predictions_{val,test}.csv of the combined model and metrics.json (lesion bootstrap)."""
    from skin_tf.data.pipeline import make_dataset
    from skin_tf.data.splits import split_frames
    from skin_tf.evaluation.metrics import evaluate_split, read_predictions
    from skin_tf.training.fit import predict_frame

    root = data_root or read_json(run_dir / "meta.json").get("data", {}).get("root")
    frames = split_frames(run_dir / "splits.csv", root)
    report: dict[str, Any] = {"select_metric": None, "best_epoch": None, "tta": False}
    for split in ("val", "test"):
        images = make_dataset(
            frames[split], config["image_size"], training=False, resize=config["resize"]
        )
        predicted = predict_frame(model, images, frames[split])
        predicted.to_csv(run_dir / f"predictions_{split}.csv", index=False, float_format="%.6f")
        report[split] = evaluate_split(
            read_predictions(run_dir, split),
            n_boot=int(config.get("bootstrap", 1000)),
            seed=int(config.get("seed", 42)),
        )
    write_json(run_dir / "metrics.json", report)
