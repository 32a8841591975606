"""Quiet start-up (issue 34): which lines of TensorFlow's and LiteRT's C++ log the command shows,
the filter on file descriptor 2, and that real errors, a crash's last words and Python's own
output still get through. `skin-tf predict` on a real export: tests/serving/test_predict.py;
`make demo`: tests/cli/test_demo.py."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import threading

import pytest

from skin_tf.cli import quiet

# A line of C++ log on stderr, as issue 34 lists them: absl's "I0000 …", "E0000 …" (and W, F),
# its "before absl::InitializeLog()" banner and LiteRT's "INFO: …".
C_LOG_LINE = re.compile(r"^([IWEF]\d{4} |INFO: )|absl::InitializeLog", re.MULTILINE)

CUDART = b"I0000 00:00:1796537478.437781    3453 cudart_stub.cc:31] Could not find cuda drivers on your machine, GPU will not be used."  # noqa: E501
CUINIT = b"E0000 00:00:1796537481.722170    3453 cuda_platform.cc:52] failed call to cuInit: INTERNAL: CUDA error: Failed call to cuInit: UNKNOWN ERROR (303)"  # noqa: E501
ONEDNN = b"E0000 00:00:1796537490.100000    3453 mkl_util.h:120] oneDNN supports DT_UINT8 only on platforms with AVX-512. Falling back to the default Eigen-based implementation if present."  # noqa: E501
BANNER = b"WARNING: All log messages before absl::InitializeLog() is called are written to STDERR"
XNNPACK = b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU."
WARNING = (
    b"W0000 00:00:1796537490.2    3453 loader.cc:12] Compiled the loaded model, but no metrics"
)
REAL_ERROR = b"E0000 00:00:1796537491.0    3453 op_kernel.cc:1857] OP_REQUIRES failed at x.cc:9"
FATAL = b"F0000 00:00:1796537492.0    3453 status.cc:3] Check failed: shape.dims() == 4"


@pytest.mark.parametrize(
    ("line", "level", "gpu_driver", "kept"),
    [
        (CUDART, 2, False, False),  # below the level, although absl prints it regardless
        (CUDART, 0, False, True),  # a user who set TF_CPP_MIN_LOG_LEVEL=0 sees it
        (BANNER, 2, False, False),
        (XNNPACK, 2, False, False),
        (WARNING, 2, False, False),
        (WARNING, 1, False, True),
        (CUINIT, 2, False, False),  # no NVIDIA driver: cuInit must fail, nothing is wrong
        (CUINIT, 2, True, True),  # with a driver it is a real error and stays
        (ONEDNN, 2, True, False),  # TensorFlow falls back to its default kernel
        (REAL_ERROR, 2, False, True),
        (REAL_ERROR, 3, False, False),  # the user asked for fatal messages only
        (FATAL, 3, False, True),
        (b"ERROR: Didn't find op for builtin opcode 'CONV_2D'", 2, False, True),  # LiteRT's
        (b"Traceback (most recent call last):", 3, False, True),  # not C++ log: always shown
        (b"I0000 is not how a log line goes on", 2, False, True),
        (b"", 2, False, True),
        (b"\rpredict 3/3\r" + XNNPACK, 2, False, False),  # after a progress bar's repaint
    ],
)
def test_which_lines_are_shown(line, level, gpu_driver, kept):
    assert quiet.keep_line(line, level, gpu_driver) is kept


def test_the_level_is_the_user_s_and_verbose_can_come_from_the_environment():
    assert quiet.log_level({}) == 0 and quiet.log_level({"TF_CPP_MIN_LOG_LEVEL": "3"}) == 3
    assert quiet.log_level({"TF_CPP_MIN_LOG_LEVEL": "9"}) == 3
    assert quiet.log_level({"TF_CPP_MIN_LOG_LEVEL": "quiet"}) == 0  # as TensorFlow reads it
    assert quiet.verbose_requested(True, {}) and not quiet.verbose_requested(False, {})
    for value, verbose in (("1", True), ("yes", True), ("0", False), ("false", False)):
        assert quiet.verbose_requested(False, {"SKIN_TF_VERBOSE": value}) is verbose


def test_quiet_startup_sets_the_level_unless_the_user_did_or_asked_for_everything(monkeypatch):
    monkeypatch.setattr(quiet, "_start_filter", lambda level, gpu: None)  # not in pytest's process
    monkeypatch.setattr(quiet, "_filtering", False)
    monkeypatch.setattr(quiet.sys, "stderr", quiet.sys.__stderr__)  # as in the command
    environ: dict[str, str] = {}
    assert quiet.quiet_startup(environ=environ) is True
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "2"}
    mine = {"TF_CPP_MIN_LOG_LEVEL": "0"}
    quiet.quiet_startup(environ=mine)
    assert mine == {"TF_CPP_MIN_LOG_LEVEL": "0"}
    verbose: dict[str, str] = {}
    assert quiet.quiet_startup(verbose=True, environ=verbose) is False and verbose == {}


def test_when_the_filter_cannot_start_the_command_goes_on_unfiltered(monkeypatch):
    def no_process(*args, **kwargs):
        raise OSError("Resource temporarily unavailable")

    monkeypatch.setattr(quiet.subprocess, "Popen", no_process)
    monkeypatch.setattr(quiet, "_filtering", False)
    monkeypatch.setattr(quiet.sys, "stderr", quiet.sys.__stderr__)  # as in the command
    before, fds = os.fstat(2), len(os.listdir("/proc/self/fd"))
    environ: dict[str, str] = {}
    assert quiet.quiet_startup(environ=environ) is False
    assert environ == {"TF_CPP_MIN_LOG_LEVEL": "2"}  # the level still helps
    assert os.fstat(2) == before and len(os.listdir("/proc/self/fd")) == fds  # nothing leaked
    assert quiet.sys.stderr is quiet.sys.__stderr__


def test_the_filter_keeps_order_and_shows_a_partial_line_after_a_pause():
    source_read, source_write = os.pipe()
    sink_read, sink_write = os.pipe()
    keep = lambda line: quiet.keep_line(line, 2, False)  # noqa: E731
    pump = threading.Thread(target=quiet.filter_stream, args=(source_read, sink_write, keep, 0.05))
    pump.start()
    os.write(source_write, b"first\n" + CUDART + b"\n" + REAL_ERROR + b"\nprogress 10%")
    shown = b""
    while not shown.endswith(b"progress 10%"):  # no newline yet: shown after the pause
        shown += os.read(sink_read, 65536)
    os.write(source_write, b"\rprogress 20%\r" + XNNPACK + b"\nlast line without newline")
    os.close(source_write)
    pump.join(timeout=10)
    os.close(sink_write)
    while chunk := os.read(sink_read, 65536):
        shown += chunk
    # The bar's last repaint and the log line after it share a "line": judged by the log line.
    assert shown == b"first\n" + REAL_ERROR + b"\nprogress 10%last line without newline"


def _native_write(line: bytes) -> str:
    """Python code writing `line` straight to fd 2, past sys.stderr, as C++ code does."""
    return f"os.write(2, {line + bytes([10])!r})"


def _run_quietly(code: str, **env: str) -> subprocess.CompletedProcess:
    """`code` in a fresh Python after `quiet_startup()`, as the command runs it."""
    program = f"from skin_tf.cli.quiet import quiet_startup\nquiet_startup()\n{code}"
    environ = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    return subprocess.run(
        [sys.executable, "-c", program],
        env={**environ, **env},
        capture_output=True,
        timeout=60,
    )


def test_native_log_is_filtered_and_real_errors_survive_a_crash():
    """Lines written straight to fd 2 (as C++ code does) go through the filter; Python's own
    stderr does not; and a crash right after a fatal message (abort) still shows it, because the
    filter is a process of its own that drains the pipe after the command died."""
    code = "\n".join(
        [
            "import os, sys",
            _native_write(CUDART),
            _native_write(CUINIT),
            "print('python stderr', os.environ['TF_CPP_MIN_LOG_LEVEL'], file=sys.stderr)",
            _native_write(REAL_ERROR),
            _native_write(FATAL),
            "os.abort()",
        ]
    )
    done = _run_quietly(code)
    assert done.returncode != 0  # aborted
    err = done.stderr.decode()
    assert "python stderr 2" in err  # the level was set for TensorFlow
    assert REAL_ERROR.decode() in err and FATAL.decode() in err
    assert "cudart_stub" not in err and "cuInit" not in err


def test_a_user_level_and_verbose_are_honoured():
    code = "\n".join(["import os", _native_write(CUDART), _native_write(XNNPACK)])
    assert CUDART in _run_quietly(code, TF_CPP_MIN_LOG_LEVEL="0").stderr
    assert _run_quietly(code).stderr == b""
    program = f"from skin_tf.cli.quiet import quiet_startup\nquiet_startup(verbose=True)\n{code}"
    verbose = subprocess.run([sys.executable, "-c", program], capture_output=True, timeout=60)
    assert CUDART in verbose.stderr and XNNPACK in verbose.stderr
