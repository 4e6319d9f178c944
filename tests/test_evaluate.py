"""The benchmark protocol, the bicubic baseline and the served-path evaluation."""

from __future__ import annotations

import http.server
import io
import json
import math
import shutil
import threading
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, JpegImagePlugin

from supersizeme.service.config import REPO_ROOT
from supersizeme.toolchain import evaluate
from supersizeme.toolchain.quality import y_psnr_ssim

SET5 = REPO_ROOT.parent / "shared" / "datasets" / "benchmark" / "set5"


@pytest.fixture(scope="module")
def bench(tmp_path_factory) -> Path:
    """Three small images: odd sizes (cropping matters) and one grey (mode L)."""
    folder = tmp_path_factory.mktemp("bench")
    rng = np.random.default_rng(5)
    yy, xx = np.mgrid[0:37, 0:42]
    for i in range(2):
        pattern = 120 + 90 * np.sin(xx / (3 + i) + yy / 5)[..., None] * np.array([1, 0.6, 0.3])
        pixels = np.clip(pattern + rng.normal(0, 10, pattern.shape), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img_{i}.png")
    grey = np.clip(128 + 100 * np.cos(xx / 4) * np.sin(yy / 6), 0, 255).astype(np.uint8)
    Image.fromarray(grey[:33, :29]).save(folder / "grey.png")
    return folder


def direct_bicubic_psnr_ssim(path: Path, scale: int) -> tuple[float, float]:
    """The protocol written out with Pillow alone, independent of the module under test."""
    with Image.open(path) as image:
        rgb = image.convert("RGB")
    width, height = rgb.size
    hr = rgb.crop((0, 0, width - width % scale, height - height % scale))
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.Resampling.BICUBIC)
    sr = lr.resize(hr.size, Image.Resampling.BICUBIC)
    return y_psnr_ssim(np.asarray(hr), np.asarray(sr), border=scale)


def test_bicubic_row_equals_direct_computation(bench):
    result = evaluate.evaluate_folder(evaluate.bicubic_png(2), bench, 2)
    direct = np.array([direct_bicubic_psnr_ssim(p, 2) for p in sorted(bench.iterdir())])
    assert result["images"] == 3
    assert result["psnr"] == pytest.approx(direct[:, 0].mean(), abs=1e-9)
    assert result["ssim"] == pytest.approx(direct[:, 1].mean(), abs=1e-9)
    assert result["megapixels"] == pytest.approx((18 * 21 * 2 + 16 * 14) / 1e6)
    assert result["seconds_per_megapixel"] > 0


def test_grey_input_stays_grey_and_matches_the_rgb_protocol(bench):
    pair = evaluate.load_pair(bench / "grey.png", 2)
    assert pair.lr.mode == "L" and pair.lr.size == (14, 16)
    assert pair.hr.shape == (32, 28, 3)
    with Image.open(bench / "grey.png") as image:
        hr = image.convert("RGB").crop((0, 0, 28, 32))
    rgb_lr = hr.resize((14, 16), Image.Resampling.BICUBIC)
    assert np.array_equal(np.asarray(pair.lr), np.asarray(rgb_lr)[..., 0])


def test_served_path_on_the_tiny_model(tiny_model_dir, bench):
    # A 16 px tile splits every image into several tiles, so tiling is on the path too.
    upscale, scale = evaluate.load_served(tiny_model_dir, tile=16, threads=1)
    assert scale == 2
    result = evaluate.evaluate_folder(upscale, bench, scale)
    assert result["images"] == 3
    assert math.isfinite(result["psnr"]) and 0 < result["ssim"] < 1
    assert math.isfinite(result["seconds_per_megapixel"]) and result["seconds_per_megapixel"] > 0


def test_markdown_table_format():
    entry = {"psnr": 37.123, "ssim": 0.95712, "images": 5, "seconds": 2.0, "megapixels": 1.0}
    results = {
        "set5": {"bicubic": {**entry, "psnr": 33.666}, "m": entry},
        "set14": {"bicubic": {**entry, "seconds": 1.0, "megapixels": 3.0}},
    }
    assert evaluate.markdown_table(results) == (
        "| model | Set5 PSNR / SSIM | Set14 PSNR / SSIM | s / input MP |\n"
        "| --- | --- | --- | --- |\n"
        "| bicubic | 33.67 / 0.9571 | 37.12 / 0.9571 | 0.750 |\n"
        "| m | 37.12 / 0.9571 | – | 2.000 |\n"
    )


