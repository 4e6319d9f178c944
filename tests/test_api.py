"""The HTTP contract of supersizeme/service/api.py, with real PNG/JPEG bytes and the tiny RDN."""

from __future__ import annotations

import io
import json
import logging
import threading
import time

import numpy as np
import pytest
from loopback import connected_pair
from PIL import Image
from prometheus_text import parse_samples, value
from werkzeug.datastructures import MultiDict

from benchmarks.imagefactory import encoded as factory_encoded
from benchmarks.imagefactory import gradient, rgb48_png, srgb_profile
from supersizeme.service.admission import InferenceGate
from supersizeme.service.capacity import MemoryLedger, output_bytes
from supersizeme.service.connection import SOCKET_KEY
from supersizeme.service.errors import UploadTimedOut
from supersizeme.service.tiling import Stop
from supersizeme.service.upscaler import ModelSlot


def picture(mode: str = "RGB", size: tuple[int, int] = (40, 30)) -> Image.Image:
    return Image.fromarray(gradient(*size), "RGB").convert(mode)


def encoded(image: Image.Image, image_format: str = "PNG", **options: object) -> bytes:
    return factory_encoded(image, image_format, **options)


def post(client, data: bytes, path: str = "/supersizeme/", **kwargs):
    kwargs.setdefault("content_type", "image/png")
    return client.post(path, data=data, **kwargs)


def as_image(response) -> Image.Image:
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == "image/png"
    return Image.open(io.BytesIO(response.data))


def assert_error(response, status: int, code: str) -> dict:
    assert response.status_code == status, response.get_data(as_text=True)
    assert response.mimetype == "application/json"
    body = response.get_json()
    assert body["error"] == code
    assert body["message"] and body["request_id"] == response.headers["X-Request-ID"]
    text = json.dumps(body)
    assert "Traceback" not in text and "/" not in body["message"]
    return body


@pytest.mark.parametrize("path", ["/supersizeme/", "/supersizeme"])
def test_both_paths_answer_directly_with_a_png_twice_the_size(client, path):
    result = as_image(post(client, encoded(picture()), path))
    assert result.size == (80, 60) and result.mode == "RGB"


@pytest.mark.parametrize(
    "content_type",
    [
        "image/png",
        "image/jpeg",
        "image/jpg",
        "application/octet-stream",
        "application/x-www-form-urlencoded",
        None,
    ],
)
def test_format_comes_from_the_bytes_not_the_header(client, content_type):
    response = client.post(
        "/supersizeme", data=encoded(picture(), "JPEG"), content_type=content_type
    )
    assert as_image(response).size == (80, 60)


def test_multipart_upload_with_one_file(client):
    data = {"image": (io.BytesIO(encoded(picture())), "photo.png", "image/png")}
    response = client.post("/supersizeme/", data=data, content_type="multipart/form-data")
    assert as_image(response).size == (80, 60)


@pytest.mark.parametrize("count", [0, 2])
def test_multipart_needs_exactly_one_file(client, count):
    data = {f"f{i}": (io.BytesIO(encoded(picture())), f"{i}.png") for i in range(count)}
    data["note"] = "hello"
    response = client.post("/supersizeme/", data=data, content_type="multipart/form-data")
    assert_error(response, 400, "expected_one_file")


def test_request_id_and_server_timing_headers(client):
    response = post(client, encoded(picture()), headers={"X-Request-ID": "abc-123"})
    assert response.headers["X-Request-ID"] == "abc-123"
    timing = response.headers["Server-Timing"]
    assert all(f"{name};dur=" in timing for name in ("decode", "queue", "inference", "encode"))
    generated = post(client, encoded(picture())).headers["X-Request-ID"]
    assert len(generated) == 32
    hostile = post(client, encoded(picture()), headers={"X-Request-ID": "a b\x01" * 50})
    assert hostile.headers["X-Request-ID"] != "a b\x01" * 50


