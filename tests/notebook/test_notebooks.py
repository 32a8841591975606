"""The numbered notebooks and skin_tf.notebook.workflow (the notebooks' figures: test_eda.py).

Fast: every notebook is committed without outputs, starts with a papermill `parameters` cell, and
uses only public skin_tf names, called with arguments their current signatures accept; the helpers
in skin_tf.notebook.workflow on tiny synthetic data. Slow: all seven run top to bottom under the
smoke profile on the real data, in a temporary copy whose results/runs/saved_models are temporary
folders (the repository's results/ is never written).
"""

from __future__ import annotations

import ast
import importlib
import inspect
import json
import os
import shutil
import time
from pathlib import Path

import nbformat
import numpy as np
import pytest

from skin_tf.config_files import ConfigError
from skin_tf.data.ham10000 import CLASSES, DataError, read_metadata
from skin_tf.notebook import workflow as notebook
from skin_tf.training.config import load_config

REPO = Path(__file__).resolve().parents[2]
NOTEBOOK_DIR = REPO / "notebooks"
NAMES = (
    "01_eda",
    "02_baseline",
    "03_imbalance",
    "04_cvae",
    "05_effnetb2_tuning",
    "06_thresholding",
    "07_gradcam",
)
PARAMETERS = {
    "data_dir": None,
    "profile": None,
    "results_dir": "results",
    "runs_dir": "runs",
    "saved_models_dir": "saved_models",
}


def read_notebook(name: str) -> nbformat.NotebookNode:
    return nbformat.read(NOTEBOOK_DIR / f"{name}.ipynb", as_version=4)


def code_of(name: str) -> list[str]:
    return [cell.source for cell in read_notebook(name).cells if cell.cell_type == "code"]


# ---------------------------------------------------------------- the committed notebooks


def test_the_seven_notebooks_are_there_and_valid():
    found = sorted(p.stem for p in NOTEBOOK_DIR.glob("[0-9][0-9]_*.ipynb"))
    assert found == list(NAMES)
    for name in NAMES:
        nbformat.validate(read_notebook(name))


@pytest.mark.parametrize("name", NAMES)
def test_committed_without_outputs(name):
    for index, cell in enumerate(read_notebook(name).cells):
        if cell.cell_type != "code":
            continue
        assert cell.outputs == [], f"{name} cell {index} has outputs: clear them before committing"
        assert cell.execution_count is None, f"{name} cell {index} has an execution count"
        assert "injected-parameters" not in cell.metadata.get("tags", []), (
            f"{name} cell {index} is a papermill-injected cell: commit the source notebook"
        )


@pytest.mark.parametrize("name", NAMES)
def test_first_code_cell_is_the_parameters_cell(name):
    cells = [c for c in read_notebook(name).cells if c.cell_type == "code"]
    first = cells[0]
    assert "parameters" in first.metadata.get("tags", []), f"{name}: tag the first code cell"
    assigned = {}
    for node in ast.parse(first.source).body:
        assert isinstance(node, ast.Assign), f"{name}: the parameters cell holds assignments only"
        assigned[node.targets[0].id] = ast.literal_eval(node.value)
    for key, default in PARAMETERS.items():
        assert key in assigned, f"{name}: parameter {key} missing"
        assert assigned[key] == default, f"{name}: {key} defaults to {assigned[key]!r}"
    later = "\n".join(c.source for c in cells[1:])
    assert "notebook.setup(data_dir, profile, results_dir, runs_dir, saved_models_dir)" in later


@pytest.mark.parametrize("name", NAMES)
def test_mentions_only_public_skin_tf_api_with_valid_arguments(name):
    problems = api_problems(name, "\n\n".join(code_of(name)))
    assert not problems, "\n".join(problems)


def test_disclaimer_where_predictions_are_shown():
    for name in ("01_eda", "07_gradcam"):
        text = " ".join(c.source for c in read_notebook(name).cells if c.cell_type == "markdown")
        assert "not a medical device" in text, f"{name} needs the disclaimer"


def test_readme_lists_every_notebook():
    readme = (NOTEBOOK_DIR / "README.md").read_text(encoding="utf-8")
    for name in NAMES:
        assert f"{name}.ipynb" in readme, f"notebooks/README.md does not mention {name}"


