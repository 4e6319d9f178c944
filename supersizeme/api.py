"""The HTTP contract: one blueprint with the upscaling endpoint and the health checks.

Everything a caller can get wrong ends here as a JSON error with a stable code; the
log keeps the detail, keyed by the request id that the answer also carries.
"""

from __future__ import annotations

import logging
import os
import re
import time
import uuid

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import ClientDisconnected, HTTPException

from supersizeme.admission import InferenceGate, Overloaded
from supersizeme.images import ImageRejected, Limits, decode
from supersizeme.pipeline import Timings, upscale_decoded
from supersizeme.predictor import ModelSlot
from supersizeme.tiling import DeadlineExceeded

bp = Blueprint("supersizeme", __name__)
log = logging.getLogger("supersizeme")

# A caller's X-Request-ID is echoed only if it is a short token: it ends up in our logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, retry_after: int | None = None):
        super().__init__(message)
        self.status, self.code, self.message, self.retry_after = status, code, message, retry_after


def error_response(
    status: int, code: str, message: str, retry_after: int | None = None
) -> Response:
    response = jsonify(error=code, message=message, request_id=g.get("request_id", ""))
    response.status_code = status
    if retry_after is not None:
        response.headers["Retry-After"] = str(retry_after)
    return response


def slot() -> ModelSlot:
    return current_app.extensions["supersizeme.model"]


def limits() -> Limits:
    return Limits(
        max_pixels=current_app.config["MAX_PIXELS"], min_side=current_app.config["MIN_SIDE"]
    )


@bp.before_app_request
def start_request() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
    g.started = time.monotonic()


@bp.after_app_request
def finish_request(response: Response) -> Response:
    response.headers["X-Request-ID"] = g.get("request_id", "")
    log.info(
        "request_id=%s method=%s path=%s status=%d bytes_in=%s bytes_out=%s seconds=%.3f",
        g.get("request_id", ""),
        request.method,
        request.path,
        response.status_code,
        request.content_length,
        response.content_length,
        time.monotonic() - g.get("started", time.monotonic()),
    )
    return response


@bp.app_errorhandler(ApiError)
def handle_api_error(error: ApiError) -> ResponseReturnValue:
    return error_response(error.status, error.code, error.message, error.retry_after)


@bp.app_errorhandler(ImageRejected)
def handle_rejected(error: ImageRejected) -> ResponseReturnValue:
    log.info(
        "request_id=%s refused code=%s message=%s cause=%r",
        g.get("request_id"),
        error.code,
        error.message,
        error.__cause__,
    )
    return error_response(error.status, error.code, error.message)


