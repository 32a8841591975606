"""Quiet start-up: `skin-tf` shows TensorFlow's and LiteRT's C++ log only when it matters.

TensorFlow and LiteRT write their C++ log (absl's `I0000 … file.cc:31] message` lines, LiteRT's
`INFO: …`) straight to the process's stderr, file descriptor 2, not through Python. A student
reads `E0000 … failed call to cuInit: … CUDA error` as a failure, so by default the command:

- sets TF_CPP_MIN_LOG_LEVEL=2 (errors and worse) unless the user set it, before TensorFlow is
  imported (the commands import it lazily);
- sends fd 2 through a small filter process, because that level does not reach the lines absl
  prints before TensorFlow has set up its logging (`Could not find cuda drivers on your machine,
  GPU will not be used.` comes even with level 3). The filter drops C++ log lines below the level
  and the errors in `HARMLESS`, which are not errors on the machine they come from (cuInit fails
  when there is no NVIDIA driver at all; oneDNN falls back to its default kernels). Every other
  line passes, errors and fatal messages included; being a process of its own, the filter still
  writes them out when the command crashes.
- gives Python's own stderr (messages, warnings, tracebacks, progress bars) a direct line to the
  terminal, past the filter.

`--verbose` or SKIN_TF_VERBOSE=1 leaves all of this out: TensorFlow prints what it prints.
Child processes (the Streamlit page of `skin-tf app`) inherit the environment and the filter.

Example:
    >>> keep_line(b"E0000 00:00:17.7 99 cuda_platform.cc:52] failed call to cuInit: x", 2, False)
    False
    >>> keep_line(b"E0000 00:00:17.7 99 op_kernel.cc:1857] OP_REQUIRES failed: x", 2, False)
    True
"""

# Stdlib only: this file is also the filter process's script (`python -I -S quiet.py LEVEL GPU`).
from __future__ import annotations

import atexit
import contextlib
import io
import os
import re
import select
import signal
import subprocess
import sys
from collections.abc import Callable, MutableMapping
from pathlib import Path

ENV_VERBOSE = "SKIN_TF_VERBOSE"
ENV_LEVEL = "TF_CPP_MIN_LOG_LEVEL"
DEFAULT_LEVEL = "2"  # errors and fatal messages: what a user of the command needs to see
# absl's C++ log line (TensorFlow, XLA, the CUDA stubs): severity and date, time, thread id,
# file:line. Before absl is set up the time reads "00:00:1796537478.437781" (seconds since 1970).
_ABSL_LINE = re.compile(rb"^([IWEF])\d{4} [\d:.]+ +\d+ [^ \]]+:\d+\] ")
# LiteRT's minimal log ("INFO: Created TensorFlow Lite XNNPACK delegate for CPU.") and absl's
# "WARNING: All log messages before absl::InitializeLog() is called are written to STDERR".
_PLAIN_LINE = re.compile(rb"^(INFO|WARNING|ERROR|FATAL): ")
_SEVERITY = {
    b"I": 0,
    b"W": 1,
    b"E": 2,
    b"F": 3,
    b"INFO": 0,
    b"WARNING": 1,
    b"ERROR": 2,
    b"FATAL": 3,
}
# Error lines that are no error where they come from, each with when that holds. Anything not
# listed here, at the level or above, is shown.
HARMLESS: tuple[tuple[re.Pattern[bytes], str], ...] = (
    # TensorFlow's pip wheel has CUDA support and tries it on every machine: without an NVIDIA
    # driver cuInit must fail. With a driver present the line is kept: then it is a real problem.
    (re.compile(rb"failed call to cuInit"), "no_gpu_driver"),
    # oneDNN declines a uint8 op and TensorFlow runs its default kernel instead (the line goes
    # on "Falling back to the default …"); reported on AVX-512 machines too.
    (re.compile(rb"oneDNN supports \S+ only on platforms with AVX-512"), "always"),
)
_LIBRARY_DIRS = (
    "/usr/lib/x86_64-linux-gnu", "/usr/lib/aarch64-linux-gnu", "/usr/lib64", "/usr/lib",
    "/usr/local/nvidia/lib64", "/usr/lib/wsl/lib",
)  # fmt: skip
_FLUSH_PARTIAL_S = 0.2  # a line without its newline yet (a progress bar) is shown after this
_filtering = False  # once per process: `main` may be called more than once (tests, scripts)


