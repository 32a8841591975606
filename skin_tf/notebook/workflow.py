"""What the numbered notebooks share: their parameters, finding an earlier notebook's runs by name
(training them when absent), comparison tables and figure captions. The figures only a notebook
draws (the data in 01, the trade-off in 05) are in `skin_tf.notebook.eda`.

    >>> nb = setup(profile="smoke")  # doctest: +SKIP
    >>> run_dir = run_or_train(load_config("baseline", profile=nb.profile), nb)  # doctest: +SKIP
    >>> metrics_table({"baseline": run_dir})  # doctest: +SKIP

Relative paths (results, runs, saved_models, data/ham10000) are taken from the project root: the
folder above notebooks/ when a notebook runs from there, else the working directory. Runs are
found by name *and* config: a notebook reuses the newest finished run whose config.json equals
the config it asks for, resumes an unfinished one, and trains a new one otherwise.
"""

from __future__ import annotations

import os
import re
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import pandas as pd

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, DATA_ROOT_ENV, DEFAULT_DATA_ROOT, resolve_data_root
from skin_tf.evaluation.report import record_path
from skin_tf.evaluation.run_summary import HEADLINE, fmt_ci, headline, run_facts
from skin_tf.runs import git_sha, provenance, read_json, source_image_size
from skin_tf.training.config import PROFILES

if TYPE_CHECKING:
    from skin_tf.cvae.config import VaeConfig
    from skin_tf.training.config import TrainConfig

PROFILE_ENV = "SKIN_TF_PROFILE"
DEFAULT_PROFILE = "full"
_RUN_DIR = r"\d{8}T\d{6}Z__%s(-\d+)?"  # runs.create_run_dir: <UTC time>__<name>[-n]


# ---------------------------------------------------------------- parameters


@dataclass(frozen=True)
class Setup:
    """A notebook's resolved parameters: profile and absolute folders."""

    profile: str
    data_root: Path
    results_dir: Path
    runs_dir: Path
    saved_models_dir: Path

    @property
    def figures_dir(self) -> Path:
        return self.results_dir / "figures"

    @property
    def suffix(self) -> str:
        """ "" for the full profile, else "-cpu" / "-smoke": as in run names, so the figures of
        one profile never overwrite another's."""
        return "" if self.profile == "full" else f"-{self.profile}"


def project_root(cwd: str | os.PathLike | None = None) -> Path:
    """The folder relative paths start from: the parent of `notebooks/` when run there, else cwd.

    >>> project_root("/repo/notebooks")
    PosixPath('/repo')
    """
    folder = Path(cwd or Path.cwd()).resolve()
    return folder.parent if folder.name == "notebooks" else folder


def setup(
    data_dir: str | os.PathLike | None = None,
    profile: str | None = None,
    results_dir: str | os.PathLike = "results",
    runs_dir: str | os.PathLike = "runs",
    saved_models_dir: str | os.PathLike = "saved_models",
) -> Setup:
    """Resolve a notebook's parameters cell; checks the profile and that the data is there.

    data_dir None: $SKIN_TF_DATA, else data/ham10000. profile None: $SKIN_TF_PROFILE, else
    "full" (ImageNet weights, the configs as written); "cpu" and "smoke" as in
    skin_tf.training.config.

    >>> setup(profile="smoke").profile  # doctest: +SKIP
    'smoke'
    """
    profile = profile or os.environ.get(PROFILE_ENV) or DEFAULT_PROFILE
    if profile not in PROFILES:
        raise ConfigError(
            f"profile={profile!r} (from the parameters cell or ${PROFILE_ENV}) is not one of "
            f"{', '.join(PROFILES)}"
        )
    root = project_root()

    def place(path: str | os.PathLike) -> Path:
        path = Path(path).expanduser()
        return path if path.is_absolute() else root / path

    _figures_inline()
    if data_dir is not None:
        data_root = resolve_data_root(place(data_dir))
    elif os.environ.get(DATA_ROOT_ENV):
        data_root = resolve_data_root()
    else:
        data_root = resolve_data_root(root / DEFAULT_DATA_ROOT)
    return Setup(profile, data_root, place(results_dir), place(runs_dir), place(saved_models_dir))


def _figures_inline() -> None:
    """In a Jupyter kernel, show returned Figures (skin_tf builds them without pyplot)."""
    try:
        from IPython import get_ipython
    except ImportError:
        return
    shell = get_ipython()
    if shell is not None and hasattr(shell, "kernel"):
        shell.run_line_magic("matplotlib", "inline")


# ---------------------------------------------------------------- runs by name


