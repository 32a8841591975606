"""`make demo` / `skin-tf demo`: from a fresh clone to a trained, explained model in the browser.

Stages, each printed with its elapsed time and skipped when its output already exists and belongs to
this run (a committed results/ record of an earlier run is rewritten, not reused):

    data      $SKIN_TF_DATA, else data/ham10000, else `skin-tf download` (no questions asked)
    train     the `demo` config (Lite0's ImageNet weights, installed with the package; without
              them, from scratch with a warning that names the install command)
    calibrate temperature scaling on validation
    threshold melanoma operating point chosen on validation, reported on test
    evaluate  metrics with lesion-bootstrap intervals, figures, results/summary_<run>.md
    export    saved_models/demo: SavedModel (serve + explain), LiteRT models, the
              out-of-distribution guard, metadata.json
    report    results/README.md
    card      results/MODEL_CARD.md for the demo run
    app       the Streamlit page on 127.0.0.1 (skipped with --no-app)

Warnings the library raises along the way (for notebook users, with a file name and source
line) are printed once each as the stage's notes, in the demo's own format.

Example:
    >>> run_demo(DemoSettings(profile="smoke", app=False))  # doctest: +SKIP
"""

from __future__ import annotations

import dataclasses
import json
import sys
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from skin_tf.data.ham10000 import DEFAULT_DATA_ROOT, DataError, resolve_data_root

