"""The package's shape: subpackages per concern, layered so imports only point down.

`make lint` runs `lint-imports` with the contracts in pyproject.toml; these tests run the same
contracts, show that they catch an upward import, and keep the folder from going flat again.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SUBPACKAGES = ("data", "models", "training", "evaluation", "explain", "serving", "cvae", "cli")
LINT_IMPORTS = Path(sys.executable).with_name("lint-imports")


def lint_imports(root: Path) -> subprocess.CompletedProcess:
    if not LINT_IMPORTS.exists():
        pytest.skip("lint-imports is not installed: pip install -e '.[dev]'")
    env = {**os.environ, "PYTHONPATH": str(root)}
    return subprocess.run(
        [str(LINT_IMPORTS), "--no-cache"], cwd=root, env=env, capture_output=True, text=True
    )


def test_the_layer_contracts_hold():
    result = lint_imports(REPO)
    assert result.returncode == 0, result.stdout[-3000:]
    assert "BROKEN" not in result.stdout and result.stdout.count("KEPT") == 2


@pytest.mark.parametrize(
    ("module", "upward_import", "broken"),
    [
        ("data/splits.py", "from skin_tf.training.fit import train", "Layers"),
        ("evaluation/metrics.py", "from skin_tf.serving.export import load_served", "Layers"),
        ("serving/export.py", "from skin_tf.cvae.model import load_vae", "Layers"),
        (
            "evaluation/metrics.py",
            "from skin_tf.evaluation.calibration import read_temperature",
            "circles",
        ),
    ],
)
def test_an_upward_import_or_a_circle_breaks_a_contract(tmp_path, module, upward_import, broken):
    shutil.copytree(REPO / "skin_tf", tmp_path / "skin_tf")
    shutil.copy(REPO / "pyproject.toml", tmp_path)
    target = tmp_path / "skin_tf" / module
    target.write_text(target.read_text() + f"\n{upward_import}  # noqa\n")
    result = lint_imports(tmp_path)
    assert result.returncode != 0
    assert f"{broken}" in result.stdout.split("Broken contracts")[-1]


def test_the_package_folder_holds_subpackages_not_a_phone_book():
    top_level = sorted(p.name for p in (REPO / "skin_tf").glob("*.py"))
    assert top_level == ["__init__.py", "config_files.py", "runs.py"]
    for name in SUBPACKAGES:
        assert (REPO / "skin_tf" / name / "__init__.py").is_file(), name


def test_tests_mirror_the_package():
    """Every test module names a module of the package (tests/<subpackage>/test_<module>.py)."""
    package = REPO / "skin_tf"
    extra = {"test_init.py", "test_architecture.py", "test_notebooks.py", "test_app_browser.py"}
    for test in (REPO / "tests").rglob("test_*.py"):
        if test.name in extra:
            continue
        folder = package / test.parent.relative_to(REPO / "tests")
        module = test.name.removeprefix("test_")
        assert (folder / module).is_file() or (folder / module.removesuffix(".py")).is_dir(), test