def test_cli_writes_json_and_prints_the_table(tiny_model_dir, bench, tmp_path, capsys):
    out = tmp_path / "eval.json"
    evaluate.main(
        [
            "--model",
            str(tiny_model_dir),
            "--bicubic",
            "--sets",
            str(bench),
            "--json",
            str(out),
            "--tile",
            "16",
            "--threads",
            "1",
        ]
    )
    results = json.loads(out.read_text())
    rows = results[bench.name]
    assert list(rows) == ["bicubic", tiny_model_dir.name]
    assert all(rows[r]["images"] == 3 for r in rows)
    table = capsys.readouterr().out
    assert f"| {tiny_model_dir.name} | {evaluate.format_cell(rows[tiny_model_dir.name])}" in table


@pytest.mark.skipif(not SET5.is_dir(), reason="benchmark images not present")
def test_set5_bicubic_matches_the_documented_value():
    # Pillow's bicubic on Set5 measures 33.67 dB with this protocol (datasets README).
    assert evaluate.evaluate_folder(evaluate.bicubic_png(2), SET5, 2)["psnr"] == pytest.approx(
        33.67, abs=0.005
    )


# --- Input conditions: the LR uploaded as JPEG --------------------------------------------


def test_condition_names():
    assert evaluate.condition_quality("png") is None
    assert evaluate.condition_quality(evaluate.jpeg_condition(75)) == 75
    assert evaluate.condition_title("jpeg90") == "JPEG q90"
    assert evaluate.condition_title("png") == "PNG"
    for bad in ("jpeg0", "jpeg101", "jpg90", "JPEG90", "jpeg", "webp"):
        with pytest.raises(ValueError, match="input condition"):
            evaluate.condition_quality(bad)
    with pytest.raises(ValueError):
        evaluate.jpeg_condition(0)


def test_unknown_condition_fails_before_any_work(bench):
    with pytest.raises(ValueError, match="input condition"):
        evaluate.evaluate_rows({"b": evaluate.bicubic_png(2)}, [bench], 2, None, "jpg90")


def test_jpeg_upload_is_a_420_jpeg_of_its_quality(bench):
    lr = evaluate.load_pair(bench / "img_0.png", 2).lr
    assert evaluate.upload_bytes(lr) == evaluate.png_bytes(lr)
    uploads = {q: evaluate.upload_bytes(lr, f"jpeg{q}") for q in (90, 50)}
    assert uploads[90] != uploads[50]
    for quality, data in uploads.items():
        assert evaluate.media_type(data) == "image/jpeg"
        with Image.open(io.BytesIO(data)) as image:
            assert image.format == "JPEG" and image.size == lr.size
            assert JpegImagePlugin.get_sampling(image) == 2  # 4:2:0
            # The quantisation tables are those Pillow writes for this quality.
            direct = io.BytesIO()
            lr.save(direct, format="JPEG", quality=quality)
            with Image.open(direct) as reference:
                assert image.quantization == reference.quantization
    assert evaluate.media_type(evaluate.upload_bytes(lr)) == "image/png"
    with pytest.raises(ValueError):
        evaluate.media_type(b"GIF89a")


