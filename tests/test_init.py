"""The public API: every exported name resolves, importing the package stays light, and the
examples in docstrings are true."""

import doctest
import importlib
import pkgutil
import subprocess
import sys

import pytest

import skin_tf

# serving/app.py is a Streamlit script (importing it draws the page), not a library module.
MODULES = sorted(
    m.name.removeprefix("skin_tf.")
    for m in pkgutil.walk_packages(skin_tf.__path__, "skin_tf.")
    if m.name != "skin_tf.serving.app"
)
SUBPACKAGES = sorted(m.name for m in pkgutil.iter_modules(skin_tf.__path__) if m.ispkg)


def test_every_public_name_resolves():
    for name in skin_tf.__all__:
        assert getattr(skin_tf, name) is not None, name


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_every_subpackage_name_resolves(name):
    package = importlib.import_module(f"skin_tf.{name}")
    assert package.__doc__, f"skin_tf.{name} says what it is for"
    for public in package.__all__:
        assert getattr(package, public) is not None, f"skin_tf.{name}.{public}"


def test_import_does_not_load_tensorflow():
    code = (
        "import sys, skin_tf, skin_tf.cli; "
        + "".join(f"import skin_tf.{name}; " for name in SUBPACKAGES)
        + "skin_tf.training.load_config('baseline', profile='cpu'); "  # configs load without it
        "print('tensorflow' in sys.modules)"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_hold(name):
    module = importlib.import_module(f"skin_tf.{name}")
    result = doctest.testmod(module, optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.failed == 0, f"{result.failed} docstring example(s) of skin_tf.{name} fail"
