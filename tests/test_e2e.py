"""End to end: real gunicorn serving the shipped model, driven by curl and raw HTTP."""

from __future__ import annotations

import io
import json
import os
import shutil
import socket
import subprocess
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from benchmarks.gunicorn_server import free_port, gunicorn_command, request
from benchmarks.imagefactory import apng, header_bomb
from supersizeme.service.config import REPO_ROOT
from supersizeme.toolchain.quality import y_psnr_ssim

pytestmark = pytest.mark.gunicorn  # every test talks to a real gunicorn


@pytest.fixture(scope="module")
def server(shipped_server):
    """One gunicorn worker serving the shipped models."""
    return shipped_server


def synthetic_photo() -> Image.Image:
    """Sharp edges, thin lines, text and smooth shading: what bicubic blurs."""
    image = Image.new("RGB", (240, 160), (200, 210, 225))
    draw = ImageDraw.Draw(image)
    for i in range(12):
        draw.line([(10 + i * 9, 10), (40 + i * 11, 150)], fill=(30 + i * 15, 60, 90), width=2)
    draw.ellipse([120, 20, 220, 120], outline=(20, 20, 20), width=3, fill=(240, 180, 40))
    draw.rectangle([150, 125, 230, 150], fill=(60, 120, 60))
    draw.text((128, 60), "RDN x2", fill=(0, 0, 0))
    return image


def readme_curl_command() -> str:
    """The curl line of the README's quick start, run exactly as written."""
    for line in (REPO_ROOT / "README.md").read_text().splitlines():
        if line.strip().startswith("curl -X POST"):
            return line.strip()
    raise AssertionError("README has no curl example")


def test_health_and_readiness(server):
    port = server.port
    status, _, body = request(port, "GET", "/healthz")
    assert status == 200 and json.loads(body)["status"] == "ok"
    assert request(port, "GET", "/readyz")[0] == 200


