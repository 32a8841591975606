"""End to end: `skin-tf app`'s server on 127.0.0.1, driven by headless Debian Chromium (Playwright).

Needs Debian's `chromium` (/usr/bin/chromium, or $SKIN_TF_CHROMIUM) and the `playwright` Python
package (its bundled browsers are not used); skips with the reason when either is missing.

The committed screenshot is made with the same code:

    python -m tests.serving.test_app_browser --model saved_models/NAME \\
        --image ../shared/data/ham10000/images/ISIC_0024306.jpg --out results/streamlit_demo.png

(several --image files are uploaded together, e.g. a lesion and a photo that is no lesion)
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pytest

from skin_tf.data.ham10000 import CLASSES

CHROMIUM = Path(os.environ.get("SKIN_TF_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--no-proxy-server",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SERVER_START_S = 90  # python + streamlit start-up on a loaded 2-core machine
RESULT_S = 180  # first upload: TensorFlow import, SavedModel load, first Grad-CAM
SAMPLE_IMAGE = "ISIC_0024306.jpg"
WINDOW_WIDTH = 1440


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _get(url: str, timeout: float) -> str:
    no_proxy = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    with no_proxy.open(url, timeout=timeout) as response:
        return response.read().decode()


@contextlib.contextmanager
def running_page(
    models_dir: Path, model: Path | None = None, log: Path | None = None
) -> Iterator[str]:
    """Start the page with `skin-tf app`, as a user does (without the test suite's
    TF_CPP_MIN_LOG_LEVEL, so the command's own default counts); yield its URL; always stop the
    server. `log` gets everything the command and its server print."""
    port = free_port()
    command = [str(Path(sys.executable).with_name("skin-tf")), "app", "--models-dir",
               str(models_dir), "--port", str(port), "--address", "127.0.0.1"]  # fmt: skip
    if model is not None:
        command += ["--model", str(model)]
    env = {k: v for k, v in os.environ.items() if k not in ("TF_CPP_MIN_LOG_LEVEL",)}
    log = log or Path(tempfile.mkstemp(prefix="streamlit-", suffix=".log")[1])
    with log.open("w") as log_file:
        server = subprocess.Popen(
            command, stdout=log_file, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + SERVER_START_S
        while True:
            if server.poll() is not None:
                raise RuntimeError(f"streamlit exited with {server.returncode}: {log.read_text()}")
            try:
                if _get(f"{url}/_stcore/health", timeout=2).strip() == "ok":
                    break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise TimeoutError(f"no health answer in {SERVER_START_S} s: {log.read_text()}")
            time.sleep(0.5)
        yield url
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(server.pid, signal.SIGTERM)  # the server's own session: it and children
        try:
            server.wait(timeout=15)
        except subprocess.TimeoutExpired:
            os.killpg(server.pid, signal.SIGKILL)
            server.wait(timeout=15)


@dataclass(frozen=True)
class Shown:
    """What the browser showed: the page's text, and the "All predictions" table's column
    headers in view (the grid draws on a canvas; its accessible copy lists the columns of the
    visible region only) and its right edge in the window."""

    text: str
    table_headers: list[str]
    table_right: float


def screenshot_page(url: str, images: Path | Sequence[Path], out: Path) -> Shown:
    """Upload `images` (one file or several) in Chromium, wait for the predictions, save a
    full-page PNG; return what was shown (for assertions)."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=str(CHROMIUM), headless=True, args=CHROMIUM_ARGS
        )
        try:
            page = browser.new_page(viewport={"width": WINDOW_WIDTH, "height": 1000})
            page.set_default_timeout(RESULT_S * 1000)
            page.goto(url, wait_until="domcontentloaded")
            files = [images] if isinstance(images, Path) else list(images)
            page.locator('input[type="file"]').set_input_files([str(f) for f in files])
            box = re.compile(r"melanoma (flag|threshold)", re.IGNORECASE)
            page.get_by_text(box).first.wait_for()
            page.locator('[data-testid="stVegaLiteChart"]').first.wait_for()
            # The table comes after every upload's box: the status widget alone can be absent
            # for a moment while later uploads are still being explained (RISE takes seconds).
            page.get_by_text("All predictions").wait_for()
            page.locator('[data-testid="stDataFrame"]').last.wait_for()
            page.wait_for_function(
                "() => [...document.images].every(i => i.complete && i.naturalWidth > 0)"
            )
            page.wait_for_function(  # the script has finished: no "Running…" indicator
                "() => !document.querySelector('[data-testid=\"stStatusWidget\"]')"
            )
            # Streamlit scrolls inside its own container, so a "full page" screenshot would stop
            # at the window: grow the window to the content instead.
            height = page.evaluate(
                "() => Math.max(...[...document.querySelectorAll('*')].map(e => e.scrollHeight))"
            )
            page.set_viewport_size({"width": WINDOW_WIDTH, "height": min(int(height) + 40, 4000)})
            page.wait_for_timeout(1000)  # re-layout and chart transitions
            out.parent.mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(out))
            exceptions = page.locator('[data-testid="stException"]').count()
            text = page.locator("body").inner_text()
            table = page.locator('[data-testid="stDataFrame"]').last
            headers = table.locator('[role="columnheader"]').all_inner_texts()
            box = table.bounding_box() or {"x": 0.0, "width": float("inf")}
        finally:
            browser.close()
    if exceptions:
        raise AssertionError(f"the page shows {exceptions} exception(s):\n{text}")
    return Shown(text, [h.strip() for h in headers], box["x"] + box["width"])


