"""Browser test of scripts/web_demo.py: the app runs as a subprocess and headless Chromium drives it via Playwright.

A tiny random-weight model answers a question about an uploaded shapes image and a follow-up; the page must show
exactly what plain greedy `generate` returns for the same messages (computed here). A file that is not an image must
give a readable message in the chat and leave the app working. The page must finish loading and never request
anything from a host other than the loopback server (no CDN fonts, scripts or analytics).

Needs Debian's Chromium at /usr/bin/chromium and the `gradio` and `playwright` packages (pip install -e ".[demo]");
skipped otherwise. Set WEB_DEMO_SCREENSHOT=path.png to keep a screenshot of the answered chat.
"""

import ipaddress
import os
import shutil
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from urllib.parse import urlsplit

import pytest

CHROMIUM = Path("/usr/bin/chromium")
if not CHROMIUM.exists():
    pytest.skip(f"the browser test needs Debian's Chromium at {CHROMIUM} (apt-get install chromium)",
                allow_module_level=True)
pytest.importorskip("gradio", reason="the web demo needs gradio: pip install -e '.[demo]'")
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="the browser test needs playwright: pip install -e '.[demo]'")

import PIL.Image  # noqa: E402
from transformers import AutoModelForImageTextToText, AutoProcessor  # noqa: E402

from helpers_chat import assistant, greedy_reference, save_tiny_model, shapes_image, user  # noqa: E402

REPO_ROOT = Path(__file__).resolve().parent.parent
SCRIPT = REPO_ROOT / "scripts" / "web_demo.py"
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update", "--disable-sync"]
MAX_NEW_TOKENS = 24
STARTUP_S = 180  # importing gradio and torch on a busy 2-core CI box
ANSWER_MS = 60_000


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def is_loopback(url: str) -> bool:
    parts = urlsplit(url)
    if parts.scheme in ("data", "blob", "about"):
        return True
    host = parts.hostname or ""
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return save_tiny_model(tmp_path_factory.mktemp("web_demo") / "tiny-minimind-v")