def api_problems(name: str, source: str) -> list[str]:
    """Private or missing skin_tf names, and calls whose arguments the signature rejects."""
    tree = ast.parse(source)
    names: dict[str, object] = {}
    problems: list[str] = []

    def note(node: ast.AST, text: str) -> None:
        problems.append(f"{name}, code line {getattr(node, 'lineno', '?')}: {text}")

    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("skin_tf"):
            module = importlib.import_module(node.module)
            for alias in node.names:
                if alias.name.startswith("_"):
                    note(node, f"imports private {node.module}.{alias.name}")
                elif hasattr(module, alias.name):
                    names[alias.asname or alias.name] = getattr(module, alias.name)
                else:
                    try:  # a submodule: from skin_tf.notebook import workflow as notebook
                        found = importlib.import_module(f"{node.module}.{alias.name}")
                        names[alias.asname or alias.name] = found
                    except ImportError:
                        note(node, f"{node.module} has no {alias.name}")
        elif isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name.startswith("skin_tf"):
                    names[alias.asname or alias.name] = importlib.import_module(alias.name)

    def resolve(expr: ast.AST) -> object | None:
        if isinstance(expr, ast.Name):
            return names.get(expr.id)
        if isinstance(expr, ast.Attribute):
            base = resolve(expr.value)
            if inspect.ismodule(base) and base.__name__.startswith("skin_tf"):
                if expr.attr.startswith("_"):
                    note(expr, f"uses private {base.__name__}.{expr.attr}")
                    return None
                if not hasattr(base, expr.attr):
                    note(expr, f"{base.__name__} has no {expr.attr}")
                    return None
                return getattr(base, expr.attr)
        return None

    setup_fields = set(dir(notebook.Setup))
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            resolve(node)
            is_nb = isinstance(node.value, ast.Name) and node.value.id == "nb"
            if is_nb and node.attr not in setup_fields | set(notebook.Setup.__dataclass_fields__):
                note(node, f"nb.{node.attr} is not a field of skin_tf.notebook.workflow.Setup")
        if not isinstance(node, ast.Call):
            continue
        target = resolve(node.func)
        if target is None or not callable(target):
            continue
        if any(isinstance(a, ast.Starred) for a in node.args) or any(
            k.arg is None for k in node.keywords
        ):
            continue
        try:
            inspect.signature(target).bind(
                *[None] * len(node.args), **{k.arg: None for k in node.keywords}
            )
        except TypeError as err:
            note(node, f"{ast.unparse(node)[:80]}: {err}")
        except ValueError:  # no signature (builtins)
            continue
    return problems


def test_the_api_check_catches_private_names_and_bad_arguments():
    source = (
        "from skin_tf.notebook.workflow import setup, _RUN_DIR\n"
        "from skin_tf import notebook\n"
        "setup(dat_dir=1)\n"
        "notebook.no_such_helper()\n"
        "notebook.find_run('runs')\n"
        "nb.no_such_field\n"
    )
    problems = "\n".join(api_problems("check", source))
    assert "private skin_tf.notebook.workflow._RUN_DIR" in problems
    assert "dat_dir" in problems
    assert "has no no_such_helper" in problems
    assert "missing a required argument: 'run_name'" in problems
    assert "nb.no_such_field" in problems


# ---------------------------------------------------------------- skin_tf.notebook.workflow:
# parameters


def test_project_root_is_above_notebooks(tmp_path):
    assert notebook.project_root(tmp_path / "notebooks") == tmp_path
    assert notebook.project_root(tmp_path) == tmp_path


def test_setup_reads_the_environment_and_places_relative_paths(tmp_path, fake_root, monkeypatch):
    (tmp_path / "notebooks").mkdir()
    monkeypatch.chdir(tmp_path / "notebooks")
    monkeypatch.setenv("SKIN_TF_PROFILE", "cpu")
    monkeypatch.setenv("SKIN_TF_DATA", str(fake_root))
    nb = notebook.setup()
    assert nb.profile == "cpu" and nb.suffix == "-cpu"
    assert nb.data_root == fake_root.resolve()
    assert nb.results_dir == tmp_path / "results"
    assert nb.figures_dir == tmp_path / "results" / "figures"
    assert nb.runs_dir == tmp_path / "runs"
    explicit = notebook.setup(str(fake_root), "full", results_dir=tmp_path / "elsewhere")
    assert explicit.profile == "full" and explicit.suffix == ""
    assert explicit.results_dir == tmp_path / "elsewhere"