def direct_jpeg_bicubic_psnr_ssim(path: Path, scale: int, quality: int) -> tuple[float, float]:
    """The JPEG protocol with Pillow alone: the LR saved at ``quality`` (Pillow's default
    4:2:0), decoded, and that enlarged. A grey image's LR stays grey, as it is uploaded."""
    with Image.open(path) as image:
        grey = image.mode == "L"
        rgb = image.convert("RGB")
    width, height = rgb.size
    hr = rgb.crop((0, 0, width - width % scale, height - height % scale))
    lr = hr.resize((hr.width // scale, hr.height // scale), Image.Resampling.BICUBIC)
    if grey:
        lr = Image.fromarray(np.asarray(lr)[..., 0])
    buffer = io.BytesIO()
    lr.save(buffer, format="JPEG", quality=quality)
    with Image.open(buffer) as decoded:
        sr = decoded.resize(hr.size, Image.Resampling.BICUBIC).convert("RGB")
    return y_psnr_ssim(np.asarray(hr), np.asarray(sr), border=scale)


def test_bicubic_under_jpeg_enlarges_the_decoded_jpeg(bench):
    jpeg = evaluate.evaluate_folder(evaluate.bicubic_png(2), bench, 2, "jpeg50")
    png = evaluate.evaluate_folder(evaluate.bicubic_png(2), bench, 2)
    paths = sorted(bench.iterdir())
    direct = np.array([direct_jpeg_bicubic_psnr_ssim(p, 2, 50) for p in paths])
    assert jpeg["images"] == 3 and jpeg["megapixels"] == pytest.approx(png["megapixels"])
    assert jpeg["psnr"] == pytest.approx(direct[:, 0].mean(), abs=1e-9)
    assert jpeg["ssim"] == pytest.approx(direct[:, 1].mean(), abs=1e-9)
    assert jpeg["psnr"] < png["psnr"] - 0.1  # q50 costs the baseline too


# --- Pooling and the gain table -------------------------------------------------------------


def entry(psnr: float, images: int) -> dict:
    return {"psnr": psnr, "ssim": 0.9, "images": images, "seconds": 1.0, "megapixels": 1.0}


POOLED = {
    "set14": {"bicubic": entry(30.0, 14), "m": entry(31.0, 14)},
    "bsd100": {"bicubic": entry(28.0, 100), "m": entry(28.5, 100)},
}


def test_pooled_gain_weighs_every_image_not_every_set():
    assert evaluate.pooled_psnr(POOLED, "bicubic") == pytest.approx(3220 / 114)
    gains = evaluate.pooled_gains(POOLED)
    assert list(gains) == ["m"]
    assert gains["m"]["psnr"] == pytest.approx(3284 / 114)
    assert gains["m"]["bicubic"] == pytest.approx(3220 / 114)
    # 64 dB·images over 114 images; the mean of the set means' gains would be 0.75.
    assert gains["m"]["gain"] == pytest.approx(64 / 114)
    with pytest.raises(ValueError, match="not evaluated on bsd100"):
        evaluate.pooled_psnr({**POOLED, "bsd100": {"bicubic": entry(28.0, 100)}}, "m")


def test_gain_table_format():
    jpeg = {
        "set14": {"bicubic": entry(27.0, 14), "m": entry(27.5, 14), "n": entry(26.0, 14)},
        "bsd100": {"bicubic": entry(26.0, 100), "m": entry(26.5, 100), "n": entry(25.0, 100)},
    }
    assert evaluate.gain_table({"png": POOLED, "jpeg90": jpeg}) == (
        "| input (114 images: Set14, BSD100) | bicubic PSNR | m PSNR | m gain "
        "| n PSNR | n gain |\n"
        "| --- | --- | --- | --- | --- | --- |\n"
        "| PNG | 28.25 | 28.81 | +0.56 | – | – |\n"
        "| JPEG q90 | 26.12 | 26.62 | +0.50 | 25.12 | -1.00 |\n"
    )


def test_results_document_keeps_png_at_the_top_and_jpeg_by_quality():
    document = evaluate.results_document({"png": POOLED, "jpeg90": POOLED, "jpeg50": POOLED})
    assert list(document) == ["set14", "bsd100", "jpeg"]
    assert document["set14"] == POOLED["set14"]
    assert list(document["jpeg"]) == ["90", "50"]
    assert document["jpeg"]["50"] == POOLED
    assert evaluate.results_document({"png": POOLED}) == POOLED
    assert evaluate.document_conditions(document) == {
        "png": POOLED,
        "jpeg90": POOLED,
        "jpeg50": POOLED,
    }
    assert evaluate.document_conditions(POOLED) == {"png": POOLED}
    with pytest.raises(ValueError, match="clash"):
        evaluate.results_document({"png": {"jpeg": {}}, "jpeg90": POOLED})


# --- --url: a running service over HTTP ------------------------------------------------------


class FakeService(http.server.BaseHTTPRequestHandler):
    """Answers like POST /supersizeme/: a x2 PNG of the raw body (bicubic, or nearest for
    a row that differs from the baseline), or a 422 JSON error, or a 500 in plain text."""

    received: list[str]
    mode: str

    def do_POST(self):
        type(self).received.append(self.headers["Content-Type"])
        data = self.rfile.read(int(self.headers["Content-Length"]))
        if self.mode == "refuse":
            body = json.dumps({"error": "too_small", "message": "The image is too small."})
            return self.answer(422, "application/json", body.encode())
        if self.mode == "crash":
            return self.answer(500, "text/plain", b"Internal Server Error")
        with Image.open(io.BytesIO(data)) as image:
            size = (image.width * 2, image.height * 2)
            nearest = self.mode == "nearest"
            method = Image.Resampling.NEAREST if nearest else Image.Resampling.BICUBIC
            enlarged = image.resize(size, method)
        self.answer(200, "image/png", evaluate.png_bytes(enlarged))

    def answer(self, status: int, content_type: str, body: bytes) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def service(monkeypatch):
    """A function that starts the fake service in ``mode``: its URL and the Content-Types
    it received. Proxies are unset so that urllib goes straight to it."""
    for name in ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    servers = []

    def start(mode: str) -> tuple[str, list[str]]:
        handler = type("Handler", (FakeService,), {"mode": mode, "received": []})
        server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
        threading.Thread(target=server.serve_forever, daemon=True).start()
        servers.append(server)
        return f"http://127.0.0.1:{server.server_port}/supersizeme/", handler.received

    yield start
    for server in servers:
        server.shutdown()
        server.server_close()


@pytest.mark.parametrize("condition", ["png", "jpeg75"])
def test_url_row_is_what_the_service_answers(service, bench, condition):
    url, received = service("bicubic")
    remote = evaluate.evaluate_folder(evaluate.http_png(url), bench, 2, condition)
    local = evaluate.evaluate_folder(evaluate.bicubic_png(2), bench, 2, condition)
    assert remote["psnr"] == local["psnr"] and remote["ssim"] == local["ssim"]
    assert remote["seconds"] > 0
    expected = "image/png" if condition == "png" else "image/jpeg"
    assert received == [expected] * 4  # the untimed warm-up and the three images


def test_url_refusal_raises_with_status_and_error_code(service, bench):
    url, _ = service("refuse")
    with pytest.raises(evaluate.ServiceError, match="422 too_small: The image is too small") as e:
        evaluate.evaluate_folder(evaluate.http_png(url), bench, 2, "jpeg90")
    assert e.value.status == 422 and e.value.code == "too_small"
    assert url in str(e.value)


def test_url_error_without_json_still_says_its_status(service, bench):
    url, _ = service("crash")
    with pytest.raises(evaluate.ServiceError, match=r"500 \(no error code\): Internal") as e:
        evaluate.evaluate_folder(evaluate.http_png(url), bench, 2)
    assert e.value.status == 500 and e.value.code is None


# --- The command line with --jpeg ------------------------------------------------------------


@pytest.fixture
def mini(bench, tmp_path) -> Path:
    """The bench's two colour images, in a folder of their own."""
    folder = tmp_path / "mini"
    folder.mkdir()
    for name in ("img_0.png", "img_1.png"):
        shutil.copy(bench / name, folder / name)
    return folder


def test_cli_with_jpeg_writes_each_quality_and_the_gain_table(service, mini, tmp_path, capsys):
    url, received = service("nearest")
    out = tmp_path / "eval.json"
    args = ["--bicubic", "--sets", str(mini), "--jpeg", "90", "50", "--url", url]
    returned = evaluate.main([*args, "--url-name", "service", "--json", str(out)])
    document = json.loads(out.read_text())
    assert document == returned
    assert list(document) == ["mini", "jpeg"]
    assert list(document["jpeg"]) == ["90", "50"]
    keys = {"psnr", "ssim", "images", "seconds", "megapixels", "seconds_per_megapixel"}
    for results in (document, document["jpeg"]["90"], document["jpeg"]["50"]):
        assert list(results["mini"]) == ["bicubic", "service"]
        assert all(set(e) == keys and e["images"] == 2 for e in results["mini"].values())
    bicubic = [r["mini"]["bicubic"]["psnr"] for r in (document, *document["jpeg"].values())]
    assert bicubic[0] > bicubic[1] > bicubic[2]  # PNG, q90, q50: each baseline its own
    assert set(received) == {"image/png", "image/jpeg"}

    table = capsys.readouterr().out
    assert "| model | mini PSNR / SSIM | s / input MP |" in table
    by_condition = evaluate.document_conditions(document)
    assert list(by_condition) == ["png", "jpeg90", "jpeg50"]
    gains = {
        evaluate.condition_title(c): evaluate.pooled_gains(r)["service"]
        for c, r in by_condition.items()
    }
    assert "| input (2 images: mini) | bicubic PSNR | service PSNR | service gain |" in table
    for title, gain in gains.items():
        line = f"| {title} | {gain['bicubic']:.2f} | {gain['psnr']:.2f} | {gain['gain']:+.2f} |"
        assert line in table
    assert all(gain["gain"] < 0 for gain in gains.values())  # nearest loses to bicubic


def test_cli_jpeg_adds_bicubic_and_no_png_skips_png(mini):
    document = evaluate.main(["--sets", str(mini), "--jpeg", "75", "--no-png"])
    assert list(document) == ["jpeg"]
    assert list(document["jpeg"]["75"]["mini"]) == ["bicubic"]


@pytest.mark.parametrize(
    "args",
    [
        ["--bicubic", "--jpeg", "0"],
        ["--bicubic", "--jpeg", "high"],
        ["--bicubic", "--no-png"],
        ["--bicubic", "--url-name", "x"],
        [],
    ],
)
def test_cli_refuses_incoherent_options(mini, args):
    with pytest.raises(SystemExit):
        evaluate.main(["--sets", str(mini), *args])


def test_cli_refuses_a_set_named_like_the_jpeg_key(tmp_path):
    folder = tmp_path / "jpeg"
    folder.mkdir()
    with pytest.raises(SystemExit):
        evaluate.main(["--sets", str(folder), "--jpeg", "90"])
