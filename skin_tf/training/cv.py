"""Lesion-grouped k-fold cross-validation: k ordinary run directories in one folder, mean ± sd.

Scheme. The test split that `split_by_lesion(config.fractions, config.seed)` gives a single run
of the config is held out unchanged. The other images (that run's train + val) are cut into k
folds by scikit-learn's StratifiedGroupKFold (stratified by dx, grouped by lesion_id, shuffled
with config.seed), so no lesion is in two folds. Fold i trains on the other k - 1 folds, picks
its checkpoint on fold i (its val split) and is then evaluated on fold i and on the held-out test
split. Across folds, the val figures are out-of-fold estimates; the test figures show how much
the same test set's result moves with the training data.

    >>> cv_dir = run_cv(load_config("baseline", profile="smoke"), folds=5)  # doctest: +SKIP
    >>> summarise_cv(cv_dir)["metrics"]["test"]["balanced_accuracy"]["mean"]  # doctest: +SKIP

Shell (the last line printed is the cv folder):

    skin-tf cv --config baseline --profile cpu --folds 5           # every fold, then the summary
    skin-tf cv --config baseline --folds 5 --cv-dir runs/cv-b0 --fold 3   # one fold (per machine)
    skin-tf cv --cv-dir runs/cv-b0 --summarise                     # aggregate the finished folds

A cv folder holds cv.json (config, folds, scheme), folds.csv (image_id, lesion_id, dx, fold;
fold -1 = held-out test), one run directory per fold (`<UTC>__fold<i>`, the usual run files) and
cv_summary.json / cv_summary.md. Folds are independent, so they can run in parallel: one
`--fold i` process per machine or GPU with the same `--cv-dir` (docs/scaling.md).
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
import warnings
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, DataError
from skin_tf.runs import create_run_dir, provenance, read_json, write_json
from skin_tf.training.config import TrainConfig, config_from_dict

CV_FILE = "cv.json"
FOLDS_FILE = "folds.csv"
SUMMARY_JSON = "cv_summary.json"
SUMMARY_MD = "cv_summary.md"
TEST_FOLD = -1  # folds.csv marks the held-out test images with this fold number
SCHEME = (
    "test split of split_by_lesion(fractions, seed) held out; the rest in k folds by "
    "StratifiedGroupKFold (stratified by dx, grouped by lesion_id, shuffled with seed); "
    "fold i: val = fold i, train = the other folds"
)
SUMMARY_METRICS = (
    "accuracy",
    "balanced_accuracy",
    "macro_f1",
    "mel_sensitivity",
    "mel_specificity",
    "mel_roc_auc",
    "mel_average_precision",
    *(f"recall_{code}" for code in CLASSES),
)


# ------------------------------------------------------------------ folds


def assign_folds(
    frame: pd.DataFrame, folds: int, seed: int = 42, fractions=(0.8, 0.1, 0.1)
) -> pd.DataFrame:
    """image_id, lesion_id, dx and `fold` (0..folds-1, or TEST_FOLD for the held-out test split).

    >>> plan = assign_folds(read_metadata(root), folds=5, seed=42)  # doctest: +SKIP
    >>> plan.groupby("fold")["lesion_id"].nunique()  # doctest: +SKIP
    """
    from sklearn.model_selection import StratifiedGroupKFold

    from skin_tf.data.splits import split_by_lesion

    if isinstance(folds, bool) or not isinstance(folds, int) or folds < 2:
        raise ValueError(f"folds={folds!r}: cross-validation needs a whole number of folds >= 2")
    split = split_by_lesion(frame, fractions=fractions, seed=seed)
    rest = np.flatnonzero(split["split"].to_numpy() != "test")
    dx = split["dx"].astype(str).to_numpy()[rest]
    lesions = split["lesion_id"].astype(str).to_numpy()[rest]
    if len(np.unique(lesions)) < folds:
        raise DataError(
            f"{len(np.unique(lesions))} lesions outside the test split cannot make {folds} "
            "folds: use fewer folds or more data (a larger subset_per_class)"
        )
    fold = np.full(len(split), TEST_FOLD)
    splitter = StratifiedGroupKFold(n_splits=folds, shuffle=True, random_state=seed)
    # Rare classes are reported by fit.check_split when a fold trains.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "The least populated class", UserWarning)
        for i, (_, held) in enumerate(splitter.split(dx, dx, groups=lesions)):
            fold[rest[held]] = i
    out = split[["image_id", "lesion_id", "dx"]].reset_index(drop=True)
    out["fold"] = fold
    return out


def fold_splits(plan: pd.DataFrame, fold: int) -> pd.DataFrame:
    """image_id and split of fold `fold`: val = that fold, test = TEST_FOLD, train = the rest.

    >>> fold_splits(plan, 0)["split"].value_counts()  # doctest: +SKIP
    """
    folds = sorted(set(plan["fold"]) - {TEST_FOLD})
    if fold not in folds:
        raise ValueError(f"fold {fold!r} does not exist: this plan has folds {folds}")
    split = np.where(
        plan["fold"] == TEST_FOLD, "test", np.where(plan["fold"] == fold, "val", "train")
    )
    return pd.DataFrame({"image_id": plan["image_id"].to_numpy(), "split": split})


# ------------------------------------------------------------------ the cv folder


def plan_for(config: TrainConfig, folds: int, data_root: str | os.PathLike | None = None):
    """(plan, data root): the fold plan of `config` on the data (subset first, like a run)."""
    from skin_tf.data.ham10000 import read_metadata, resolve_data_root
    from skin_tf.data.splits import lesion_subset

    root = resolve_data_root(data_root)
    frame = read_metadata(root)
    if config.subset_per_class is not None:
        frame = lesion_subset(frame, config.subset_per_class, seed=config.seed)
    return assign_folds(frame, folds, config.seed, config.fractions), root


def prepare_cv(
    config: TrainConfig,
    folds: int,
    plan: pd.DataFrame,
    data_root: Path,
    runs_dir: str | os.PathLike = "runs",
    cv_dir: str | os.PathLike | None = None,
) -> Path:
    """Create the cv folder (cv.json, folds.csv), or check that an existing one is this cv.

    cv_dir None: a new `runs_dir/<UTC>__cv-<config name>[-<profile>]`. A given cv_dir is made
    if missing; if it already holds a cv, its config, folds and fold plan must match (so several
    machines can each train their folds into it).
    """
    from skin_tf.training.run_dir import default_run_name

    if cv_dir is None:
        cv_dir = create_run_dir(runs_dir, f"cv-{default_run_name(config)}")
    cv_dir = Path(cv_dir)
    cv_dir.mkdir(parents=True, exist_ok=True)
    record = {
        "folds": folds,
        "scheme": SCHEME,
        "config": config.to_dict(),
        "data": {
            "root": str(Path(data_root).resolve()),
            "n_images": len(plan),
            "n_test": int((plan["fold"] == TEST_FOLD).sum()),
        },
        "created_utc": dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    existing = cv_dir / CV_FILE
    if existing.is_file():
        stored = read_json(existing)
        if stored.get("folds") != folds or stored.get("config") != record["config"]:
            raise ConfigError(
                f"{cv_dir} holds a different cross-validation ({stored.get('folds')} folds of "
                f"config {stored.get('config', {}).get('name')!r}, profile "
                f"{stored.get('config', {}).get('profile')!r}): use another --cv-dir, or the "
                "same --config/--profile/--set/--folds as before"
            )
        on_disk = pd.read_csv(cv_dir / FOLDS_FILE, dtype={"image_id": str, "lesion_id": str})
        if not on_disk[["image_id", "fold"]].equals(plan[["image_id", "fold"]]):
            raise DataError(
                f"{cv_dir / FOLDS_FILE} differs from the folds made from {data_root}: this "
                "machine sees other data; point --data at the same HAM10000 copy"
            )
        return cv_dir
    _write_atomically(cv_dir / FOLDS_FILE, plan.to_csv(index=False))
    write_json(cv_dir / f".{CV_FILE}.tmp", record)
    os.replace(cv_dir / f".{CV_FILE}.tmp", existing)  # cv.json last: it marks a complete folder
    return cv_dir


def _write_atomically(path: Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    temporary.write_text(text, encoding="utf-8")
    os.replace(temporary, path)


def read_cv(cv_dir: str | os.PathLike) -> tuple[TrainConfig, int, pd.DataFrame]:
    """(config, folds, plan) of an existing cv folder."""
    cv_dir = Path(cv_dir)
    if not (cv_dir / CV_FILE).is_file():
        raise FileNotFoundError(
            f"{cv_dir} is not a cross-validation folder (no {CV_FILE}): start one with "
            "`skin-tf cv --config NAME --folds K`"
        )
    record = read_json(cv_dir / CV_FILE)
    config = config_from_dict(record["config"], source=str(cv_dir / CV_FILE))
    plan = pd.read_csv(cv_dir / FOLDS_FILE, dtype={"image_id": str, "lesion_id": str})
    return config, int(record["folds"]), plan


def fold_runs(cv_dir: str | os.PathLike, fold: int) -> list[Path]:
    """Run directories of fold `fold` in the cv folder (usually one), oldest first."""
    # create_run_dir adds "-2", "-3", ... when two runs start in the same second
    pattern = re.compile(rf"fold{fold}(-\d+)?")
    return sorted(
        p
        for p in Path(cv_dir).glob(f"*__fold{fold}*")
        if p.is_dir() and pattern.fullmatch(p.name.split("__", 1)[1])
    )


# ------------------------------------------------------------------ training


def existing_fold_run(cv_dir: str | os.PathLike | None, fold: int) -> Path | None:
    """The run directory fold `fold` already has in `cv_dir` (finished or not), or None.

    More than one unfinished directory for a fold is an error (which one to resume?).
    """
    runs = [] if cv_dir is None else fold_runs(cv_dir, fold)
    complete = [r for r in runs if (r / "metrics.json").is_file()]
    if complete:
        return complete[-1]
    if len(runs) > 1:
        raise FileExistsError(
            f"fold {fold} has {len(runs)} unfinished run directories in {cv_dir} "
            f"({', '.join(r.name for r in runs)}): delete all but one, then run the fold again"
        )
    return runs[0] if runs else None


def train_fold(
    config: TrainConfig,
    plan: pd.DataFrame,
    fold: int,
    cv_dir: Path | None,
    data_root: str | os.PathLike | None = None,
    existing: Path | None = None,
) -> Path | None:
    """Train fold `fold` into `cv_dir/<UTC>__fold<fold>`; returns its run directory.

    existing (see existing_fold_run): a finished run is kept and returned, an unfinished one is
    resumed from its backup. Non-chief workers of a multi-worker run return None (they pass
    cv_dir None when they cannot see the chief's new folder).
    """
    from skin_tf.training.fit import train

    if existing is not None and (existing / "metrics.json").is_file():
        print(f"fold {fold}: already trained in {existing}")
        return existing
    if existing is not None:
        print(f"fold {fold}: resuming {existing}")
        return train(resume=existing, data_root=data_root)
    return train(
        config,
        data_root,
        runs_dir=cv_dir or Path("."),  # unused by non-chief workers, which write to a temp dir
        run_name=f"fold{fold}",
        splits=fold_splits(plan, fold),
    )


def run_cv(
    config: TrainConfig,
    folds: int = 5,
    *,
    data_root: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = "runs",
    cv_dir: str | os.PathLike | None = None,
    only_folds: Iterable[int] | None = None,
) -> Path | None:
    """Prepare the cv folder and train its folds (all, or `only_folds`), one after another.

    With strategy "multi_worker" every fold is trained data-parallel by all workers; only the
    chief writes (non-chief workers return None). To run folds in parallel instead, start one
    process per fold with `only_folds=[i]` and the same `cv_dir`.
    """
    from skin_tf.training.distribute import read_tf_config

    plan, root = plan_for(config, folds, data_root)
    task = read_tf_config() if config.strategy == "multi_worker" else None
    chief = task is None or task.is_chief
    wanted = list(range(folds)) if only_folds is None else sorted(set(only_folds))
    bad = [i for i in wanted if not 0 <= i < folds]
    if bad:
        raise ValueError(f"fold(s) {bad} do not exist: folds are numbered 0..{folds - 1}")
    if chief:
        cv_dir = prepare_cv(config, folds, plan, root, runs_dir, cv_dir)
    folder = None if cv_dir is None else Path(cv_dir)
    # Every worker decides what each fold needs before any of them starts training: later the
    # chief's new fold directories would make a slower worker resume instead of start.
    existing = {fold: existing_fold_run(folder, fold) for fold in wanted}
    for fold in wanted:
        train_fold(config, plan, fold, folder, root, existing[fold])
    return folder if chief else None


# ------------------------------------------------------------------ summary


def fold_metrics(run_dir: str | os.PathLike) -> dict[str, dict[str, float | None]]:
    """{"val": {metric: value}, "test": {...}} of one fold's metrics.json (SUMMARY_METRICS)."""
    report = read_json(Path(run_dir) / "metrics.json")
    out: dict[str, dict[str, float | None]] = {}
    for split in ("val", "test"):
        values = report[split]
        flat: dict[str, float | None] = {}
        for name in SUMMARY_METRICS:
            if name.startswith("recall_"):
                value = values["per_class"][name.removeprefix("recall_")]["recall"]
            else:
                value = values.get(name)
            flat[name] = None if value is None or not math.isfinite(value) else float(value)
        out[split] = flat
    return out


def mean_sd(values: Iterable[float | None]) -> dict[str, Any]:
    """Mean and sample standard deviation (ddof 1) of the non-missing values.

    >>> mean_sd([0.5, 0.7, None])
    {'mean': 0.6, 'sd': 0.14142135623730948, 'n': 2}
    """
    present = np.array([v for v in values if v is not None], dtype=np.float64)
    if present.size == 0:
        return {"mean": None, "sd": None, "n": 0}
    sd = float(present.std(ddof=1)) if present.size > 1 else None
    return {"mean": float(present.mean()), "sd": sd, "n": int(present.size)}


def summarise_cv(cv_dir: str | os.PathLike) -> dict[str, Any]:
    """Aggregate the finished folds: mean ± sd per metric, written to cv_summary.json and .md.

    Unfinished folds are listed under "missing" (and in the markdown), never silently dropped.
    """
    cv_dir = Path(cv_dir)
    config, folds, _ = read_cv(cv_dir)
    finished: dict[int, Path] = {}
    for fold in range(folds):
        complete = [r for r in fold_runs(cv_dir, fold) if (r / "metrics.json").is_file()]
        if len(complete) > 1:
            raise FileExistsError(
                f"fold {fold} was trained twice in {cv_dir} ({', '.join(r.name for r in complete)})"
                ": delete one so each fold counts once"
            )
        if complete:
            finished[fold] = complete[0]
    if not finished:
        raise FileNotFoundError(
            f"no finished folds in {cv_dir}: train them with `skin-tf cv --cv-dir {cv_dir} "
            "--config … --fold I` (or without --fold for all)"
        )
    per_fold = {fold: fold_metrics(run) for fold, run in finished.items()}
    metrics = {
        split: {
            name: {
                **mean_sd(per_fold[f][split][name] for f in finished),
                "values": [per_fold[f][split][name] for f in finished],
            }  # fmt: skip
            for name in SUMMARY_METRICS
        }
        for split in ("val", "test")
    }
    summary = {
        "config_name": config.name,
        "profile": config.profile,
        "folds": folds,
        "finished": sorted(finished),
        "missing": [f for f in range(folds) if f not in finished],
        "runs": {str(f): run.name for f, run in sorted(finished.items())},
        "scheme": SCHEME,
        "metrics": metrics,
        "caption": _caption(cv_dir, config, folds, finished),
    }
    write_json(cv_dir / SUMMARY_JSON, summary)
    (cv_dir / SUMMARY_MD).write_text(summary_markdown(summary), encoding="utf-8")
    return summary


def _caption(cv_dir: Path, config: TrainConfig, folds: int, finished: dict[int, Path]) -> str:
    first = finished[min(finished)]
    return (
        f"{len(finished)} of {folds} folds of lesion-grouped {folds}-fold cross-validation of "
        f"{config.name} ({config.profile} profile) in {cv_dir.name} · first fold: "
        f"{provenance(first)}"
    )


def _cell(stat: dict[str, Any]) -> str:
    if stat["mean"] is None:
        return "–"
    sd = "–" if stat["sd"] is None else f"{stat['sd']:.3f}"
    return f"{stat['mean']:.3f} ± {sd} (n={stat['n']})"


def summary_markdown(summary: dict[str, Any]) -> str:
    """The summary as a markdown table: metric | val (out-of-fold) | test, mean ± sd (n)."""
    lines = [
        f"# Cross-validation: {summary['config_name']} ({summary['profile']} profile)",
        "",
        f"{len(summary['finished'])} of {summary['folds']} folds finished"
        + (f"; missing folds: {summary['missing']}" if summary["missing"] else "")
        + ". Mean ± sample standard deviation over folds (n = folds with a value).",
        "",
        "| metric | val (out-of-fold) | test (held out, same for every fold) |",
        "|---|---|---|",
    ]
    for name in SUMMARY_METRICS:
        val, test = summary["metrics"]["val"][name], summary["metrics"]["test"][name]
        lines.append(f"| {name} | {_cell(val)} | {_cell(test)} |")
    lines += ["", f"Scheme: {summary['scheme']}.", "", f"_{summary['caption']}_", ""]
    return "\n".join(lines)


# ------------------------------------------------------------------ command line


def cv_command(
    config: TrainConfig | None,
    folds: int | None,
    *,
    data_root: str | os.PathLike | None = None,
    runs_dir: str | os.PathLike = "runs",
    cv_dir: str | os.PathLike | None = None,
    only_folds: Iterable[int] | None = None,
    summarise_only: bool = False,
) -> int:
    """`skin-tf cv`: train folds (all or `only_folds`), then summarise what has finished.

    Prints the summary table when at least one fold has finished, and the cv folder last.
    summarise_only: just aggregate the finished folds of `cv_dir`.
    """
    if summarise_only:
        if cv_dir is None:
            raise ConfigError("--summarise needs --cv-dir (the folder of a cross-validation)")
    else:
        if config is None or folds is None:
            raise ConfigError("give --config NAME|PATH and --folds K (or --cv-dir DIR --summarise)")
        cv_dir = run_cv(
            config, folds, data_root=data_root, runs_dir=runs_dir, cv_dir=cv_dir,
            only_folds=only_folds,
        )  # fmt: skip
        if cv_dir is None:  # a non-chief worker: the chief reports
            return 0
    summary = summarise_cv(cv_dir)
    print(summary_markdown(summary))
    print(Path(cv_dir))
    return 0
