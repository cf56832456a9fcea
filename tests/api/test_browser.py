"""The web page in a real browser: Debian's Chromium, driven by Playwright, on `twinstream serve`.

The server is the real command in its own process on a free port (stopped with SIGTERM, which
must end it cleanly); the page searches the test index and must show the query image's own id as
the top result. A screenshot is kept in ``test-artifacts/web-page.png``.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
from playwright.sync_api import expect, sync_playwright

from twinstream.settings import child_env
from twinstream.stack import free_port

pytestmark = [pytest.mark.integration, pytest.mark.slow]
ROOT = Path(__file__).resolve().parents[2]
ARTIFACTS = ROOT / "test-artifacts"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--headless", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]


@pytest.fixture
def served(api_settings, gallery):
    """``twinstream serve --json`` on a free port; yields its base URL."""
    port = free_port()
    env = child_env(api_settings, os.environ)
    proc = subprocess.Popen([sys.executable, "-m", "twinstream", "serve", "--json",
                             "--host", "127.0.0.1", "--port", str(port)],
                            cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True)
    try:
        announced = json.loads(proc.stdout.readline())
        url = announced["url"].rstrip("/")
        assert url == f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(f"{url}/healthz", timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            assert proc.poll() is None and time.monotonic() < deadline, proc.stderr.read()
            time.sleep(0.1)
        yield url
    finally:
        proc.send_signal(signal.SIGTERM)
        try:
            code = proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            code = None
        stderr = proc.stderr.read()
        proc.stdout.close()
        proc.stderr.close()
    assert code == 0, f"serve did not stop cleanly on SIGTERM (code {code}): {stderr[-2000:]}"


def test_the_page_finds_the_uploaded_image_first(served, gallery, tmp_path):
    image_id, path = gallery.first_of("green_circle")
    not_an_image = tmp_path / "notes.txt"
    not_an_image.write_text("not an image")
    ARTIFACTS.mkdir(exist_ok=True)
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
        try:
            page = browser.new_page(viewport={"width": 1280, "height": 900})
            page.goto(served + "/")
            expect(page.get_by_test_id("status")).to_contain_text(f"{len(gallery.items)} items")

            page.set_input_files("#file", str(path))
            results = page.locator("[data-testid=result]")
            expect(results).to_have_count(12)
            top = results.first
            expect(top).to_have_attribute("data-id", image_id)
            expect(top.locator(".label")).to_have_text("green_circle")
            expect(page.locator("#preview")).to_be_visible()
            # every thumbnail really loaded (naturalWidth is 0 for a broken image)
            page.wait_for_function(
                "[...document.querySelectorAll('#grid img')].every(i => i.complete)")
            widths = page.eval_on_selector_all("#grid img", "imgs => imgs.map(i => i.naturalWidth)")
            assert all(w > 0 for w in widths), widths
            page.screenshot(path=str(ARTIFACTS / "web-page.png"), full_page=True)

            page.check("input[value=recognize]")
            # The page shows the API's decision (the session's toy model may well say
            # "unknown": its card asks for cosine 0.9999 against 9 identities).
            answer = httpx.post(f"{served}/recognize", files={"image": path.read_bytes()},
                                data={"k": "12"}).json()
            expect(page.get_by_test_id("verdict")).to_have_attribute("data-label",
                                                                     answer["label"])
            expect(page.get_by_test_id("threshold-reason")).to_contain_text("identities")
            expect(results.first.locator(".label")).to_have_text("green_circle")
            expect(results.first.locator("[data-testid=probability]")).to_contain_text("%")
            page.screenshot(path=str(ARTIFACTS / "web-page-recognise.png"), full_page=True)

            page.set_input_files("#file", str(not_an_image))
            expect(page.get_by_test_id("error")).to_contain_text("not an image")
        finally:
            browser.close()