def find_run(
    runs_dir: str | os.PathLike,
    run_name: str,
    config: Mapping[str, Any] | None = None,
    done_file: str = "metrics.json",
    finished: bool = True,
    complete: Callable[[dict[str, Any]], Mapping[str, Any]] | None = None,
) -> Path | None:
    """The newest run `runs_dir/<time>__<run_name>` with `done_file` (finished=True) or without
    it (finished=False), whose config.json equals `config` when given; None if there is none.

    complete: applied to a stored config.json before comparing, e.g. to give a run made before
    a config field existed that field's default (which is how that run behaved).

    >>> find_run("runs", "baseline-smoke")  # doctest: +SKIP
    PosixPath('runs/20250101T120000Z__baseline-smoke')
    """
    runs_dir = Path(runs_dir)
    if not runs_dir.is_dir():
        return None
    pattern = re.compile(_RUN_DIR % re.escape(run_name))
    for run_dir in sorted(runs_dir.iterdir(), reverse=True):  # names start with the UTC time
        if not (run_dir.is_dir() and pattern.fullmatch(run_dir.name)):
            continue
        if (run_dir / done_file).is_file() != finished:
            continue
        if config is None or _stored_config(run_dir, complete) == config:
            return run_dir
    return None


def _stored_config(
    run_dir: Path, complete: Callable[[dict[str, Any]], Mapping[str, Any]] | None
) -> Mapping[str, Any] | None:
    path = run_dir / "config.json"
    if not path.is_file():
        return None
    stored = read_json(path)
    if complete is None:
        return stored
    try:
        return complete(stored)
    except ConfigError:  # written by a version with keys or values this one no longer accepts
        return None


def run_or_train(config: TrainConfig, nb: Setup, run_name: str | None = None) -> Path:
    """A finished classifier run of `config` in nb.runs_dir: reused, resumed, or trained now.

    run_name defaults to skin_tf.training.run_dir.default_run_name ("baseline-smoke", …), so later
    notebooks find the runs of earlier ones.
    """
    from skin_tf.training.config import config_from_dict
    from skin_tf.training.fit import train
    from skin_tf.training.run_dir import default_run_name

    def start(name: str) -> Path:
        print(
            f"training {name} (profile {config.profile}: {config.model}, {config.image_size} px, "
            f"weights {config.weights}, {config.epochs} epochs)"
        )
        return train(config, data_root=nb.data_root, runs_dir=nb.runs_dir, run_name=name)

    return _reuse_resume_or_start(
        nb,
        run_name or default_run_name(config),
        config.to_dict(),
        complete=lambda stored: config_from_dict(stored).to_dict(),
        done_file="metrics.json",
        resume=lambda run_dir: train(resume=run_dir, data_root=nb.data_root),
        start=start,
    )


def vae_run_or_train(config: VaeConfig, nb: Setup) -> Path:
    """A finished cVAE run of `config` (named like `skin-tf train-vae` names it), or a new one."""
    from skin_tf.cvae.config import vae_config_from_dict
    from skin_tf.cvae.model import WEIGHTS_FILE, train_vae

    def start(name: str) -> Path:
        print(
            f"training the cVAE {name} (profile {config.profile}: {config.image_size} px, latent "
            f"{config.latent_dim}, {config.epochs} epochs)"
        )
        return train_vae(config, data_root=nb.data_root, runs_dir=nb.runs_dir, run_name=name)

    return _reuse_resume_or_start(
        nb,
        config.name if config.profile == "full" else f"{config.name}-{config.profile}",
        config.to_dict(),
        complete=lambda stored: vae_config_from_dict(stored).to_dict(),
        done_file=WEIGHTS_FILE,
        resume=lambda run_dir: train_vae(resume=run_dir, data_root=nb.data_root),
        start=start,
    )


def _reuse_resume_or_start(
    nb: Setup,
    name: str,
    wanted: Mapping[str, Any],
    *,
    complete: Callable[[dict[str, Any]], Mapping[str, Any]],
    done_file: str,
    resume: Callable[[Path], Path],
    start: Callable[[str], Path],
) -> Path:
    found = find_run(nb.runs_dir, name, wanted, done_file=done_file, complete=complete)
    if found is not None:
        print(f"reusing {found.name}: {provenance(found)}")
        return found
    unfinished = find_run(
        nb.runs_dir, name, wanted, done_file=done_file, finished=False, complete=complete
    )
    if unfinished is not None and (unfinished / "splits.csv").is_file():
        print(f"resuming the unfinished run {unfinished.name}")
        return resume(unfinished)
    return start(name)


@dataclass(frozen=True)
class Evaluation:
    """An evaluated run: its metrics.json and what `evaluate_run` wrote in the results folder."""

    run_dir: Path
    metrics: dict[str, Any]
    figures: dict[str, Path]  # "confusion", "curves", "recall"
    summary: Path | None  # results/summary_<run-name>.md


