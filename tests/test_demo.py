"""The browser demo page (GET /, service/static/): served with nothing from elsewhere, and
driven in headless Chromium against real gunicorn serving the shipped model.

Chromium is Debian's package (/usr/bin/chromium), which `make test` installs when missing;
Playwright only drives it (its own browser download is never used). Without it the browser
tests skip on a developer's machine and fail in CI.
"""

from __future__ import annotations

import base64
import io
import json
import os
import re
import shutil
from html.parser import HTMLParser
from io import BytesIO
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from playwright.sync_api import Page, sync_playwright

from benchmarks.gunicorn_server import request
from benchmarks.imagefactory import encoded, png
from supersizeme.service.config import REPO_ROOT

CHROMIUM = Path("/usr/bin/chromium")
# Quiet, self-contained Chromium: no sandbox (root in CI), no GPU, no calls home.
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
SCREENSHOT = REPO_ROOT / "tests" / "artifacts" / "demo.png"
# UPDATE_DEMO_SCREENSHOT=1 also writes the README's copy (commit it when the page changes).
README_SCREENSHOT = REPO_ROOT / "assets" / "demo-screenshot.png"
STATIC = REPO_ROOT / "supersizeme" / "service" / "static"


class PageParts(HTMLParser):
    """The asset URLs, form controls and labels of an HTML page."""

    def __init__(self) -> None:
        super().__init__()
        self.assets: list[str] = []
        self.controls: list[str] = []
        self.labelled: set[str] = set()

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        attributes = dict(attrs)
        for name in ("src", "href"):
            if attributes.get(name) and attributes[name] != "#":
                self.assets.append(attributes[name])
        if tag in ("input", "select"):
            self.controls.append(attributes.get("id", ""))
        if tag == "label" and attributes.get("for"):
            self.labelled.add(attributes["for"])


def test_page_uses_only_its_own_files_and_labels_every_control(client):
    page = client.get("/")
    assert page.status_code == 200 and page.mimetype == "text/html"
    assert "default-src 'self'" in page.headers["Content-Security-Policy"]
    parts = PageParts()
    parts.feed(page.get_data(as_text=True))
    assert sorted(parts.assets) == ["/static/demo.css", "/static/demo.js"]
    for asset, mimetype in zip(sorted(parts.assets), ["text/css", "text/javascript"], strict=True):
        served = client.get(asset)
        assert served.status_code == 200 and served.mimetype == mimetype
    # Offline means no URL of another host anywhere: no CDN, no web font, no analytics.
    for path in STATIC.iterdir():
        assert not re.search(r"https?://|//[a-z0-9.-]+\.[a-z]{2,}/", path.read_text()), path
    assert parts.controls and set(parts.controls) <= parts.labelled


def chromium() -> Path:
    if CHROMIUM.exists():
        return CHROMIUM
    reason = f"no Chromium at {CHROMIUM}: `apt-get install chromium` (`make test` does, as root)"
    if os.environ.get("CI"):
        pytest.fail(reason)
    pytest.skip(reason)


@pytest.fixture(scope="module")
def server(shipped_server):
    return shipped_server


@pytest.fixture(scope="module")
def browser(tmp_path_factory):
    executable = chromium()
    with sync_playwright() as playwright:
        context = playwright.chromium.launch_persistent_context(
            tmp_path_factory.mktemp("chromium-profile"),  # a fresh profile for every run
            executable_path=str(executable),
            headless=True,
            args=CHROMIUM_ARGS,
            viewport={"width": 1100, "height": 900},
            accept_downloads=True,
        )
        try:
            yield context
        finally:
            context.close()


@pytest.fixture
def page(browser, server):
    """The demo page, allowed to reach only the server under test; fails on any script error."""
    page = browser.new_page()
    origin = f"http://127.0.0.1:{server.port}/"
    elsewhere: list[str] = []
    problems: list[str] = []

    def only_this_server(route) -> None:
        if route.request.url.startswith(origin):
            route.continue_()
        else:
            elsewhere.append(route.request.url)
            route.abort()

    page.route("**/*", only_this_server)
    page.on("pageerror", lambda error: problems.append(str(error)))
    page.on(
        "console",
        lambda message: problems.append(message.text) if "Refused to" in message.text else None,
    )
    page.goto(origin)
    yield page
    page.close()
    assert elsewhere == [] and problems == []