@pytest.fixture(scope="module")
def server(model_dir, tmp_path_factory):
    """`python scripts/web_demo.py --model DIR --port PORT` on loopback; yields its URL once it serves."""
    port = free_port()
    workdir = tmp_path_factory.mktemp("web_demo_server")
    log_path = workdir / "server.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "GRADIO_ANALYTICS_ENABLED": "False",
           "HF_MODULES_CACHE": str(workdir / "hf_modules"), "GRADIO_TEMP_DIR": str(workdir / "gradio")}
    with open(log_path, "w") as log:
        process = subprocess.Popen(
            [sys.executable, str(SCRIPT), "--model", str(model_dir), "--host", "127.0.0.1", "--port", str(port)],
            cwd=workdir, env=env, stdout=log, stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.monotonic() + STARTUP_S
        while True:
            if process.poll() is not None:
                pytest.fail(f"web_demo.py exited with {process.returncode}:\n{log_path.read_text()}")
            try:
                with urllib.request.urlopen(url, timeout=5) as response:
                    if response.status == 200:
                        break
            except (urllib.error.URLError, ConnectionError, TimeoutError):
                pass
            if time.monotonic() > deadline:
                pytest.fail(f"web_demo.py did not serve {url} within {STARTUP_S} s:\n{log_path.read_text()}")
            time.sleep(0.5)
        yield {"url": url, "log": log_path}
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@pytest.fixture(scope="module")
def reference(model_dir):
    model = AutoModelForImageTextToText.from_pretrained(model_dir, trust_remote_code=True).eval()
    processor = AutoProcessor.from_pretrained(model_dir, trust_remote_code=True)
    return lambda messages: greedy_reference(model, processor, messages, MAX_NEW_TOKENS)


def set_slider(page, elem_id: str, value) -> None:
    box = page.locator(f"#{elem_id} input[type=number]")
    box.fill(str(value))
    box.press("Enter")
    page.wait_for_function(
        "([id, v]) => document.querySelector(`#${id} input[type=range]`).value === v", arg=[elem_id, str(value)]
    )


def send(page, text: str, files=()) -> None:
    if files:
        page.locator("#prompt input[type=file]").set_input_files([str(f) for f in files])
        # Uploads go to the server first; sending before they finish would drop them.
        page.wait_for_function(
            "n => document.querySelectorAll('#prompt .thumbnail-item').length >= n",
            arg=len(files), timeout=ANSWER_MS,
        )
    page.locator("#prompt textarea").fill(text)
    page.locator("#prompt textarea").press("Enter")


def wait_status(page, fragment: str) -> str:
    page.wait_for_function(
        "f => document.querySelector('#status').innerText.includes(f)", arg=fragment, timeout=ANSWER_MS
    )
    return page.inner_text("#status")


def bot_messages(page) -> list[str]:
    return page.locator('#chat [data-testid="bot"]').all_inner_texts()


def test_chat_in_browser(server, reference, tmp_path):
    image_path = tmp_path / "shapes.png"
    shapes_image(11).save(image_path)
    image = PIL.Image.open(image_path).convert("RGB")  # exactly the pixels the app will read back
    not_an_image = tmp_path / "notes.png"
    not_an_image.write_text("a text file, renamed")
    first_q, second_q, third_q = "What color is the shape at the top left?", "And how many shapes?", "Which shape?"

    requests, page_errors = [], []
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 1000})
            page.on("request", lambda request: requests.append(request.url))
            page.on("pageerror", lambda error: page_errors.append(str(error)))
            page.goto(server["url"], wait_until="load", timeout=ANSWER_MS)

            # Loaded: the app replaced Gradio's "Loading..." with the model card (name, parameters, image tokens).
            page.wait_for_selector("#model-info", timeout=ANSWER_MS)
            info = page.inner_text("#model-info")
            assert "tiny-minimind-v" in info and "parameters" in info and "9 image tokens" in info
            assert "2 layers, hidden 64" in info
            # Gradio's "Loading..." splash can outlive the first render by a moment on a busy box: it must go, in time.
            page.wait_for_function("() => !document.body.innerText.includes('Loading')", timeout=ANSWER_MS)

            set_slider(page, "temperature", 0)  # greedy
            set_slider(page, "max-new-tokens", MAX_NEW_TOKENS)

            send(page, first_q, [image_path])
            wait_status(page, "Turn 1 answered")
            first = reference([user(first_q, [image])])
            assert bot_messages(page)[-1].strip() == first.strip()

            send(page, second_q)  # multi-turn: the image and the first answer are in the history
            wait_status(page, "Turn 2 answered")
            second = reference([user(first_q, [image]), assistant(first), user(second_q)])
            assert bot_messages(page)[-1].strip() == second.strip()

            # Images are shown inline: Gradio's file messages carry a Share button that uploads to huggingface.co.
            assert page.locator("#chat img.thumb").count() == 1
            assert page.locator('#chat button[aria-label="Share"]').count() == 0

            screenshot = tmp_path / "web_demo.png"
            page.screenshot(path=str(screenshot), full_page=True)
            if os.environ.get("WEB_DEMO_SCREENSHOT"):
                shutil.copyfile(screenshot, os.environ["WEB_DEMO_SCREENSHOT"])

            send(page, "What is this?", [not_an_image])
            wait_status(page, "Image rejected")
            notice = bot_messages(page)[-1]
            assert "notes.png" in notice and "not an image" in notice and "not sent to the model" in notice
            assert "Traceback" not in page.inner_text("body")
            assert page.locator('[data-testid="toast-body"]').count() == 0  # no Gradio error pop-up either

            # Still working, and the rejected turn is not in the history the model sees.
            send(page, third_q)
            wait_status(page, "Turn 3 answered")
            third = reference([user(first_q, [image]), assistant(first), user(second_q), assistant(second),
                               user(third_q)])
            assert bot_messages(page)[-1].strip() == third.strip()

            page.click("#clear")
            wait_status(page, "History cleared")
            assert bot_messages(page) == []
        finally:
            browser.close()

    assert requests, "the page made no requests at all?"
    outside = sorted({url for url in requests if not is_loopback(url)})
    assert not outside, f"the page reached beyond the loopback server: {outside}"
    assert not page_errors, page_errors
    assert "Traceback" not in server["log"].read_text()