def test_setup_rejects_an_unknown_profile_and_missing_data(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("SKIN_TF_DATA", raising=False)
    monkeypatch.setenv("SKIN_TF_PROFILE", "fast")
    with pytest.raises(ConfigError, match="'fast'.*SKIN_TF_PROFILE"):
        notebook.setup()
    with pytest.raises(DataError, match="no HAM10000 data"):
        notebook.setup(profile="smoke")


# ---------------------------------------------------------------- runs by name


def make_run(runs: Path, folder: str, config: dict, finished: bool = True) -> Path:
    run_dir = runs / folder
    run_dir.mkdir(parents=True)
    (run_dir / "config.json").write_text(json.dumps(config))
    meta = {"run_name": folder.split("__")[1], "model": "efficientnet_b0", "weights": "none",
            "image_size": 64, "epochs": 1, "hardware": "CPU (2 cores)",
            "data": {"source_size": "200x150"}}  # fmt: skip
    (run_dir / "meta.json").write_text(json.dumps(meta))
    (run_dir / "splits.csv").write_text("image_id,lesion_id,dx,split\n")
    if finished:
        (run_dir / "metrics.json").write_text("{}")
    return run_dir


def test_find_run_matches_name_config_and_state(tmp_path):
    old = make_run(tmp_path, "20250101T000000Z__base-smoke", {"a": 1})
    new = make_run(tmp_path, "20250102T000000Z__base-smoke", {"a": 2})
    twin = make_run(tmp_path, "20250103T000000Z__base-smoke-2", {"a": 1}, finished=False)
    make_run(tmp_path, "20250104T000000Z__base-smoke-extra", {"a": 1})
    assert notebook.find_run(tmp_path, "base-smoke") == new
    assert notebook.find_run(tmp_path, "base-smoke", {"a": 1}) == old
    assert notebook.find_run(tmp_path, "base-smoke", {"a": 1}, finished=False) == twin
    assert notebook.find_run(tmp_path, "base-smoke", {"a": 3}) is None
    assert notebook.find_run(tmp_path, "base") is None
    assert notebook.find_run(tmp_path / "absent", "base-smoke") is None


def test_run_or_train_reuses_resumes_or_trains(tmp_path, fake_root, monkeypatch):
    # The module, not `skin_tf.training.fit`: the package exports the function under that name.
    train_module = importlib.import_module("skin_tf.training.fit")
    calls = []
    monkeypatch.setattr(train_module, "train", lambda *a, **k: calls.append(k) or Path("new"))
    nb = notebook.Setup("smoke", fake_root, tmp_path / "results", tmp_path / "runs", tmp_path)
    config = load_config("baseline", profile="smoke")

    assert notebook.run_or_train(config, nb) == Path("new")
    assert calls[-1]["run_name"] == "baseline-smoke" and calls[-1]["runs_dir"] == nb.runs_dir

    unfinished = make_run(nb.runs_dir, "20250101T000000Z__baseline-smoke", config.to_dict(), False)
    notebook.run_or_train(config, nb)
    assert calls[-1]["resume"] == unfinished

    finished = make_run(nb.runs_dir, "20250102T000000Z__baseline-smoke", config.to_dict())
    assert notebook.run_or_train(config, nb) == finished
    other = load_config("baseline", profile="smoke", overrides=["epochs=2"])
    notebook.run_or_train(other, nb)
    assert "resume" not in calls[-1] and len(calls) == 3


# ---------------------------------------------------------------- tables and captions


def split_metrics(recall_mel: float) -> dict:
    per_class = {c: {"precision": 0.5, "recall": 0.5, "f1": 0.5, "support": 4} for c in CLASSES}
    per_class["mel"]["recall"] = recall_mel
    return {
        "n_images": 28, "n_lesions": 20, "accuracy": 0.5, "macro_f1": 0.4,
        "balanced_accuracy": 0.45, "mel_sensitivity": recall_mel, "mel_specificity": 0.9,
        "mel_roc_auc": 0.8, "mel_average_precision": 0.6, "per_class": per_class,
        "ci": {"accuracy": [0.4, 0.6], "mel_sensitivity": [0.2, 0.9]},
        "ci_per_class_recall": {"mel": [0.25, 0.75], "nv": [None, None]},
    }  # fmt: skip


def test_metrics_table_and_recall_frame(tmp_path):
    run_dir = make_run(tmp_path, "20250101T000000Z__base", {"select_metric": "val_loss"})
    metrics = {"best_epoch": 1, "val": split_metrics(0.25), "test": split_metrics(0.5)}
    (run_dir / "metrics.json").write_text(json.dumps(metrics))
    table = notebook.metrics_table({"base": run_dir}, splits=("val", "test"), facts=["kept_epoch"])
    assert list(table.index) == ["base (val)", "base (test)"]
    assert table.loc["base (test)", "accuracy"] == "0.500 [0.400, 0.600]"
    assert table.loc["base (test)", "melanoma sensitivity"] == "0.500 [0.200, 0.900]"
    assert table.loc["base (val)", "macro-F1"] == "0.400"
    assert table.loc["base (val)", "kept_epoch"] == 1
    frame = notebook.recall_frame(metrics["test"])
    assert list(frame.index) == list(CLASSES)
    assert frame.loc["mel"].tolist() == [0.5, 0.25, 0.75, 4]
    assert np.isnan(frame.loc["nv", "lo"]) and np.isnan(frame.loc["bcc", "hi"])
    path = notebook.save_table(table, tmp_path / "t.md", title="T", caption="made by a test")
    text = path.read_text()
    assert text.startswith("# T\n\n_made by a test_\n\n| run | kept_epoch | images |")
    assert "| base (test) | 1 | 28 | 0.500 [0.400, 0.600] |" in text


def test_runs_caption_says_what_the_runs_share_then_what_differs(tmp_path):
    runs = [make_run(tmp_path, f"2025010{index}T000000Z__r{index}", {}) for index in (0, 1)]
    caption = notebook.runs_caption("a test", runs)
    assert caption.startswith("a test · HAM10000 200x150 copy · weights: none")
    assert caption.endswith("runs: run 20250100T000000Z__r0; run 20250101T000000Z__r1")


def test_data_caption_names_the_copy_and_counts(fake_root):
    frame = read_metadata(fake_root)
    caption = notebook.data_caption(frame, "a test")
    assert caption.startswith("a test · HAM10000 ") and f"{len(frame)} images" in caption
    assert f"{frame['lesion_id'].nunique()} lesions" in caption


# ---------------------------------------------------------------- running them (slow)


@pytest.fixture(scope="module")
def workspace(tmp_path_factory) -> Path:
    """A copy of notebooks/ in a temporary project folder shared by the notebooks, in order, so
    later notebooks find the runs of earlier ones as they do in a real session."""
    root = tmp_path_factory.mktemp("notebook_project")
    shutil.copytree(NOTEBOOK_DIR, root / "notebooks", ignore=shutil.ignore_patterns("executed"))
    return root


@pytest.mark.slow
@pytest.mark.parametrize("name", NAMES)
def test_notebook_runs_top_to_bottom_under_smoke(name, workspace, real_data_root, monkeypatch):
    papermill = pytest.importorskip("papermill")
    monkeypatch.setenv("SKIN_TF_PROFILE", "smoke")
    monkeypatch.setenv("SKIN_TF_DATA", str(real_data_root))
    # The kernel imports this checkout's skin_tf, whatever the environment has installed.
    monkeypatch.setenv(
        "PYTHONPATH", os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))
    )
    folders = {key: workspace / key for key in ("results", "runs", "saved_models")}
    started = time.time()
    executed = workspace / "executed" / f"{name}.ipynb"
    executed.parent.mkdir(exist_ok=True)
    papermill.execute_notebook(
        str(workspace / "notebooks" / f"{name}.ipynb"),
        str(executed),
        parameters={f"{key}_dir": str(path) for key, path in folders.items()},
        kernel_name="python3",
        cwd=str(workspace / "notebooks"),
        progress_bar=False,
    )
    written = [
        p.relative_to(folders["results"])
        for p in folders["results"].rglob("*")
        if p.is_file() and p.stat().st_mtime >= started - 1
    ]
    assert any(p.suffix == ".png" for p in written), f"{name} saved no figure under results/"
    touched = [
        p for p in written if (REPO / "results" / p).is_file()
        and (REPO / "results" / p).stat().st_mtime >= started - 1
    ]  # fmt: skip
    assert not touched, f"{name} wrote into the repository's results/: {touched}"
    for cell in nbformat.read(executed, as_version=4).cells:
        for output in cell.get("outputs", []):
            data = output.get("data", {})
            if str(data.get("text/plain", "")).startswith("<Figure size"):
                assert "image/png" in data, f"{name}: a figure was not shown as an image"


def test_find_run_completes_configs_written_before_a_field_existed(tmp_path):
    from skin_tf.training.config import config_from_dict, load_config

    wanted = load_config("baseline", profile="smoke").to_dict()
    older = {k: v for k, v in wanted.items() if k not in ("strategy", "lr_scaling")}
    run = make_run(tmp_path, "20250101T000000Z__baseline-smoke", older)
    make_run(tmp_path, "20250102T000000Z__baseline-smoke", {**wanted, "retired_key": 1})

    def complete(stored):
        return config_from_dict(stored).to_dict()

    assert notebook.find_run(tmp_path, "baseline-smoke", wanted) is None  # exact match misses it
    assert notebook.find_run(tmp_path, "baseline-smoke", wanted, complete=complete) == run
    changed = {**wanted, "epochs": wanted["epochs"] + 1}
    assert notebook.find_run(tmp_path, "baseline-smoke", changed, complete=complete) is None