@pytest.mark.parametrize(
    "mode,expected",
    [("RGB", "RGB"), ("L", "L"), ("RGBA", "RGBA"), ("LA", "LA"), ("P", "RGB")],
)
def test_modes_map_back(client, mode, expected):
    assert as_image(post(client, encoded(picture(mode)))).mode == expected


def test_transparency_survives(client):
    image = picture("RGBA")
    alpha = np.zeros((30, 40), np.uint8)
    alpha[:, 20:] = 255
    image.putalpha(Image.fromarray(alpha))
    result = np.asarray(as_image(post(client, encoded(image))))
    assert result.shape == (60, 80, 4)
    assert result[:, :36, 3].max() == 0 and result[:, 44:, 3].min() == 255


def test_palette_with_trns_keeps_transparency(client):
    image = picture("P")
    image.info["transparency"] = 0
    result = as_image(post(client, encoded(image, transparency=0)))
    assert result.mode == "RGBA"


def test_cmyk_jpeg_and_sixteen_bit_png(client):
    assert as_image(post(client, encoded(picture("CMYK"), "JPEG"))).mode == "RGB"
    sixteen = Image.fromarray((np.arange(40 * 30).reshape(30, 40) * 50).astype(np.uint16))
    result = as_image(post(client, encoded(sixteen)))
    assert result.size == (80, 60) and result.mode.startswith("I")


def test_exif_orientation_is_applied(client):
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    result = as_image(post(client, encoded(picture(), "JPEG", exif=exif)))
    assert result.size == (60, 80)


def test_empty_body(client):
    assert_error(post(client, b""), 400, "empty_body")


def test_body_over_five_megabytes_is_refused_before_decoding(client):
    response = post(client, b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024))
    body = assert_error(response, 413, "payload_too_large")
    assert "5,242,880" in body["message"]


def test_chunked_body_over_the_limit(client):
    stream = io.BytesIO(b"\xff\xd8\xff" + b"\0" * (5 * 1024 * 1024 + 10))
    response = client.post(
        "/supersizeme/",
        input_stream=stream,
        headers={"Transfer-Encoding": "chunked", "Content-Type": "image/jpeg"},
        environ_overrides={"wsgi.input_terminated": True},
    )
    assert_error(response, 413, "payload_too_large")


@pytest.mark.parametrize(
    "data",
    [
        encoded(picture(), "GIF"),
        encoded(picture(), "WEBP"),
        encoded(picture(), "BMP"),
        encoded(picture(), "TIFF"),
        b"%PDF-1.4\n1 0 obj\n<<>>\nendobj\n",
        b'<svg xmlns="http://www.w3.org/2000/svg" width="10" height="10"/>',
        bytes(np.random.default_rng(0).integers(0, 256, 4096, dtype=np.uint8)),
    ],
    ids=["gif", "webp", "bmp", "tiff", "pdf", "svg", "random"],
)
def test_other_formats_get_415(client, data):
    assert_error(post(client, data), 415, "unsupported_media_type")