def evaluated(run_dir: str | os.PathLike, nb: Setup, again: bool = False) -> Evaluation:
    """Evaluate a run with `skin_tf.evaluation.evaluate.evaluate_run` (metrics with lesion-bootstrap
    intervals, figures, summary, results record), unless nb.results_dir already holds this run's
    record and again=False (then the stored evaluation is read back)."""
    from skin_tf.evaluation.evaluate import evaluate_run
    from skin_tf.runs import run_name_of

    run_dir = Path(run_dir)
    path = record_path(nb.results_dir, run_name_of(run_dir))
    record = read_json(path) if path.is_file() else {}
    metrics = read_json(run_dir / "metrics.json")
    if again or record.get("run_id") != run_dir.name or "evaluation" not in metrics:
        evaluate_run(run_dir, results_dir=nb.results_dir)
        record, metrics = read_json(path), read_json(run_dir / "metrics.json")
    summary = record.get("summary")
    return Evaluation(
        run_dir,
        metrics,
        {key: nb.results_dir / value for key, value in record.get("figures", {}).items()},
        None if summary is None else nb.results_dir / summary,
    )


def show(*paths: str | os.PathLike) -> None:
    """Display saved figures (PNG files) in the notebook, exactly as they were written."""
    from IPython.display import Image, display

    for path in paths:
        display(Image(filename=str(path)))


# ---------------------------------------------------------------- tables


def metrics_table(
    runs: Mapping[str, str | os.PathLike],
    splits: Sequence[str] = ("test",),
    facts: Sequence[str] = (),
) -> pd.DataFrame:
    """One row per run and split: `facts` from run_summary.run_facts (e.g. "image_size",
    "kept_epoch"), images, then the headline metrics as "value [95% CI]" (from metrics.json).

    >>> metrics_table({"baseline": run_dir}, splits=("val", "test"))  # doctest: +SKIP
    """
    rows = {}
    for label, run_dir in runs.items():
        known = run_facts(run_dir) if facts else {}
        stored = read_json(Path(run_dir) / "metrics.json")
        for split in splits:
            metrics = stored[split]
            row: dict[str, Any] = {key: known[key] for key in facts}
            row["images"] = metrics.get("n_images")
            for key, value in headline(metrics).items():
                if isinstance(value, dict):
                    row[dict(HEADLINE)[key]] = fmt_ci(value["value"], value["ci"])
            rows[label if len(splits) == 1 else f"{label} ({split})"] = row
    table = pd.DataFrame.from_dict(rows, orient="index")
    table.index.name = "run"
    return table


def recall_frame(split_metrics: Mapping[str, Any]) -> pd.DataFrame:
    """Per-class recall, its 95% interval (lo, hi; NaN when unknown) and support, from one split
    of an evaluated metrics.json: the input of `skin_tf.evaluation.plots.per_class_recall`."""
    per_class = split_metrics["per_class"]
    ci = split_metrics.get("ci_per_class_recall", {})

    def end(code: str, i: int) -> float:
        value = (ci.get(code) or (None, None))[i]
        return np.nan if value is None else float(value)

    return pd.DataFrame(
        {
            "recall": [per_class[c]["recall"] for c in CLASSES],
            "lo": [end(c, 0) for c in CLASSES],
            "hi": [end(c, 1) for c in CLASSES],
            "support": [per_class[c]["support"] for c in CLASSES],
        },
        index=list(CLASSES),
    )


def markdown_table(table: pd.DataFrame) -> str:
    """A pipe table of `table` (index as the first column), for results/*.md files."""
    header = [str(table.index.name or ""), *map(str, table.columns)]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for index, row in table.iterrows():
        cells = [str(index), *("" if pd.isna(v) else str(v) for v in row)]
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


def save_table(table: pd.DataFrame, path: str | os.PathLike, title: str, caption: str) -> Path:
    """Write `table` as markdown under a title and an italic line saying what produced it."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(f"# {title}\n\n_{caption}_\n\n{markdown_table(table)}\n", encoding="utf-8")
    return path


# ---------------------------------------------------------------- captions


def runs_caption(produced_by: str, run_dirs: Sequence[str | os.PathLike]) -> str:
    """Footer for a figure comparing runs: what produced it, the provenance the runs share, then
    what differs per run (`skin_tf.runs.provenance` parts).

    >>> runs_caption("03", [b0, sampler])  # doctest: +SKIP
    '03 · HAM10000 200x150 copy · weights: none · B0 64 px · … · runs: run baseline; run …'
    """
    parts = [provenance(run_dir).split(" · ") for run_dir in run_dirs]
    shared = [part for part in parts[0] if all(part in other for other in parts[1:])]
    per_run = "; ".join(" · ".join(p for p in run if p not in shared) for run in parts)
    return " · ".join([produced_by, *shared, *([f"runs: {per_run}"] if len(parts) > 1 else [])])


def data_caption(frame: pd.DataFrame, produced_by: str) -> str:
    """Footer for a figure of the data alone: which copy, how many images and lesions, code."""
    size = source_image_size(frame["path"].astype(str).tolist())
    copy = "HAM10000 full-size" if size == "600x450" else f"HAM10000 {size} copy"
    sha = git_sha()
    return (
        f"{produced_by} · {copy} · {len(frame):,} images, {frame['lesion_id'].nunique():,} lesions"
        f" · git {sha[:10] if sha else 'unknown'}"
    )