@pytest.mark.parametrize("fmt", ["PNG", "JPEG"])
def test_readme_curl_example(server, tmp_path, fmt):
    port = server.port
    truth = synthetic_photo()
    photo = truth.resize((truth.width // 2, truth.height // 2), Image.Resampling.BICUBIC)
    photo.save(tmp_path / "in.png", fmt, quality=95)  # the README's file name for both
    command = readme_curl_command()
    completed = subprocess.run(
        ["bash", "-c", command],
        cwd=tmp_path,
        env={**os.environ, "HOST": f"http://127.0.0.1:{port}"},
        capture_output=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr
    result = Image.open(tmp_path / "out.png")
    assert result.format == "PNG"
    assert result.size == (photo.width * 2, photo.height * 2)
    if fmt == "PNG":
        # Sharper than interpolation: the shipped model beats bicubic against the truth.
        bicubic = photo.resize(result.size, Image.Resampling.BICUBIC)
        ours = y_psnr_ssim(np.asarray(truth), np.asarray(result.convert("RGB")), border=2)[0]
        baseline = y_psnr_ssim(np.asarray(truth), np.asarray(bicubic), border=2)[0]
        assert ours > baseline + 0.5, (ours, baseline)


@pytest.mark.parametrize(("quality", "band"), [(50, "photo-low"), (85, "photo")])
def test_a_compressed_photo_is_served_by_its_photo_model_and_comes_out_closer(
    server, quality, band
):
    """A JPEG goes to the photo model of its quality by default, and its answer is nearer
    the truth than both bicubic of the same JPEG and the clean model's."""
    port = server.port
    truth = synthetic_photo()
    small = truth.resize((truth.width // 2, truth.height // 2), Image.Resampling.BICUBIC)
    upload = io.BytesIO()
    small.save(upload, "JPEG", quality=quality)
    answers = {}
    for query in ("", "?model=clean"):
        status, headers, body = request(port, "POST", f"/supersizeme/{query}", upload.getvalue())
        assert status == 200, body
        answers[headers["X-Model"]] = np.asarray(Image.open(io.BytesIO(body)).convert("RGB"))
    decoded = Image.open(io.BytesIO(upload.getvalue()))
    bicubic = np.asarray(decoded.resize(truth.size, Image.Resampling.BICUBIC))

    def psnr(image: np.ndarray) -> float:
        return y_psnr_ssim(np.asarray(truth), image, border=2)[0]

    assert set(answers) == {band, "clean"}
    assert psnr(answers[band]) > psnr(answers["clean"]) + 0.3
    assert psnr(answers[band]) > psnr(bicubic) + 0.5


def test_scale_4_as_webp_through_gunicorn(server):
    port = server.port
    photo = io.BytesIO()
    synthetic_photo().resize((60, 40), Image.Resampling.BICUBIC).save(photo, "PNG")
    status, headers, body = request(
        port, "POST", "/supersizeme/?scale=4&format=webp", photo.getvalue()
    )
    assert status == 200, body
    assert headers["Content-Type"] == "image/webp"
    assert headers["Content-Disposition"] == 'inline; filename="supersized-x4.webp"'
    result = Image.open(io.BytesIO(body))
    assert (result.format, result.size) == ("WEBP", (240, 160))


@pytest.mark.parametrize("framing", ["Transfer-Encoding: chunked", "X-Framing: content-length"])
def test_upload_over_the_limit_gets_413(server, tmp_path, framing):
    port = server.port
    big = tmp_path / "big.jpg"
    big.write_bytes(b"\xff\xd8\xff" + os.urandom(5 * 1024 * 1024 + 100))
    completed = subprocess.run(
        [
            "curl",
            "-s",
            "-X",
            "POST",
            f"http://127.0.0.1:{port}/supersizeme",
            "-H",
            framing,
            "-H",
            "Content-Type: image/jpeg",
            "--data-binary",
            f"@{big}",
            "-w",
            "\n%{http_code}",
        ],
        capture_output=True,
        timeout=60,
    )
    body, status = completed.stdout.rsplit(b"\n", 1)
    assert status == b"413"
    assert json.loads(body)["error"] == "payload_too_large"


def bad_uploads() -> list[tuple[bytes, int]]:
    """Hostile, broken or odd bodies, each with the status it must get."""
    good = io.BytesIO()
    Image.new("RGB", (64, 64), "red").save(good, "PNG")
    png = good.getvalue()
    rng = np.random.default_rng(5)
    return [
        (b"", 400),
        (png[:40], 422),
        (png[:-20], 422),
        (header_bomb(100_000, 100_000), 422),
        (apng(), 422),
        (png * 2, 200),  # bytes after IEND are ignored, as browsers do
        (b"GIF89a" + bytes(100), 415),
        (b"%PDF-1.7\n", 415),
        (b"\xff\xd8\xff\xe0" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), 422),
        (b"\x89PNG\r\n\x1a\n" + bytes(rng.integers(0, 256, 3000, dtype=np.uint8)), 422),
        (bytes(rng.integers(0, 256, 500, dtype=np.uint8)), 415),
        (b"<svg/>", 415),
    ]


def test_two_hundred_bad_uploads_leave_the_worker_alive(server):
    port, log = server.port, server.log
    workers = server.worker_pids()
    uploads = bad_uploads()
    for i in range(200):
        upload, expected = uploads[i % len(uploads)]
        status, _, body = request(port, "POST", "/supersizeme/", upload)
        assert status == expected, (i, status, body)
        if status != 200:
            assert set(json.loads(body)) == {"error", "message", "request_id"}
    assert server.worker_pids() == workers
    assert "Traceback" not in Path(log).read_text()


def test_weights_that_do_not_fit_stop_gunicorn_with_a_clear_message(tiny_model_dir, tmp_path):
    folder = tmp_path / "mismatched"
    shutil.copytree(tiny_model_dir, folder)
    spec = json.loads((folder / "model.json").read_text())
    spec["G"] = 8  # the weights were trained with G = 4
    (folder / "model.json").write_text(json.dumps(spec))
    env = {
        **os.environ,
        "SSM_BIND": f"127.0.0.1:{free_port()}",
        "SSM_WORKERS": "1",
        "SSM_MODEL_DIR": str(folder),
        "SSM_PHOTO_MODEL_DIR": "none",
    }
    completed = subprocess.run(
        gunicorn_command(),
        cwd=REPO_ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode != 0
    assert "failed to load" in completed.stderr and "do not fit" in completed.stderr


@pytest.mark.parametrize("chunks", [b"100\r\n\x89PNG\r\n", b"zz\r\n\x89PNG\r\n"])
def test_body_cut_short_or_misframed_is_a_client_error(server, chunks):
    port = server.port
    with socket.create_connection(("127.0.0.1", port), timeout=30) as sock:
        sock.sendall(
            b"POST /supersizeme/ HTTP/1.1\r\nHost: x\r\nContent-Type: image/png\r\n"
            b"Transfer-Encoding: chunked\r\n\r\n" + chunks
        )
        sock.shutdown(socket.SHUT_WR)  # the client gives up mid-chunk
        reply = b""
        while chunk := sock.recv(65536):
            reply += chunk
    head, _, body = reply.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 400"), reply
    assert json.loads(body)["error"] == "incomplete_body"