@bp.app_errorhandler(HTTPException)
def handle_http_error(error: HTTPException) -> ResponseReturnValue:
    if error.code == 413:
        return handle_api_error(payload_too_large())
    code = (error.name or "http_error").lower().replace(" ", "_")
    response = error_response(error.code or 500, code, error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def payload_too_large() -> ApiError:
    limit = current_app.config["MAX_BODY_BYTES"]
    return ApiError(
        413,
        "payload_too_large",
        f"The upload is larger than the limit of {limit:,} bytes ({limit / 2**20:g} MiB).",
    )


@bp.app_errorhandler(Exception)
def handle_unexpected(error: Exception) -> ResponseReturnValue:
    log.exception("request_id=%s unexpected error", g.get("request_id"))
    return error_response(500, "internal_error", "The server failed to process this image.")


def read_upload() -> bytes:
    """The image bytes of a raw body or of a multipart form's single file field."""
    max_bytes = current_app.config["MAX_BODY_BYTES"]
    too_large = payload_too_large()
    try:
        if request.mimetype == "multipart/form-data":
            files = [f for _, f in request.files.items(multi=True)]
            if len(files) != 1:
                raise ApiError(
                    400,
                    "expected_one_file",
                    "A multipart upload must carry exactly one file field; "
                    f"this one has {len(files)}.",
                )
            data = files[0].stream.read(max_bytes + 1)
        else:
            if request.content_length is not None and request.content_length > max_bytes:
                raise too_large
            # Chunked bodies have no Content-Length: read one byte past the limit to tell.
            data = request.stream.read(max_bytes + 1)
    except ClientDisconnected as exc:
        raise incomplete_body(exc) from None
    except (ApiError, HTTPException):
        raise
    except Exception as exc:
        # gunicorn's body reader raises OSError or its own ParseException when the client
        # stops mid-body or breaks the chunked framing: the client's fault, not ours.
        raise incomplete_body(exc) from None
    if len(data) > max_bytes:
        raise too_large
    if not data:
        raise ApiError(400, "empty_body", "The request body is empty; send a PNG or JPEG image.")
    return data


def incomplete_body(cause: Exception) -> ApiError:
    log.info("request_id=%s unreadable body: %r", g.get("request_id"), cause)
    return ApiError(
        400, "incomplete_body", "The request body ended early or its framing is broken."
    )


def request_deadline() -> float:
    """The monotonic instant by which this request must be answered."""
    return g.started + current_app.config["DEADLINE_SECONDS"]


def retry_later(status: int, code: str, message: str) -> ApiError:
    """A refusal that is not the caller's fault: it carries the configured Retry-After."""
    return ApiError(status, code, message, current_app.config["RETRY_AFTER_SECONDS"])


def not_ready() -> ApiError:
    return retry_later(
        503, "not_ready", "The model is still loading in this worker; retry shortly."
    )


@bp.post("/supersizeme/", strict_slashes=False)
def supersize() -> ResponseReturnValue:
    data = read_upload()
    timings = Timings()
    started = time.perf_counter()
    image = decode(data, limits())
    timings.decode = time.perf_counter() - started

    model = slot()
    if model.upscaler is None:
        raise not_ready()
    deadline = request_deadline()
    gate: InferenceGate = current_app.extensions["supersizeme.gate"]
    try:
        with gate.turn(deadline):
            scale = model.folder.params.scale
            png = upscale_decoded(image, model.upscaler, scale, deadline, timings)
    except DeadlineExceeded:
        raise deadline_passed() from None
    except Overloaded:
        raise retry_later(
            429,
            "overloaded",
            "This worker is busy with other images and its queue is full; retry shortly.",
        ) from None
    response = Response(png, mimetype="image/png")
    response.headers["Server-Timing"] = timings.server_timing()
    return response


def deadline_passed() -> ApiError:
    seconds = current_app.config["DEADLINE_SECONDS"]
    return retry_later(
        503,
        "deadline_exceeded",
        f"The image could not be processed within the request deadline of {seconds:g} s; "
        "the server is busy or the image is large. Retry later or send a smaller image.",
    )


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    # The pid lets a caller (and the end-to-end test) tell whether a worker was replaced.
    return jsonify(status="ok", pid=os.getpid())


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    model = slot()
    if model.state != "ready":
        raise (
            not_ready()
            if model.state == "loading"
            else ApiError(
                503, "model_failed", "The model failed to load in this worker.", retry_after=60
            )
        )
    return jsonify(status="ready", model=model.folder.params.name)


@bp.get("/supersizeme/model")
def model_info() -> ResponseReturnValue:
    model = slot()
    spec = model.folder.spec
    config = current_app.config
    return jsonify(
        name=model.folder.params.name,
        parameters=model.folder.params.to_json(),
        receptive_radius=model.folder.params.receptive_radius,
        weights_sha256=spec.get("weights_sha256"),
        evaluation=spec.get("evaluation"),
        training=spec.get("training"),
        precision=config["PRECISION"],
        state=model.state,
        limits={
            "max_body_bytes": config["MAX_BODY_BYTES"],
            "max_pixels": config["MAX_PIXELS"],
            "min_side": config["MIN_SIDE"],
            "deadline_seconds": config["DEADLINE_SECONDS"],
            "tile": config["TILE"],
        },
    )