DEMO_CONFIG = "demo"
PROFILES = ("full", "smoke")


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo reads and writes; `profile="smoke"` makes it tiny (tests, CI)."""

    profile: str = "full"
    data: Path | None = None
    runs_dir: Path = Path("runs")
    results_dir: Path = Path("results")
    model_dir: Path = Path("saved_models/demo")
    app: bool = True
    port: int = 8501

    @property
    def run_name(self) -> str:
        return "demo" if self.profile == "full" else f"demo-{self.profile}"


class _Stages:
    """Prints one line per stage with the time since the demo started, and each distinct warning
    a stage raised once, as a note of that stage (not as Python prints a warning: with the file
    name and source line of the library code that raised it).

    Example:
        >>> _Stages().run("card", False, "a card", lambda: warnings.warn("no test figures"))
        [demo      0s] card      a card …
        [demo      0s] card      note: no test figures
        [demo      0s] card      done
    """

    def __init__(self) -> None:
        self.start = time.monotonic()
        self.noted: set[str] = set()

    def say(self, stage: str, message: str) -> None:
        elapsed = time.monotonic() - self.start
        print(f"[demo {elapsed:6.0f}s] {stage:<9} {message}", flush=True)

    def run(self, stage: str, done: bool, what: str, action: Callable[[], Any]) -> Any:
        if done:
            self.say(stage, f"{what}: already there, reused")
            return None
        self.say(stage, f"{what} …")
        # The filters in force still decide which warnings count; only how they print changes.
        with warnings.catch_warnings(record=True) as caught:
            result = action()
        for warning in caught:
            message = str(warning.message)
            if message not in self.noted:  # calibrate, threshold and evaluate warn alike
                self.noted.add(message)
                self.say(stage, f"note: {message}")
        self.say(stage, "done")
        return result


def find_data(path: Path | None) -> Path:
    """The HAM10000 folder: `path`, $SKIN_TF_DATA or data/ham10000; downloaded there if absent."""
    from skin_tf.data.dataverse import DownloadError
    from skin_tf.data.download import download_ham10000

    try:
        return resolve_data_root(path)
    except DataError:
        if path is not None:
            raise
    target = DEFAULT_DATA_ROOT
    print(f"no HAM10000 found ($SKIN_TF_DATA unset, {target} empty): downloading it to {target}")
    try:
        return download_ham10000(target)
    except DownloadError as err:
        raise DataError(
            f"could not download HAM10000 ({err}).\nPut the data in {target} (or set SKIN_TF_DATA) "
            "and run `make demo` again."
        ) from err


def latest_run(runs_dir: Path, run_name: str) -> Path | None:
    """The newest run directory named `<time>__<run_name>` in runs_dir, finished or not."""
    runs = sorted(runs_dir.glob(f"*__{run_name}")) if runs_dir.is_dir() else []
    return runs[-1] if runs else None


def train_demo(settings: DemoSettings, data_root: Path) -> Path:
    """Train (or resume, or reuse) the demo run; without ImageNet weights, from scratch, warned."""
    from skin_tf.models.weights import WeightsUnavailableError
    from skin_tf.training.config import load_config
    from skin_tf.training.fit import train

    run = latest_run(settings.runs_dir, settings.run_name)
    if run is not None and (run / "metrics.json").is_file():
        return run
    if run is not None and (run / "config.json").is_file():
        print(f"resuming the unfinished demo run {run}")
        return train(resume=run, data_root=data_root)
    config = load_config(DEMO_CONFIG, profile=settings.profile)
    try:
        return train(config, data_root, settings.runs_dir, settings.run_name)
    except WeightsUnavailableError as err:
        print(
            f"WARNING: ImageNet weights unavailable, training from scratch instead (much weaker "
            f"in {config.epochs} epochs). To use them, follow this advice and re-run:\n{err}",
            file=sys.stderr,
        )
        config = dataclasses.replace(config, weights=None)
        return train(config, data_root, settings.runs_dir, settings.run_name)


def evaluated(results_dir: Path, run: Path) -> bool:
    """True when results/ already holds the evaluation of this very run (same run id); a record
    left by another run of the same name (a committed one, say) does not count."""
    from skin_tf.evaluation.report import record_path
    from skin_tf.runs import read_json

    record = record_path(results_dir, run.name.split("__", 1)[-1])
    return record.is_file() and read_json(record).get("run_id") == run.name


def _exported_from(model_dir: Path) -> str | None:
    path = model_dir / "metadata.json"
    return json.loads(path.read_text()).get("run_dir") if path.is_file() else None


def run_demo(settings: DemoSettings) -> Path:
    """Run every stage (see the module docstring); return the exported model folder."""
    from skin_tf.evaluation.calibration import calibrate_run
    from skin_tf.evaluation.evaluate import evaluate_run
    from skin_tf.evaluation.model_card import write_model_card
    from skin_tf.evaluation.report import build_results_index
    from skin_tf.evaluation.threshold import threshold_run
    from skin_tf.serving.export import export_run

    if settings.profile not in PROFILES:
        raise ValueError(f"demo profile {settings.profile!r}: use one of {', '.join(PROFILES)}")
    stages = _Stages()
    data_root = find_data(settings.data)
    stages.say("data", f"HAM10000 in {data_root}")
    run = latest_run(settings.runs_dir, settings.run_name)
    finished = run is not None and (run / "metrics.json").is_file()
    run = stages.run(
        "train", finished, f"{DEMO_CONFIG} config, profile {settings.profile}",
        lambda: train_demo(settings, data_root),
    ) or run  # fmt: skip
    stages.say("train", f"run directory {run}")
    results = settings.results_dir
    stages.run(
        "calibrate", (run / "temperature.json").is_file(), "temperature scaling on val",
        lambda: calibrate_run(run, results_dir=results),
    )  # fmt: skip
    stages.run(
        "threshold", (run / "operating_point.json").is_file(), "melanoma operating point on val",
        lambda: threshold_run(run, results_dir=results),
    )  # fmt: skip
    stages.run(
        "evaluate", evaluated(results, run),
        "metrics with intervals, figures, summary",
        lambda: evaluate_run(run, results_dir=results),
    )  # fmt: skip
    exported = _exported_from(settings.model_dir)
    same_run = exported is not None and Path(exported) == run.resolve()
    stages.run(
        "export", same_run, f"SavedModel + LiteRT models + OOD guard to {settings.model_dir}",
        # The demo owns saved_models/demo: a model exported from an older demo run is replaced.
        lambda: export_run(run, settings.model_dir, overwrite=exported is not None),
    )  # fmt: skip
    stages.run("report", False, f"{results / 'README.md'}", lambda: build_results_index(results))
    stages.run(
        "card", False, f"{results / 'MODEL_CARD.md'}", lambda: write_model_card(run, results)
    )
    if settings.app:
        from skin_tf.serving.launch import app_command

        stages.say("app", "starting the Streamlit page (research use only, not medical advice)")
        app_command(settings.model_dir, settings.model_dir.parent, settings.port)
    return settings.model_dir