def assert_started_quietly(log: Path) -> None:
    """Issue 34: `skin-tf app` and its page (which imported TensorFlow and ran the model) wrote
    no line of TensorFlow's or LiteRT's C++ log and no CUDA error."""
    from tests.cli.test_quiet import C_LOG_LINE

    printed = log.read_text()
    assert "open http://127.0.0.1:" in printed  # the command's own first line
    assert not C_LOG_LINE.search(printed) and "CUDA error" not in printed, printed


def _skip_without_browser() -> None:
    if not CHROMIUM.is_file():
        pytest.skip(
            f"browser test: {CHROMIUM} not found; install Debian's chromium "
            "(apt-get install chromium) or set SKIN_TF_CHROMIUM"
        )
    pytest.importorskip("playwright.sync_api", reason="browser test: pip install playwright")


@pytest.mark.slow
def test_page_in_chromium_predicts_an_uploaded_real_image(real_data_root, tmp_path):
    """A real image beside an empty file and the same JPEG cut in half: one prediction, two
    named refusals, as a first-time user would try it."""
    _skip_without_browser()
    from tests.serving.test_app import export_demo_model

    model = export_demo_model(tmp_path)
    sample = real_data_root / "images" / SAMPLE_IMAGE
    empty, cut = tmp_path / "empty.jpg", tmp_path / "cut.jpg"
    empty.write_bytes(b"")
    cut.write_bytes(sample.read_bytes()[: sample.stat().st_size // 2])
    shot = tmp_path / "page.png"
    with running_page(model.parent, log=tmp_path / "streamlit.log") as url:
        shown = screenshot_page(url, [sample, empty, cut], shot)
    text = shown.text
    assert "Not medical advice" in text
    assert SAMPLE_IMAGE in text
    assert re.search(r"\b(akiec|bcc|bkl|df|mel|nv|vasc) [^\n]+: [01]\.\d{3}", text)  # top-k list
    assert re.search(r"P\(mel\) = 0\.\d{3} [<≥] threshold 0\.150", text)
    assert re.search(r"test sensitivity 0\.800", text)  # beside validation's, in the box
    assert "empty.jpg cannot be analysed: empty file (0 bytes)" in text
    assert "cut.jpg cannot be analysed: truncated or damaged JPEG file" in text
    assert "Download predictions (CSV)" in text
    assert shot.stat().st_size > 50_000  # a real rendered page, not a blank one
    # Issue 34: with two failed uploads' reasons in the table, the seven probabilities (p_mel
    # among them) are still whole in a 1440 px window: the column after them is in view too.
    assert {f"p_{c}" for c in CLASSES} | {"top_class"} <= set(shown.table_headers), shown
    assert shown.table_right <= WINDOW_WIDTH
    assert_started_quietly(tmp_path / "streamlit.log")


@pytest.mark.slow
def test_page_in_chromium_says_when_an_upload_is_no_lesion_image(
    real_export, real_data_root, tmp_path
):
    """With a guarded export (the real miniature run's): a photo of a cat beside a real lesion
    gets the out-of-distribution notice and no melanoma box of its own; the lesion is answered."""
    _skip_without_browser()
    import skimage.data
    from PIL import Image

    sample = real_data_root / "images" / SAMPLE_IMAGE
    cat = tmp_path / "cat.png"
    Image.fromarray(skimage.data.chelsea()).save(cat)
    shot = tmp_path / "page.png"
    with running_page(real_export.parent, log=tmp_path / "streamlit.log") as url:
        shown = screenshot_page(url, [sample, cat], shot)
    text = shown.text
    assert "This does not look like a dermatoscopic image of a skin lesion" in text
    assert "What the model computed anyway (not an answer)" in text
    assert len(re.findall(r"P\(mel\) = 0\.\d{3}", text)) == 1  # the lesion's box only
    assert "Out-of-distribution guard" in text  # the sidebar
    assert shot.stat().st_size > 50_000
    assert "p_mel" in shown.table_headers and shown.table_right <= WINDOW_WIDTH
    assert_started_quietly(tmp_path / "streamlit.log")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description="Screenshot the page with a model and image")
    parser.add_argument("--model", type=Path, required=True, help="exported model folder")
    parser.add_argument("--image", type=Path, required=True, nargs="+", help="image(s) to upload")
    parser.add_argument("--out", type=Path, default=Path("results/streamlit_demo.png"))
    args = parser.parse_args(argv)
    with running_page(args.model.parent, model=args.model) as url:
        screenshot_page(url, args.image, args.out)
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