def test_corrupt_and_truncated_images_get_422(client):
    png = encoded(picture())
    assert_error(post(client, png[: len(png) // 2]), 422, "corrupt_image")
    jpeg = encoded(picture(size=(200, 200)), "JPEG")
    assert_error(post(client, jpeg[: len(jpeg) // 2]), 422, "corrupt_image")


def test_pixel_cap_and_minimum_side(tiny_model_dir):
    from supersizeme.service.app import create_app

    app = create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": None,
            "MAX_PIXELS": 1000,
        }
    )
    body = assert_error(post(app.test_client(), encoded(picture())), 422, "too_many_pixels")
    assert "1,000" in body["message"] and "40x30" in body["message"]
    client = app.test_client()
    assert_error(post(client, encoded(picture(size=(40, 3)))), 422, "too_small")


def test_animated_png_is_refused(client):
    frames = [picture(), picture().rotate(180)]
    data = encoded(frames[0], save_all=True, append_images=frames[1:])
    assert_error(post(client, data), 422, "animated_image")


def test_unknown_route_and_wrong_method_are_json(client):
    assert_error(client.get("/nope"), 404, "not_found")
    assert_error(client.get("/supersizeme/"), 405, "method_not_allowed")


def test_not_ready_worker_answers_503_with_retry_after(app, client):
    loaded = app.extensions["supersizeme.model"]
    app.extensions["supersizeme.model"] = ModelSlot(loaded.folders, loaded.settings, loaded.limits)
    response = post(client, encoded(picture()))
    assert_error(response, 503, "not_ready")
    assert response.headers["Retry-After"]
    assert_error(client.get("/readyz"), 503, "not_ready")
    assert client.get("/healthz").status_code == 200


def test_an_image_that_would_not_fit_beside_those_in_flight_gets_503(app, client):
    slot = app.extensions["supersizeme.model"]
    slot.memory = ledger = MemoryLedger(output_bytes(40 * 30, 2))
    ledger.reserve(ledger.budget // 2)  # another image in flight
    response = post(client, encoded(picture()))
    body = assert_error(response, 503, "insufficient_memory")
    assert response.headers["Retry-After"] and "retry shortly" in body["message"]
    ledger.release(ledger.budget // 2)
    served = post(client, encoded(picture()))
    as_image(served)
    assert ledger.reserved == output_bytes(40 * 30, 2)  # held until the answer is sent
    served.close()  # as the server does once it has sent it
    assert ledger.reserved == 0
    # One that could not fit even alone is the client's to change, not to retry.
    too_large = post(client, encoded(picture(size=(80, 60))))
    body = assert_error(too_large, 422, "too_many_pixels")
    assert "more than the" in body["message"] and "Retry-After" not in too_large.headers
    assert ledger.reserved == 0
    # Grey results are reserved at their own, larger rate.
    ledger.budget = output_bytes(40 * 30, 2, grey=True) - 1
    assert_error(post(client, encoded(picture("L"))), 422, "too_many_pixels")
    ledger.budget = output_bytes(40 * 30, 2, grey=True)
    grey = post(client, encoded(picture("L")))
    assert as_image(grey).mode == "L" and ledger.reserved == ledger.budget
    grey.close()


def test_deadline_gives_503(app, client):
    app.config["DEADLINE_SECONDS"] = 0.0
    response = post(client, encoded(picture()))
    assert_error(response, 503, "deadline_exceeded")
    assert response.headers["Retry-After"]


def test_unexpected_failure_is_a_generic_500(app, client, monkeypatch):
    def explode(*args, **kwargs):
        raise RuntimeError("secret detail at /srv/models/x")

    monkeypatch.setattr("supersizeme.service.api.upscale_decoded", explode)
    body = assert_error(post(client, encoded(picture())), 500, "internal_error")
    assert "secret" not in json.dumps(body)


def test_health_ready_and_model_endpoints(client, tiny_model_dir):
    assert client.get("/healthz").get_json()["status"] == "ok"
    assert client.get("/readyz").get_json()["status"] == "ready"
    info = client.get("/supersizeme/model").get_json()
    assert info["name"] == "rdn-C1-D1-G4-G04-x2"
    assert info["parameters"] == {
        "C": 1,
        "D": 1,
        "G": 4,
        "G0": 4,
        "scale": 2,
        "upscaling": "shuffle",
    }
    assert len(info["weights_sha256"]) == 64
    assert info["limits"]["max_body_bytes"] == 5 * 1024 * 1024


def test_full_worker_answers_429_and_still_reports_health(app, client):
    gate = InferenceGate(max_waiting=0)
    app.extensions["supersizeme.gate"] = gate
    with gate.turn(Stop(deadline=time.monotonic() + 10)):
        response = post(client, encoded(picture()))
        assert_error(response, 429, "overloaded")
        assert response.headers["Retry-After"]
        assert client.get("/healthz").status_code == 200


class Unread(io.RawIOBase):
    """A request body that fails the request if anything reads it."""

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        raise AssertionError("the body was read")


def post_stream(client, stream, length: int | None, **environ):
    """POST a body read from ``stream`` as the server's own input (a socket's, say), with
    ``length`` as its Content-Length or, for None, chunked."""
    framing = (
        {"CONTENT_LENGTH": str(length)}
        if length is not None
        else {"HTTP_TRANSFER_ENCODING": "chunked", "wsgi.input_terminated": True}
    )
    return client.post(
        "/supersizeme/",
        content_type="image/png",
        environ_overrides={"wsgi.input": stream, **framing, **environ},
    )


@pytest.mark.parametrize("length", [1_000_000, None], ids=["content-length", "chunked"])
def test_a_full_worker_refuses_before_reading_the_body(app, client, length):
    gate = InferenceGate(max_waiting=0)
    app.extensions["supersizeme.gate"] = gate
    with gate.turn(Stop()):
        response = post_stream(client, Unread(), length)
    assert_error(response, 429, "overloaded")


def test_a_declared_oversize_body_gets_413_before_429(app, client):
    gate = InferenceGate(max_waiting=0)
    app.extensions["supersizeme.gate"] = gate
    with gate.turn(Stop()):
        response = post_stream(client, Unread(), 6 * 1024 * 1024)
    assert_error(response, 413, "payload_too_large")


def send_slowly(sock, data: bytes, seconds: float, pieces: int = 10) -> threading.Thread:
    """Send ``data`` over ``seconds`` in even pieces, from a thread."""

    def run() -> None:
        for index in range(pieces):
            time.sleep(seconds / pieces)
            sock.sendall(data[index * len(data) // pieces : (index + 1) * len(data) // pieces])

    thread = threading.Thread(target=run)
    thread.start()
    return thread


def test_the_deadline_starts_once_the_body_has_arrived(app, client):
    app.config["DEADLINE_SECONDS"] = 0.3
    data = encoded(picture())
    with connected_pair() as (peer, server):
        sender = send_slowly(peer, data, seconds=0.8)
        response = post_stream(client, server.makefile("rb"), len(data), **{SOCKET_KEY: server})
        sender.join(5)
    assert as_image(response).size == (80, 60)


class TimedOutInput(io.RawIOBase):
    """A server's body reader whose upload time ran out after ``arrived`` bytes."""

    def __init__(self, arrived: bytes):
        self.arrived = io.BytesIO(arrived)

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        count = self.arrived.readinto(buffer)
        if not count:
            raise UploadTimedOut
        return count


@pytest.mark.parametrize("form", [False, True])
def test_a_body_slower_than_the_upload_limit_gets_408(app, client, form):
    app.config["UPLOAD_SECONDS"] = 0.3
    data = encoded(picture())
    if form:
        boundary = "x0x0"
        data = (
            f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; "
            'filename="a.png"\r\nContent-Type: image/png\r\n\r\n'
        ).encode() + data
    stream = io.BufferedReader(TimedOutInput(data[: len(data) // 2]))
    response = client.post(
        "/supersizeme/",
        content_type=f"multipart/form-data; boundary={boundary}" if form else "image/png",
        environ_overrides={"wsgi.input": stream, "CONTENT_LENGTH": str(len(data) + 100)},
    )
    body = assert_error(response, 408, "upload_timeout")
    assert "0.3 s" in body["message"]


def test_a_client_that_hung_up_is_logged_and_counted_as_499(app, client, caplog):
    caplog.set_level(logging.INFO, logger="supersizeme.requests")
    with connected_pair() as (peer, server):
        peer.close()
        response = post(client, encoded(picture()), environ_overrides={SOCKET_KEY: server})
    assert response.status_code == 499
    assert "Retry-After" not in response.headers
    (line,) = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("requests")]
    assert (line["status"], line["error"]) == (499, "client_closed_request")
    assert "inference_s" not in line  # stopped before its first tile
    samples = parse_samples(client.get("/metrics").get_data(as_text=True))
    assert value(samples, "ssm_requests_total", endpoint="/supersizeme/", status="499") == 1
    assert value(samples, "ssm_rejected_requests_total", reason="client_closed_request") == 1


def test_two_files_under_one_field_name(client):
    data = MultiDict([("image", (io.BytesIO(encoded(picture())), f"{i}.png")) for i in range(2)])
    response = client.post("/supersizeme/", data=data, content_type="multipart/form-data")
    assert_error(response, 400, "expected_one_file")


def test_405_names_the_allowed_methods(client):
    response = client.get("/supersizeme/")
    assert "POST" in response.headers["Allow"]


def test_background_loading_reports_ready_when_done(tiny_model_dir):
    from supersizeme.service.app import create_app

    app = create_app(
        {"MODEL_DIR": str(tiny_model_dir), "PHOTO_MODEL_DIR": None, "LOAD_IN_BACKGROUND": True}
    )
    assert app.extensions["supersizeme.model"].wait(60)
    assert app.test_client().get("/readyz").status_code == 200


def test_sixteen_bit_rgb_png_is_served_as_eight_bit_rgb(client):
    samples = (np.arange(30 * 40 * 3).reshape(30, 40, 3) * 37 % 65536).astype(np.uint16)
    result = as_image(post(client, rgb48_png(samples)))
    assert result.size == (80, 60) and result.mode == "RGB"


def test_icc_profile_is_kept_and_exif_dropped(client):
    exif = Image.Exif()
    exif[0x010F] = "CameraMaker"
    data = encoded(picture(), "JPEG", icc_profile=srgb_profile(), exif=exif)
    result = as_image(post(client, data))
    assert result.info.get("icc_profile") == srgb_profile()
    assert "exif" not in result.info


# --- ?scale= and ?format= -----------------------------------------------------------------


@pytest.mark.parametrize(
    ("query", "mimetype", "size", "filename"),
    [
        ("?scale=4", "image/png", (160, 120), "supersized-x4.png"),
        ("?format=webp", "image/webp", (80, 60), "supersized-x2.webp"),
        ("?scale=4&format=jpeg", "image/jpeg", (160, 120), "supersized-x4.jpeg"),
        ("?scale=2&format=png", "image/png", (80, 60), "supersized-x2.png"),
    ],
)
def test_scale_and_format_choose_the_output(client, query, mimetype, size, filename):
    response = post(client, encoded(picture()), "/supersizeme/" + query)
    assert response.status_code == 200, response.get_data(as_text=True)
    assert response.mimetype == mimetype
    assert response.headers["Content-Disposition"] == f'inline; filename="{filename}"'
    result = Image.open(io.BytesIO(response.data))
    result.load()
    assert Image.MIME[result.format] == mimetype and result.size == size


def test_transparency_cannot_be_sent_as_jpeg(client):
    image = picture("RGBA")
    image.putalpha(0)
    body = assert_error(
        post(client, encoded(image), "/supersizeme/?format=jpeg"), 422, "format_cannot_carry_alpha"
    )
    assert "png or webp" in body["message"]
    assert as_image(post(client, encoded(image), "/supersizeme/?format=png")).mode == "RGBA"


@pytest.mark.parametrize(
    ("query", "name", "allowed"),
    [
        ("scale=3", "scale", ["2", "4"]),
        ("scale=4.0", "scale", ["2", "4"]),
        ("scale=", "scale", ["2", "4"]),
        ("scale=2&scale=4", "scale", ["2", "4"]),
        ("format=gif", "format", ["png", "webp", "jpeg"]),
        ("format=PNG", "format", ["png", "webp", "jpeg"]),
        ("format=jpg", "format", ["png", "webp", "jpeg"]),
    ],
)
def test_bad_parameter_values_name_the_allowed_ones(client, query, name, allowed):
    body = assert_error(
        post(client, encoded(picture()), f"/supersizeme/?{query}"), 422, "invalid_parameter"
    )
    assert body["allowed"] == allowed
    assert name in body["message"] and all(value in body["message"] for value in allowed)


def test_unknown_parameter_is_named(client):
    body = assert_error(
        post(client, encoded(picture()), "/supersizeme/?size=4"), 422, "invalid_parameter"
    )
    assert "'size'" in body["message"] and "scale" in body["message"]
    assert set(body) == {"error", "message", "request_id"}


def test_parameters_are_checked_before_the_body_is_read(client):
    too_large = b"\x89PNG\r\n\x1a\n" + b"\0" * (5 * 1024 * 1024)
    assert_error(post(client, too_large, "/supersizeme/?scale=8"), 422, "invalid_parameter")
    assert_error(post(client, b"", "/supersizeme/?format=bmp"), 422, "invalid_parameter")


def test_x4_pixel_cap_is_a_fifth_of_the_cap(tiny_model_dir):
    from supersizeme.service.app import create_app

    app = create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": None,
            "MAX_PIXELS": 5000,
        }
    )
    client = app.test_client()
    data = encoded(picture())  # 40x30 = 1,200 pixels
    assert as_image(post(client, data)).size == (80, 60)
    body = assert_error(post(client, data, "/supersizeme/?scale=4"), 422, "too_many_pixels")
    assert "x4" in body["message"] and "1,000" in body["message"] and "5,000" in body["message"]
    info = client.get("/supersizeme/model").get_json()
    assert info["limits"]["max_pixels_by_scale"] == {"2": 5000, "4": 1000}


def test_model_metadata_lists_scales_and_formats(client):
    info = client.get("/supersizeme/model").get_json()
    assert info["scales"] == [2, 4]
    assert info["formats"] == ["png", "webp", "jpeg"]
    cap = info["limits"]["max_pixels"]
    assert info["limits"]["max_pixels_by_scale"] == {"2": cap, "4": cap // 5}
    # In output pixels: x4's results stay under x2's, which a client can plan for.
    outputs = info["limits"]["max_output_pixels_by_scale"]
    assert outputs == {"2": 4 * cap, "4": 16 * (cap // 5)} and outputs["4"] < outputs["2"]


def test_a_jpeg_goes_to_the_photo_model_and_a_png_to_the_clean_one(client):
    """The tiny photo model has other weights than the clean one, so the answers show
    which model ran; X-Model names it."""
    photo = encoded(picture(), "JPEG", quality=75)
    routed = post(client, photo, content_type="image/jpeg")
    assert routed.headers["X-Model"] == "photo"
    chosen = post(client, photo, "/supersizeme/?model=photo", content_type="image/jpeg")
    clean = post(client, photo, "/supersizeme/?model=clean", content_type="image/jpeg")
    assert clean.headers["X-Model"] == "clean" and chosen.headers["X-Model"] == "photo"
    assert np.array_equal(np.asarray(as_image(routed)), np.asarray(as_image(chosen)))
    assert not np.array_equal(np.asarray(as_image(routed)), np.asarray(as_image(clean)))

    png = encoded(picture())
    assert post(client, png).headers["X-Model"] == "clean"
    assert post(client, png, "/supersizeme/?model=photo").headers["X-Model"] == "photo"


@pytest.mark.parametrize(
    ("quality", "expected"),
    [(30, "photo-low"), (74, "photo-low"), (75, "photo"), (95, "photo"), (96, "clean")],
)
def test_a_jpeg_goes_to_the_model_of_its_quality_band(client, quality, expected):
    """The quality is read from the upload's own tables: a real JPEG of each quality."""
    upload = encoded(picture(), "JPEG", quality=quality)
    routed = post(client, upload, content_type="image/jpeg")
    assert routed.headers["X-Model"] == expected
    chosen = post(client, upload, f"/supersizeme/?model={expected}", content_type="image/jpeg")
    assert np.array_equal(np.asarray(as_image(routed)), np.asarray(as_image(chosen)))
    for other in {"clean", "photo", "photo-low"} - {expected}:
        answer = post(client, upload, f"/supersizeme/?model={other}", content_type="image/jpeg")
        assert answer.headers["X-Model"] == other
        assert not np.array_equal(np.asarray(as_image(routed)), np.asarray(as_image(answer)))


def test_without_a_photo_low_model_its_band_goes_to_the_photo_model(
    tiny_model_dir, tiny_photo_model_dir
):
    from supersizeme.service.app import create_app

    client = create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": str(tiny_photo_model_dir),
            "PHOTO_LOW_MODEL_DIR": None,
        }
    ).test_client()
    low = encoded(picture(), "JPEG", quality=40)
    assert post(client, low, content_type="image/jpeg").headers["X-Model"] == "photo"
    body = assert_error(
        post(client, low, "/supersizeme/?model=photo-low", content_type="image/jpeg"),
        422,
        "invalid_parameter",
    )
    assert body["allowed"] == ["auto", "clean", "photo"]
    models = client.get("/supersizeme/model").get_json()["models"]
    assert [(m["role"], m["default_for_jpeg_quality"]) for m in models] == [
        ("clean", [96, 100]),
        ("photo", [1, 95]),
    ]


def test_x4_of_a_jpeg_runs_the_photo_model_first_then_the_clean_one(app, client, monkeypatch):
    slot = app.extensions["supersizeme.model"]
    calls = []
    for role, upscaler in list(slot.upscalers.items()):

        def recording(image, stop=None, lanes=None, dtype=np.float32, role=role, run=upscaler):
            calls.append((role, image.shape[:2]))
            return run(image, stop, lanes, dtype)

        monkeypatch.setitem(slot.upscalers, role, recording)
    response = post(client, encoded(picture(), "JPEG"), "/supersizeme/?scale=4")
    assert as_image(response).size == (160, 120) and response.headers["X-Model"] == "photo"
    assert calls == [("photo", (30, 40)), ("clean", (60, 80))]


def test_a_server_without_a_photo_model_serves_jpeg_with_the_clean_one(
    tiny_model_dir, tiny_photo_low_model_dir
):
    """No photo model means no photo model at all: photo-low is not served alone."""
    from supersizeme.service.app import create_app

    client = create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": None,
            "PHOTO_LOW_MODEL_DIR": str(tiny_photo_low_model_dir),
        }
    ).test_client()
    assert post(client, encoded(picture(), "JPEG")).headers["X-Model"] == "clean"
    body = assert_error(
        post(client, encoded(picture(), "JPEG"), "/supersizeme/?model=photo"),
        422,
        "invalid_parameter",
    )
    assert body["allowed"] == ["auto", "clean"] and "no photo model" in body["message"]
    info = client.get("/supersizeme/model").get_json()
    assert info["model_choices"] == ["auto", "clean"]
    (clean,) = info["models"]
    assert (clean["role"], clean["default_for"], clean["default_for_jpeg_quality"]) == (
        "clean",
        ["PNG", "JPEG"],
        [1, 100],
    )


def test_a_bad_model_value_names_the_allowed_ones(client):
    body = assert_error(
        post(client, encoded(picture()), "/supersizeme/?model=sharp"), 422, "invalid_parameter"
    )
    assert body["allowed"] == ["auto", "clean", "photo", "photo-low"]


def test_model_metadata_lists_every_model(
    client, tiny_model_dir, tiny_photo_model_dir, tiny_photo_low_model_dir
):
    info = client.get("/supersizeme/model").get_json()
    assert info["model_choices"] == ["auto", "clean", "photo", "photo-low"]
    described = [
        (m["role"], m["name"], m["default_for"], m["default_for_jpeg_quality"])
        for m in info["models"]
    ]
    assert described == [
        ("clean", tiny_model_dir.name, ["PNG", "JPEG"], [96, 100]),
        ("photo", tiny_photo_model_dir.name, ["JPEG"], [75, 95]),
        ("photo-low", tiny_photo_low_model_dir.name, ["JPEG"], [1, 74]),
    ]
    assert len({m["weights_sha256"] for m in info["models"]}) == 3
    assert all(m["seconds_per_megapixel"] > 0 for m in info["models"])


def test_the_request_log_and_the_metrics_name_the_model(client, caplog):
    with caplog.at_level(logging.INFO, logger="supersizeme.requests"):
        assert post(client, encoded(picture(), "JPEG")).status_code == 200
        assert post(client, encoded(picture())).status_code == 200
    lines = [json.loads(r.getMessage()) for r in caplog.records if r.name.endswith("requests")]
    assert [line["model"] for line in lines] == ["photo", "clean"]
    samples = parse_samples(client.get("/metrics").get_data(as_text=True))
    assert value(samples, "ssm_upscales_total", model="photo", status="200") == 1
    assert value(samples, "ssm_upscales_total", model="clean", status="200") == 1


@pytest.mark.parametrize(
    ("path", "status"),
    [("//supersizeme//model", 404), ("/supersizeme//model", 404), ("//healthz", 200)],
)
def test_no_redirect_is_built_from_the_host_header(client, path, status):
    # PATH_INFO as a server passes it on: the test client would read "//x" as a host.
    response = client.get(
        "/", headers={"Host": "evil.example"}, environ_overrides={"PATH_INFO": path}
    )
    assert response.status_code == status and response.mimetype == "application/json"
    assert "Location" not in response.headers


@pytest.mark.parametrize(
    ("method", "path", "cache"),
    [
        ("POST", "/supersizeme/", "no-store"),
        ("GET", "/supersizeme/model", "no-store"),
        ("GET", "/healthz", "no-store"),
        ("GET", "/nope", "no-store"),
        ("GET", "/", "no-cache"),
        ("GET", "/static/index.html", "no-cache"),
        ("GET", "/static/demo.js", "no-cache"),
        ("GET", "/openapi.json", "no-cache"),
    ],
)
def test_every_answer_carries_the_security_headers_and_a_cache_policy(
    client, method, path, cache
):
    response = client.open(path, method=method, data=encoded(picture()))
    assert response.headers["X-Content-Type-Options"] == "nosniff"
    assert response.headers["X-Frame-Options"] == "DENY"
    assert response.headers["Cache-Control"] == cache
    policy = response.headers["Content-Security-Policy"]
    if response.mimetype == "text/html":
        assert "script-src" not in policy and "default-src 'self'" in policy
    else:
        assert policy.startswith("default-src 'none'")


def test_the_page_has_its_policy_on_every_route_that_serves_it(client):
    paths = ("/", "/static/index.html")
    policies = {client.get(path).headers["Content-Security-Policy"] for path in paths}
    assert len(policies) == 1 and "frame-ancestors 'none'" in policies.pop()


@pytest.mark.parametrize(
    ("path", "allowed"),
    [("/supersizeme/", ["OPTIONS", "POST"]), ("/healthz", ["GET", "HEAD", "OPTIONS"])],
)
def test_options_answers_json_with_the_allowed_methods(client, path, allowed):
    response = client.options(path)
    assert response.status_code == 200 and response.mimetype == "application/json"
    body = response.get_json()
    assert body["allow"] == allowed and body["request_id"] == response.headers["X-Request-ID"]
    assert response.headers["Allow"] == ", ".join(allowed)


def test_a_form_of_too_many_fields_is_told_so_not_that_it_is_too_large(client):
    upload = ("file", (io.BytesIO(encoded(picture())), "a.png"))
    fields = MultiDict([(f"f{i}", "x") for i in range(2000)] + [upload])
    response = client.post("/supersizeme/", data=fields, content_type="multipart/form-data")
    body = assert_error(response, 400, "expected_one_file")
    assert "1,000 parts" in body["message"]


def test_the_model_endpoint_keeps_the_training_machines_paths_to_itself(
    app, client, monkeypatch
):
    slot = app.extensions["supersizeme.model"]
    recorded = {"steps": 3, "data_path": "/data", "checkpoint": "/runs/a.npz", "command": "x"}
    monkeypatch.setitem(slot.folder.spec, "training", recorded)
    assert client.get("/supersizeme/model").get_json()["training"] == {"steps": 3}