def verbose_requested(flag: bool, environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether to leave TensorFlow's log as it is: `--verbose`, or SKIN_TF_VERBOSE set to
    anything but "", "0", "false" or "no".

    Example:
        >>> verbose_requested(False, {"SKIN_TF_VERBOSE": "1"}), verbose_requested(False, {})
        (True, False)
    """
    environ = os.environ if environ is None else environ
    return flag or environ.get(ENV_VERBOSE, "").strip().lower() not in ("", "0", "false", "no")


def log_level(environ: MutableMapping[str, str]) -> int:
    """TF_CPP_MIN_LOG_LEVEL as TensorFlow reads it (0 when unset or not a number), within 0..3.

    Example:
        >>> log_level({"TF_CPP_MIN_LOG_LEVEL": "2"}), log_level({})
        (2, 0)
    """
    try:
        return min(max(int(environ.get(ENV_LEVEL, "0")), 0), 3)
    except ValueError:
        return 0


def keep_line(line: bytes, level: int, gpu_driver: bool) -> bool:
    """Whether one line that reached fd 2 is shown: anything that is not a C++ log line, and log
    lines at `level` (TF_CPP_MIN_LOG_LEVEL) or above unless `HARMLESS` says otherwise.

    Example:
        >>> keep_line(b"INFO: Created TensorFlow Lite XNNPACK delegate for CPU.", 2, False)
        False
        >>> keep_line(b"Traceback (most recent call last):", 2, False)
        True
    """
    line = line.rsplit(b"\r", 1)[-1]  # a progress bar's repaints, then the line written last
    match = _ABSL_LINE.match(line) or _PLAIN_LINE.match(line)
    if match is None:
        return True
    if _SEVERITY[match.group(1)] < level:
        return False
    return not any(
        pattern.search(line) and (when == "always" or not gpu_driver) for pattern, when in HARMLESS
    )


def gpu_driver_present(environ: MutableMapping[str, str] | None = None) -> bool:
    """Whether this machine has an NVIDIA driver, so that a failed cuInit is a real error: the
    kernel driver's /proc entry (also seen in GPU containers) or the driver library libcuda in a
    system or LD_LIBRARY_PATH folder (WSL has only the latter). Files only: no subprocess at
    start-up."""
    environ = os.environ if environ is None else environ
    if Path("/proc/driver/nvidia/version").is_file():
        return True
    folders = [*_LIBRARY_DIRS, *filter(None, environ.get("LD_LIBRARY_PATH", "").split(":"))]
    return any(Path(folder, "libcuda.so.1").exists() for folder in folders)


def quiet_startup(verbose: bool = False, environ: MutableMapping[str, str] | None = None) -> bool:
    """Set up the quiet default before TensorFlow is imported; True when the filter runs.

    Sets TF_CPP_MIN_LOG_LEVEL to 2 unless it is set, then, when Python's stderr is the process's
    own (not redirected by a test or a notebook), filters fd 2 as the module docstring says, once
    per process; when the filter cannot start, the command goes on unfiltered. With `verbose` it
    does nothing. Call it first thing in the command.
    """
    environ = os.environ if environ is None else environ
    if verbose:
        return False
    environ.setdefault(ENV_LEVEL, DEFAULT_LEVEL)
    global _filtering
    if _filtering or os.name != "posix" or sys.stderr is None or sys.stderr is not sys.__stderr__:
        return _filtering
    try:
        _start_filter(log_level(environ), gpu_driver_present())
    except OSError:  # no process to spare, say: TensorFlow's log is noisy, nothing is lost
        return False
    _filtering = True
    return True


def _start_filter(level: int, gpu_driver: bool) -> None:
    sys.stderr.flush()
    terminal = os.dup(2)  # the real stderr, for the filter's output and Python's stderr
    read_end, write_end = os.pipe()
    try:
        process = subprocess.Popen(
            [sys.executable, "-I", "-S", __file__, str(level), str(int(gpu_driver))],
            stdin=read_end,
            stdout=terminal,
            stderr=terminal,
            start_new_session=True,  # Ctrl-C stops the command; the filter drains what it wrote
        )
    except OSError:
        for fd in (terminal, read_end, write_end):
            os.close(fd)
        raise
    os.close(read_end)
    os.dup2(write_end, 2)
    os.close(write_end)
    sys.stderr = io.TextIOWrapper(
        io.FileIO(os.dup(terminal), "w"),
        encoding=sys.stderr.encoding,
        errors=sys.stderr.errors,
        line_buffering=True,
        write_through=True,
    )

    def finish() -> None:
        os.dup2(terminal, 2)  # closes the pipe's last writer in this process: the filter ends
        # A child (the page's server) may still write to it: the filter then ends with it.
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=5)

    atexit.register(finish)


# ---------------------------------------------------------------- the filter process


def filter_stream(
    source: int, sink: int, keep: Callable[[bytes], bool], flush_after: float = _FLUSH_PARTIAL_S
) -> None:
    """Copy lines from file descriptor `source` to `sink` until end of file, leaving out those
    `keep` rejects; a last line without a newline is judged (and written) after `flush_after`
    seconds of quiet, so a progress bar still moves."""
    pending = b""
    while True:
        ready, _, _ = select.select([source], [], [], flush_after if pending else None)
        if not ready:
            if keep(pending):
                _write_all(sink, pending)
            pending = b""
            continue
        chunk = os.read(source, 65536)
        if not chunk:
            break
        *lines, pending = (pending + chunk).split(b"\n")
        shown = b"".join(line + b"\n" for line in lines if keep(line))
        if shown:
            _write_all(sink, shown)
    if pending and keep(pending):
        _write_all(sink, pending)


def _write_all(sink: int, data: bytes) -> None:
    while data:
        data = data[os.write(sink, data) :]


def _filter_main(argv: list[str]) -> int:
    level, gpu_driver = int(argv[0]), argv[1] == "1"
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # drain to the end whatever happens to the command
    try:
        filter_stream(0, 1, lambda line: keep_line(line, level, gpu_driver))
    except BrokenPipeError:  # the terminal went away
        return 0
    return 0


if __name__ == "__main__":
    sys.exit(_filter_main(sys.argv[1:]))
