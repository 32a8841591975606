"""`skin-tf app`: the Streamlit command line, starting it, and the settings the page reads back
(skin_tf.serving.launch). Fast: no server is started (subprocess.Popen is replaced)."""

from __future__ import annotations

import argparse
import subprocess
from pathlib import Path

import pytest

from skin_tf.serving import launch as launch
from tests.serving.test_app import fake_export

# ---------------------------------------------------------------- what the page reads


def test_settings_come_from_argv_then_environment_then_default():
    env = {launch.ENV_MODEL: "env/m", launch.ENV_MODELS_DIR: "env_models"}
    assert launch.page_settings([], environ={}) == launch.PageSettings(Path("saved_models"))
    assert launch.page_settings([], environ=env) == launch.PageSettings(
        Path("env_models"), Path("env/m")
    )
    from_argv = launch.page_settings(["--model", "a/b", "--models-dir", "mine"], environ=env)
    assert from_argv == launch.PageSettings(Path("mine"), Path("a/b"))
    # pytest's own arguments (what AppTest leaves in sys.argv) are ignored, not misread
    assert launch.page_settings(["tests/x.py", "-m", "slow", "-q"], environ={}).model is None
    assert launch.page_settings([], environ={launch.ENV_ENGINE: "tflite"}).engine == "tflite"
    assert launch.page_settings(["--engine", "savedmodel"], environ={}).engine == "savedmodel"


# ---------------------------------------------------------------- `skin-tf app`


def test_streamlit_command_runs_this_page_headless_on_the_address():
    command = launch.streamlit_command("saved_models/b0", "saved_models", 8502, "127.0.0.1")
    assert command[1:5] == ["-m", "streamlit", "run", str(launch.APP_PATH)]
    assert launch.APP_PATH.is_file()
    joined = " ".join(command)
    assert "--server.address 127.0.0.1 --server.port 8502 --server.headless true" in joined
    assert joined.endswith("-- --models-dir saved_models --model saved_models/b0")
    # What the page reads back from those arguments
    after = command[command.index("--") + 1 :]
    assert launch.page_settings(after, environ={}) == launch.PageSettings(
        Path("saved_models"), Path("saved_models/b0")
    )


def test_app_command_prints_the_url_and_returns_streamlits_code(tmp_path, monkeypatch, capsys):
    model = fake_export(tmp_path / "b0")
    started = []

    class FakeProcess:
        def __init__(self, command):
            started.append(command)

        def wait(self):
            return 3

    monkeypatch.setattr(subprocess, "Popen", FakeProcess)
    assert launch.app_command(model, tmp_path, 8600, "127.0.0.1") == 3
    assert "http://127.0.0.1:8600" in capsys.readouterr().out
    assert started[0][-2:] == ["--model", str(model)]
    launch.app_command(model, tmp_path, 8600, "127.0.0.1", engine="tflite-int8")
    assert started[1][-4:] == ["--model", str(model), "--engine", "tflite-int8"]
    after = started[1][started[1].index("--") + 1 :]
    assert launch.page_settings(after, environ={}).engine == "tflite-int8"


def test_app_command_refuses_a_folder_that_is_not_an_export(tmp_path):
    with pytest.raises(FileNotFoundError, match="skin-tf export RUN_DIR"):
        launch.app_command(tmp_path / "nothing", tmp_path)
    with pytest.raises(ValueError, match="port"):
        launch.app_command(None, tmp_path, port=0)
    with pytest.raises(ValueError, match="unknown engine 'onnx'"):
        launch.app_command(None, tmp_path, engine="onnx")


def test_app_arguments_default_to_the_local_page_on_saved_models():
    parser = argparse.ArgumentParser()
    launch.add_app_arguments(parser)
    args = parser.parse_args([])
    assert (args.model, args.models_dir, args.port, args.address) == (
        None,
        launch.DEFAULT_MODELS_DIR,
        8501,
        "127.0.0.1",
    )
    assert parser.parse_args(["--model", "saved_models/b0"]).model == Path("saved_models/b0")
