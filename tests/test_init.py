"""The public API: every exported name resolves, and importing the package stays light."""

import subprocess
import sys

import skin_tf


def test_every_public_name_resolves():
    for name in skin_tf.__all__:
        assert getattr(skin_tf, name) is not None, name


def test_import_does_not_load_tensorflow():
    code = "import sys, skin_tf, skin_tf.cli; print('tensorflow' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
