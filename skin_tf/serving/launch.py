"""Starting the Streamlit page: the `skin-tf app` command and the settings the page reads back.

    skin-tf app                                  # every model in saved_models/
    skin-tf app --model saved_models/b0 --port 8502 --engine tflite

`app_command` runs `streamlit run skin_tf/serving/app.py -- --models-dir … [--model …]
[--engine …]`; the page script reads those arguments with `page_settings`, or the environment
(SKIN_TF_MODEL, SKIN_TF_MODELS_DIR, SKIN_TF_ENGINE) so tests can set them. Both sides of that
hand-over live here, so the arguments written and the arguments read cannot drift apart. What
the page does with its settings is in `skin_tf.serving.page`.

Example:
    >>> settings = page_settings(["--models-dir", "saved_models"], environ={})
    >>> settings.models_dir
    PosixPath('saved_models')
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

APP_PATH = Path(__file__).with_name("app.py")
ENV_MODEL = "SKIN_TF_MODEL"
ENV_MODELS_DIR = "SKIN_TF_MODELS_DIR"
ENV_ENGINE = "SKIN_TF_ENGINE"
ENGINES = ("savedmodel", "tflite", "tflite-int8")  # skin_tf.serving.engines.ENGINES, no numpy
DEFAULT_MODELS_DIR = Path("saved_models")


# ---------------------------------------------------------------- what the page reads


@dataclass(frozen=True)
class PageSettings:
    """Where the page looks for exported models, which one it opens first, and the engine it
    scores with first (None: each export's default)."""

    models_dir: Path
    model: Path | None = None
    engine: str | None = None


def is_exported_model(path: Path) -> bool:
    """True for a folder written by `skin-tf export` (SavedModel + metadata.json)."""
    return (path / "saved_model.pb").is_file() and (path / "metadata.json").is_file()


def page_settings(
    argv: Sequence[str] | None = None, environ: Mapping[str, str] | None = None
) -> PageSettings:
    """Settings from `--model/--models-dir` in argv (after `streamlit run app.py --`), else env.

    Unknown arguments are ignored: under AppTest argv is pytest's own command line.

    Example:
        >>> page_settings(["--model", "saved_models/b0"], environ={}).model
        PosixPath('saved_models/b0')
    """
    argv = sys.argv[1:] if argv is None else list(argv)
    environ = os.environ if environ is None else environ
    parser = argparse.ArgumentParser(add_help=False, allow_abbrev=False)
    parser.add_argument("--model", type=Path)
    parser.add_argument("--models-dir", type=Path)
    parser.add_argument("--engine")
    known, _ = parser.parse_known_args(argv)
    model = known.model or (Path(environ[ENV_MODEL]) if environ.get(ENV_MODEL) else None)
    models_dir = known.models_dir or Path(environ.get(ENV_MODELS_DIR) or DEFAULT_MODELS_DIR)
    engine = known.engine or environ.get(ENV_ENGINE) or None
    return PageSettings(models_dir=models_dir, model=model, engine=engine)


# ---------------------------------------------------------------- `skin-tf app`


def streamlit_command(
    model: str | os.PathLike | None,
    models_dir: str | os.PathLike,
    port: int,
    address: str,
    engine: str | None = None,
) -> list[str]:
    """The `python -m streamlit run skin_tf/serving/app.py …` command line `app_command` starts.

    Example:
        >>> streamlit_command(None, "saved_models", 8501, "127.0.0.1")[-3:]
        ['--', '--models-dir', 'saved_models']
    """
    command = [
        sys.executable,
        "-m",
        "streamlit",
        "run",
        str(APP_PATH),
        "--server.address",
        address,
        "--server.port",
        str(port),
        "--server.headless",
        "true",
        "--browser.gatherUsageStats",  # no usage statistics sent anywhere
        "false",
        "--client.toolbarMode",  # no "Deploy" button: this is a local page
        "minimal",
        "--server.fileWatcherType",  # users run the page, they do not edit it
        "none",
        "--",
        "--models-dir",
        str(models_dir),
    ]
    if model is not None:
        command += ["--model", str(model)]
    if engine is not None:
        command += ["--engine", engine]
    return command


def app_command(
    model: str | os.PathLike | None = None,
    models_dir: str | os.PathLike = DEFAULT_MODELS_DIR,
    port: int = 8501,
    address: str = "127.0.0.1",
    engine: str | None = None,
) -> int:
    """Run the Streamlit page until Ctrl-C; returns Streamlit's exit code.

    Example:
        >>> app_command("saved_models/b0", port=8502)  # doctest: +SKIP
        open http://127.0.0.1:8502 in a browser (Ctrl-C stops the page)
    """
    if model is not None and not is_exported_model(Path(model)):
        raise FileNotFoundError(
            f"{model} is not an exported model (needs saved_model.pb and metadata.json): "
            "create one with `skin-tf export RUN_DIR --out saved_models/NAME`"
        )
    if engine is not None and engine not in ENGINES:
        raise ValueError(f"unknown engine {engine!r}: choose one of {', '.join(ENGINES)}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be between 1 and 65535, got {port}")
    print(f"open http://{address}:{port} in a browser (Ctrl-C stops the page)", flush=True)
    process = subprocess.Popen(streamlit_command(model, models_dir, port, address, engine))
    try:
        return process.wait()
    except KeyboardInterrupt:  # Ctrl-C reaches Streamlit too; let it shut down cleanly
        return process.wait()


def add_app_arguments(parser: argparse.ArgumentParser) -> None:
    """The `skin-tf app` arguments (the CLI calls `app_command` with them).

    Example:
        >>> parser = argparse.ArgumentParser()
        >>> add_app_arguments(parser)
        >>> parser.parse_args(["--port", "8502"]).port
        8502
    """
    parser.add_argument("--model", type=Path, help="exported model to open first")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=DEFAULT_MODELS_DIR,
        help="folder of exported models for the picker (default: saved_models)",
    )
    parser.add_argument(
        "--engine",
        choices=ENGINES,
        help="engine for the probabilities (default: each export's fastest faithful one)",
    )
    parser.add_argument("--port", type=int, default=8501)
    parser.add_argument("--address", default="127.0.0.1", help="interface to listen on")
