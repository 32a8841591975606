"""The `skin-tf` command: `main` parses the command line (one small module per command group)
and `demo` runs `make demo`'s stages. Nothing below this layer imports it."""

from skin_tf.cli.main import main

__all__ = ["main"]
