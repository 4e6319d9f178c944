"""Replay of Pillow's own test images (broken ones included) through a real gunicorn.

The corpus is ``shared/corpus/pillow-test-images`` beside the clone (646 files, 11 MB,
Pillow's HPND licence; see its README.md there). It is not copied into the repository:
11 MB of third-party images would triple the size of a clone for one test. Where it is
absent the test is skipped and says where it looked.

Every file goes in as a raw body with the Content-Type its extension suggests. The
contract: a 200 with a PNG of exactly 2W x 2H of the upright upload, or a 4xx JSON
error; never a 5xx, a traceback, a worker timeout or a replaced worker.
"""

from __future__ import annotations

import json
import mimetypes
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from io import BytesIO
from pathlib import Path

import pytest
from PIL import Image, ImageOps

from benchmarks.gunicorn_server import request, running_gunicorn
from supersizeme.service.config import REPO_ROOT

CORPUS = REPO_ROOT.parent / "shared" / "corpus" / "pillow-test-images"
MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff")
# Two workers, two clients: each worker runs at most one image and queues at most one,
# under SSM_MAX_WAITING, so a 429 here would be a fault, not back-pressure.
WORKERS = 2

pytestmark = [
    pytest.mark.gunicorn,  # the corpus replayed through gunicorn
    pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}"),
]


def content_type(path: Path) -> str:
    return mimetypes.guess_type(path.name)[0] or "application/octet-stream"


def upright_size(data: bytes) -> tuple[int, int]:
    """The upload's size as Pillow sees it once EXIF orientation is applied."""
    with Image.open(BytesIO(data), formats=["PNG", "JPEG"]) as image:
        return ImageOps.exif_transpose(image).size


def replay(port: int, path: Path) -> tuple[Path, int, dict[str, str], bytes]:
    status, headers, body = request(
        port, "POST", "/supersizeme/", path.read_bytes(), {"Content-Type": content_type(path)}
    )
    return path, status, headers, body


def problems_with(path: Path, status: int, headers: dict[str, str], body: bytes) -> list[str]:
    """What is wrong with one answer, as readable lines (empty when it is right)."""
    data = path.read_bytes()
    if status == 200:
        if headers.get("Content-Type") != "image/png":
            return [f"{path.name}: 200 with Content-Type {headers.get('Content-Type')}"]
        with Image.open(BytesIO(body), formats=["PNG"]) as result:
            result.load()
            width, height = upright_size(data)
            if result.size != (2 * width, 2 * height):
                return [f"{path.name}: {result.size} for a {width}x{height} upload"]
        return []
    if not 400 <= status < 500:
        return [f"{path.name}: status {status}: {body[:200]!r}"]
    try:
        error = json.loads(body)
    except ValueError:
        return [f"{path.name}: {status} without JSON: {body[:200]!r}"]
    if set(error) != {"error", "message", "request_id"}:
        return [f"{path.name}: {status} with error JSON {error}"]
    # The format is judged by magic bytes alone, whatever the name or Content-Type says.
    if (error["error"] == "unsupported_media_type") == data.startswith(MAGIC):
        return [f"{path.name}: {error['error']} for a body starting {data[:8]!r}"]
    return []


def test_every_corpus_file_gets_a_png_or_a_client_error(tiny_model_dir, tmp_path):
    files = sorted(p for p in CORPUS.iterdir() if p.is_file())
    log = tmp_path / "gunicorn.log"
    with running_gunicorn(tiny_model_dir, log, workers=WORKERS) as server:
        workers = server.worker_pids()
        assert len(workers) == WORKERS
        with ThreadPoolExecutor(WORKERS) as pool:
            answers = list(pool.map(lambda path: replay(server.port, path), files))
        assert server.worker_pids() == workers, "a worker was replaced during the replay"
    outcomes = Counter()
    problems = []
    for path, status, headers, body in answers:
        code = "" if status == 200 else json.loads(body).get("error", "?") if body else "?"
        outcomes[status, code] += 1
        problems += problems_with(path, status, headers, body)
    print(f"\n{len(files)} corpus files:")
    for (status, code), count in sorted(outcomes.items()):
        print(f"  {status} {code or 'png'}: {count}")
    text = log.read_text(errors="replace")
    assert "Traceback" not in text
    assert "WORKER TIMEOUT" not in text
    assert not problems, "\n".join(problems)
    assert outcomes[200, ""] > 0