def finished(page: Page) -> str:
    """Waits for the page to settle after an upload; the shipped model on a busy CPU is slow."""
    # A selector, not a JS predicate: polling a predicate needs eval, which the page's CSP forbids.
    page.wait_for_selector("body[data-state=done], body[data-state=error]", timeout=180_000)
    return page.evaluate("document.body.dataset.state")


def lettering() -> Image.Image:
    """160 × 120, shrunk from a sharp 320 × 240 card of lettering in falling sizes above bars
    of rising width: the detail that bicubic blurs back."""
    sharp = Image.new("RGB", (320, 240), (246, 241, 228))
    draw = ImageDraw.Draw(sharp)
    top = 6
    for size in (44, 30, 20, 14):
        draw.text((10, top), "Super Size Me", fill=(20, 40, 110), font_size=size)
        top += size + 8
    for bar in range(12):
        left = 10 + bar * 25
        draw.rectangle([left, 176, left + bar // 2 + 1, 232], fill=(170, 30, 40))
    return sharp.resize((160, 120), Image.Resampling.BICUBIC)


def canvas_pixels(page: Page, selector: str) -> np.ndarray:
    data_url = page.eval_on_selector(selector, "canvas => canvas.toDataURL('image/png')")
    image = Image.open(BytesIO(base64.b64decode(data_url.split(",", 1)[1])))
    return np.asarray(image.convert("RGB"), dtype=np.int16)


def split_of(page: Page) -> str:
    return page.eval_on_selector("#stage", "stage => stage.style.getPropertyValue('--split')")


@pytest.mark.browser
@pytest.mark.gunicorn
def test_an_upload_is_compared_with_bicubic_and_can_be_downloaded(page, server):
    original = lettering()
    data = png(original)
    page.set_input_files(
        "#file", files=[{"name": "lettering.png", "mimeType": "image/png", "buffer": data}]
    )
    assert finished(page) == "done"

    size = page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [2 * original.width, 2 * original.height]
    assert page.get_attribute("#result", "alt").startswith("lettering.png enlarged")
    assert "320 × 240 pixels (2× of 160 × 120)" in page.inner_text("#output-size")
    assert re.search(r"\binference [\d.]+ ms\b", page.inner_text("#timing"))

    # The "bicubic" side is Pillow's bicubic, computed in the page: the same 8-bit passes and
    # rounding give the same pixels (Pillow sums in fixed point, the page in floating point,
    # so an image could still differ by 1 where a sum falls within 2^-22 of a half).
    assert page.inner_text(".tag-left") == "bicubic" and page.is_visible(".tag-left")
    expected = np.asarray(original.resize((320, 240), Image.Resampling.BICUBIC), np.int16)
    assert np.array_equal(canvas_pixels(page, "#bicubic"), expected)

    # The download is exactly what the API answers for the same upload.
    status, _, direct = request(server.port, "POST", "/supersizeme/", data)
    assert status == 200
    with page.expect_download() as download:
        page.click("#download")
    assert download.value.suggested_filename == "supersized-x2.png"
    assert Path(download.value.path()).read_bytes() == direct

    # The comparison slider works from the keyboard.
    page.focus("#split")
    page.keyboard.press("Home")
    assert split_of(page) == "0%"
    page.keyboard.press("ArrowRight")
    assert split_of(page) == "1%"
    # ... and by dragging on the picture.
    box = page.locator("#stage").bounding_box()
    page.mouse.click(box["x"] + box["width"] / 4, box["y"] + box["height"] / 2)
    assert split_of(page) == "25%"
    page.fill("#split", "22")  # the line then crosses every row of the screenshot's lettering
    assert split_of(page) == "22%"
    page.locator("#split").blur()

    SCREENSHOT.parent.mkdir(exist_ok=True)
    page.screenshot(path=SCREENSHOT, full_page=True)
    if os.environ.get("UPDATE_DEMO_SCREENSHOT") == "1":
        shutil.copyfile(SCREENSHOT, README_SCREENSHOT)


@pytest.mark.browser
@pytest.mark.gunicorn
def test_chosen_scale_and_format_are_sent(page, server):
    page.wait_for_selector("#options:not([hidden])")
    page.select_option("#scale", "4")
    page.select_option("#format", "jpeg")
    original = lettering().resize((40, 30))
    page.set_input_files(
        "#file", files=[{"name": "small.png", "mimeType": "image/png", "buffer": png(original)}]
    )
    assert finished(page) == "done"
    size = page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [160, 120]
    assert "image/jpeg" in page.inner_text("#output-size")
    status, headers, _ = request(
        server.port, "POST", "/supersizeme/?scale=4&format=jpeg", png(original)
    )
    assert status == 200
    named = re.search(r'filename="([^"]+)"', headers["Content-Disposition"]).group(1)
    assert page.get_attribute("#download", "download") == named
    assert canvas_pixels(page, "#bicubic").shape == (120, 160, 3)


@pytest.mark.browser
@pytest.mark.gunicorn
def test_the_model_is_chosen_by_the_file_unless_the_page_says_otherwise(page, server):
    page.wait_for_selector("#options:not([hidden])")
    choices = page.eval_on_selector_all("#model option", "options => options.map(o => o.value)")
    assert choices == ["auto", "clean", "photo", "photo-low"]
    photo = io.BytesIO()
    lettering().resize((40, 30)).save(photo, "JPEG", quality=85)
    upload = [{"name": "photo.jpg", "mimeType": "image/jpeg", "buffer": photo.getvalue()}]
    page.set_input_files("#file", files=upload)
    assert finished(page) == "done"
    assert "by the photo model" in page.inner_text("#output-size")
    page.select_option("#model", "clean")
    page.click("#send")
    assert finished(page) == "done"
    assert "by the clean model" in page.inner_text("#output-size")


def drop_file(page: Page, data: bytes, name: str, mime_type: str) -> None:
    """Drops a file on the drop zone, as a user dragging it from a file manager would."""
    transfer = page.evaluate_handle(
        """([bytes, name, type]) => {
            const transfer = new DataTransfer();
            transfer.items.add(new File([new Uint8Array(bytes)], name, { type }));
            return transfer;
        }""",
        [list(data), name, mime_type],
    )
    page.dispatch_event("#drop", "drop", {"dataTransfer": transfer})


@pytest.mark.browser
@pytest.mark.gunicorn
def test_a_refused_upload_shows_the_apis_message_and_code(page, server):
    gif = encoded(Image.new("RGB", (32, 32), "red"), "GIF")
    status, _, body = request(server.port, "POST", "/supersizeme/", gif)
    refusal = json.loads(body)
    assert (status, refusal["error"]) == (415, "unsupported_media_type")

    drop_file(page, gif, "red.gif", "image/gif")
    assert finished(page) == "error"
    alert = page.locator("[role=alert]")
    assert alert.is_visible()
    shown = alert.inner_text()
    assert refusal["message"] in shown
    assert "unsupported_media_type" in shown and "HTTP 415" in shown
    assert page.is_hidden("#comparison")


@pytest.mark.browser
@pytest.mark.gunicorn
def test_a_large_result_is_compared_on_a_crop_beside_a_shrunk_preview(page, server):
    """Over 4 million output pixels the page compares a crop and previews the whole shrunk,
    so that the script's bicubic never runs over a photo's whole result."""
    original = lettering().resize((1100, 1000), Image.Resampling.BICUBIC)
    page.set_input_files(
        "#file", files=[{"name": "large.png", "mimeType": "image/png", "buffer": png(original)}]
    )
    assert finished(page) == "done"
    assert "2200 × 2000 pixels (2× of 1100 × 1000)" in page.inner_text("#output-size")
    size = page.eval_on_selector("#result", "img => [img.naturalWidth, img.naturalHeight]")
    assert size == [1024, 768]
    assert "1024 × 768 crop at the centre" in page.inner_text("#crop-note")
    assert page.is_visible("#preview")
    preview = page.eval_on_selector("#preview", "canvas => [canvas.width, canvas.height]")
    assert preview == [1320, 1200]  # within 1600 x 1200, aspect kept
    # The crop starts at output pixel (588, 616), on whole input pixels; its bicubic side
    # is exactly that region of Pillow's bicubic of the whole image.
    whole = np.asarray(original.resize((2200, 2000), Image.Resampling.BICUBIC), np.int16)
    assert np.array_equal(canvas_pixels(page, "#bicubic"), whole[616 : 616 + 768, 588 : 588 + 1024])
    # The download is the whole result, not the crop.
    assert page.get_attribute("#download", "download") == "supersized-x2.png"
    with page.expect_download() as download:
        page.click("#download")
    assert Image.open(download.value.path()).size == (2200, 2000)
