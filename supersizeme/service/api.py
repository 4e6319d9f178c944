"""The HTTP contract: one blueprint with the upscaling endpoint and the health checks.

Everything a caller can get wrong ends here as a JSON error with a stable code, whose
HTTP status this module alone decides (``HTTP_STATUS``); the log keeps the detail, keyed
by the request id that the answer also carries.
"""

from __future__ import annotations

import functools
import logging
import re
import time
import uuid
from dataclasses import dataclass, replace
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from flask.typing import ResponseReturnValue
from werkzeug.exceptions import ClientDisconnected, HTTPException

from supersizeme.service.admission import InferenceGate, Overloaded
from supersizeme.service.capacity import MemoryClaim, MemoryFull
from supersizeme.service.connection import client_watch
from supersizeme.service.errors import Refused, UploadTimedOut
from supersizeme.service.images import FORMATS, OUTPUT_FORMATS, Limits
from supersizeme.service.pipeline import SCALES, Output, Timings, decode_for, upscale_decoded
from supersizeme.service.routing import CLEAN, MODEL_CHOICES, auto_routes, route
from supersizeme.service.telemetry import RequestRecord, Telemetry
from supersizeme.service.tiling import ClientGone, DeadlineExceeded, Stop
from supersizeme.service.upscaler import ModelSlot

bp = Blueprint("supersizeme", __name__)
log = logging.getLogger("supersizeme")
request_log = logging.getLogger("supersizeme.requests")

# A caller's X-Request-ID is echoed only if it is a short token: it ends up in our logs.
_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:-]{1,128}$")


# The HTTP status of every code a Refused may carry, here or from the layers below.
# tests/test_openapi.py checks that the code of every Refused in the service's source is
# here, and that these pairs are the ones the OpenAPI document lists.
HTTP_STATUS = {
    # The body: missing, cut short, or not one file.
    "empty_body": 400,
    "incomplete_body": 400,
    "expected_one_file": 400,
    "upload_timeout": 408,
    "payload_too_large": 413,
    "unsupported_media_type": 415,
    # The query, or an image that cannot be processed as asked.
    "invalid_parameter": 422,
    "corrupt_image": 422,
    "too_many_pixels": 422,
    "too_small": 422,
    "animated_image": 422,
    "too_many_scans": 422,
    "too_many_segments": 422,
    "too_much_metadata": 422,
    "format_cannot_carry_alpha": 422,
    "too_large_for_format": 422,
    "overloaded": 429,
    "insufficient_memory": 503,
    # nginx's status for a client that closed its connection before the answer. Nobody
    # receives it: it exists for the request log and the metrics, so the API's contract
    # does not list it.
    "client_closed_request": 499,
    "internal_error": 500,
    "not_ready": 503,
    "model_failed": 503,
    "deadline_exceeded": 503,
}


def error_response(
    status: int, code: str, message: str, extra: dict[str, Any] | None = None
) -> Response:
    """The JSON error body; ``extra`` adds fields such as ``allowed`` for a bad parameter."""
    response = jsonify(
        error=code, message=message, request_id=g.get("request_id", ""), **(extra or {})
    )
    response.status_code = status
    # The request's log line and the refusal counter read the code from here.
    g.error_code = code
    return response


def slot() -> ModelSlot:
    return current_app.extensions["supersizeme.model"]


def limits() -> Limits:
    # The cap in force: an operator's, or the one this worker chose from its speed and memory.
    return Limits(max_pixels=slot().max_pixels, min_side=current_app.config["MIN_SIDE"])


@bp.before_app_request
def start_request() -> None:
    supplied = request.headers.get("X-Request-ID", "")
    g.request_id = supplied if _REQUEST_ID.match(supplied) else uuid.uuid4().hex
    g.started = time.monotonic()
    if not scraping():
        telemetry().in_flight.inc()
        g.in_flight = True


def telemetry() -> Telemetry:
    return current_app.extensions["supersizeme.service.telemetry"]


def scraping() -> bool:
    # Prometheus scrapes every few seconds: counting them would bury the traffic they report,
    # and scrapes landing on different workers would each see a different total.
    return request.endpoint == "supersizeme.prometheus_metrics"


# Every answer: no content-type sniffing, no framing, and a cache policy. An enlargement
# or an error belongs to one upload and one moment: stored by nobody. The page, its files
# and the API document change only with a release: kept, but revalidated on every use.
SECURITY_HEADERS = {"X-Content-Type-Options": "nosniff", "X-Frame-Options": "DENY"}
STATIC_CACHE = "no-cache"
DYNAMIC_CACHE = "no-store"
# What any answer but the page may load: nothing (a JSON or image answer opened as a page
# runs no script).
NOTHING_POLICY = "default-src 'none'; frame-ancestors 'none'; base-uri 'none'"


def apply_security_headers(response: Response) -> None:
    response.headers.update(SECURITY_HEADERS)
    is_page = response.mimetype == "text/html"
    static = request.endpoint in ("static", "supersizeme.demo_page", "supersizeme.openapi")
    kept = static and response.status_code in (200, 304)
    response.headers["Cache-Control"] = STATIC_CACHE if kept else DYNAMIC_CACHE
    response.headers["Content-Security-Policy"] = DEMO_PAGE_POLICY if is_page else NOTHING_POLICY


def options_answer(response: Response) -> Response:
    """OPTIONS, answered by Flask with an empty page and an Allow header, as JSON."""
    allowed = sorted(method.strip() for method in response.headers.get("Allow", "").split(","))
    answer = jsonify(allow=allowed, request_id=g.get("request_id", ""))
    answer.headers["Allow"] = ", ".join(allowed)
    return answer


@bp.after_app_request
def finish_request(response: Response) -> Response:
    if request.method == "OPTIONS" and response.status_code == 200 and "Allow" in response.headers:
        response = options_answer(response)
    response.headers["X-Request-ID"] = g.get("request_id", "")
    apply_security_headers(response)
    record = RequestRecord.of(request, response)
    if not scraping():
        telemetry().observe(record)
    request_log.info(record.log_line())
    return response


@bp.teardown_app_request
def end_request(_error: BaseException | None) -> None:
    # Teardown runs even when an after-request step failed, so the gauge cannot drift up.
    if g.pop("in_flight", False):
        telemetry().in_flight.dec()


@bp.app_errorhandler(Refused)
def handle_refused(error: Refused) -> Response:
    if error.__cause__ is not None:
        g.error_detail = repr(error.__cause__)  # the decoder's words, for the log line only
    response = error_response(HTTP_STATUS[error.code], error.code, error.message, error.extra)
    if error.retry_after is not None:
        response.headers["Retry-After"] = str(error.retry_after)
    return response


@bp.app_errorhandler(HTTPException)
def handle_http_error(error: HTTPException) -> ResponseReturnValue:
    if error.code == 413:
        return handle_refused(form_too_large() if form_within_size() else payload_too_large())
    code = (error.name or "http_error").lower().replace(" ", "_")
    response = error_response(error.code or 500, code, error.description or error.name)
    for name, value in error.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def form_within_size() -> bool:
    """Whether a 413 is about a form's parts, not its bytes: werkzeug also refuses a form
    of more than MAX_FORM_PARTS parts, or with a non-file field over MAX_FORM_MEMORY_SIZE."""
    declared = request.content_length
    limit = current_app.config["MAX_CONTENT_LENGTH"]
    return is_form() and declared is not None and declared <= limit


def form_too_large() -> Refused:
    config = current_app.config
    return Refused(
        "expected_one_file",
        "A multipart upload must carry exactly one file field; this one has more than "
        f"{config['MAX_FORM_PARTS']:,} parts or a field that is not a file over "
        f"{config['MAX_FORM_MEMORY_SIZE']:,} bytes.",
    )


def payload_too_large() -> Refused:
    limit = current_app.config["MAX_BODY_BYTES"]
    return Refused(
        "payload_too_large",
        f"The upload is larger than the limit of {limit:,} bytes ({limit / 2**20:g} MiB).",
    )


@bp.app_errorhandler(Exception)
def handle_unexpected(error: Exception) -> ResponseReturnValue:
    log.exception("request_id=%s unexpected error", g.get("request_id"))
    return handle_refused(Refused("internal_error", "The server failed to process this image."))


def is_form() -> bool:
    return request.mimetype == "multipart/form-data"


def refuse_declared_oversize() -> None:
    """413 for a raw body whose Content-Length is over the limit, before anything is read.

    A form's declared length includes its boundaries and part headers, so a form is
    measured when it is read (werkzeug's MAX_CONTENT_LENGTH, and the file itself).
    """
    if not is_form() and (request.content_length or 0) > current_app.config["MAX_BODY_BYTES"]:
        raise payload_too_large()


def read_upload() -> bytes:
    """The image bytes of a raw body or of a multipart form's single file field.

    The whole body must arrive within SSM_UPLOAD_SECONDS of the headers, else 408: the
    upload's time is the client's connection, not the server's work, and the request
    deadline starts after. The server's reader keeps the time (supersizeme/service/worker.py).
    """
    try:
        return read_body()
    except UploadTimedOut:
        raise upload_timeout() from None


def read_body() -> bytes:
    max_bytes = current_app.config["MAX_BODY_BYTES"]
    try:
        if is_form():
            files = [f for _, f in request.files.items(multi=True)]
            if len(files) != 1:
                raise Refused(
                    "expected_one_file",
                    "A multipart upload must carry exactly one file field; "
                    f"this one has {len(files)}.",
                )
            data = files[0].stream.read(max_bytes + 1)
        else:
            # Chunked bodies have no Content-Length: read one byte past the limit to tell,
            # and let the request log count what actually arrived.
            data = request.stream.read(max_bytes + 1)
            g.body_bytes = len(data)
            declared = request.content_length
            if declared is not None and len(data) < declared:
                # gunicorn ends a body cut short without an error: only its length tells.
                raise incomplete_body(f"{len(data):,} of {declared:,} bytes arrived")
    except ClientDisconnected as exc:
        raise incomplete_body(repr(exc)) from None
    except (Refused, HTTPException, UploadTimedOut):
        raise
    except Exception as exc:
        # gunicorn's body reader raises OSError or its own ParseException when the client
        # stops mid-body or breaks the chunked framing: the client's fault, not ours.
        raise incomplete_body(repr(exc)) from None
    if len(data) > max_bytes:
        raise payload_too_large()
    if not data:
        raise Refused("empty_body", "The request body is empty; send a PNG or JPEG image.")
    return data


def incomplete_body(detail: str) -> Refused:
    g.error_detail = detail
    return Refused("incomplete_body", "The request body ended early or its framing is broken.")


def upload_timeout() -> Refused:
    seconds = current_app.config["UPLOAD_SECONDS"]
    return Refused(
        "upload_timeout",
        f"The request body did not arrive within the upload time limit of {seconds:g} s.",
    )


def retry_later(code: str, message: str) -> Refused:
    """A refusal that is not the caller's fault: it carries the configured Retry-After."""
    return Refused(code, message, retry_after=current_app.config["RETRY_AFTER_SECONDS"])


def not_ready() -> Refused:
    return retry_later("not_ready", "The model is still loading in this worker; retry shortly.")


# The query parameters of POST /supersizeme/ and their allowed values, default first.
QUERY_PARAMETERS = {
    "scale": tuple(str(scale) for scale in SCALES),
    "format": FORMATS,
    "model": MODEL_CHOICES,
}


@dataclass(frozen=True)
class UpscaleRequest:
    """What one upload asks for and the bounds it is served within.

    ``deadline_seconds`` starts counting once the body has arrived: the deadline bounds
    the server's work (decoding, waiting for the inference turn, the network, encoding),
    and a slow upload to an idle server is the upload limit's business, not a reason to
    refuse the image.
    """

    output: Output
    limits: Limits  # at x2; decode_for shrinks the pixel cap for larger scales
    deadline_seconds: float
    model: str = MODEL_CHOICES[0]  # a routing choice: auto, or a model by role


def upscale_request() -> UpscaleRequest:
    """The upload's request, from its query string and the settings in force.

    Made before the body is read, so that a bad query costs neither side the upload.
    """
    output = requested_output()
    return UpscaleRequest(
        output, limits(), current_app.config["DEADLINE_SECONDS"], requested_model()
    )


def requested_model() -> str:
    """The ``model`` asked for: auto (by the upload's format) or one this worker serves."""
    choice = query_choice("model")
    served = list(slot().folders)
    if choice not in (MODEL_CHOICES[0], *served):
        allowed = [MODEL_CHOICES[0], *served]
        raise Refused(
            "invalid_parameter",
            f"This server has no {choice} model; the query parameter model must be one of "
            f"{', '.join(allowed)}.",
            extra={"allowed": allowed},
        )
    return choice


def requested_output() -> Output:
    """The scale and format asked for in the query string.

    Values are matched exactly (no case folding, no aliases such as jpg) so that one
    request always means one thing, as the OpenAPI document's enums say.
    """
    for name in request.args:
        if name not in QUERY_PARAMETERS:
            # Named back only if it is a short token, like an echoed request id.
            shown = f" '{name}'" if _REQUEST_ID.match(name) and len(name) <= 40 else ""
            accepted = " and ".join(
                f"{key} ({', '.join(values)})" for key, values in QUERY_PARAMETERS.items()
            )
            raise Refused(
                "invalid_parameter",
                f"Unknown query parameter{shown}; this endpoint takes {accepted}.",
            )
    return Output(int(query_choice("scale")), query_choice("format"))


def query_choice(name: str) -> str:
    allowed = QUERY_PARAMETERS[name]
    given = request.args.getlist(name) or [allowed[0]]
    if len(given) > 1 or given[0] not in allowed:
        raise Refused(
            "invalid_parameter",
            f"The query parameter {name} must be given once, as one of {', '.join(allowed)}.",
            extra={"allowed": list(allowed)},
        )
    return given[0]


@bp.post("/supersizeme/", strict_slashes=False)
def upscale_image() -> ResponseReturnValue:
    # Everything that can refuse the request without its body comes first, so that a
    # refusal costs neither side the upload.
    wanted = upscale_request()
    refuse_declared_oversize()
    model = slot()
    if model.served is None:
        raise not_ready()
    gate: InferenceGate = current_app.extensions["supersizeme.gate"]
    # A chunked body is refused here just like one with a Content-Length: whether there is
    # room does not depend on the body's size. Either way gunicorn then drains a little of
    # the unread body (to keep the connection) or closes the connection.
    try:
        with gate.present():
            return upscale_upload(model, gate, wanted)
    except Overloaded:
        # Full on arrival, or filled up while this body was being read and decoded.
        raise overloaded() from None


def upscale_upload(model: ModelSlot, gate: InferenceGate, wanted: UpscaleRequest) -> Response:
    data = read_upload()
    claim = MemoryClaim(model.memory, wanted.output.scale)
    try:
        response = upscale_claimed(model, gate, wanted, data, claim)
    except BaseException:
        claim.release()
        raise
    # The result's bytes are held until the server has sent them.
    response.call_on_close(claim.release)
    return response


def upscale_claimed(
    model: ModelSlot, gate: InferenceGate, wanted: UpscaleRequest, data: bytes, claim: MemoryClaim
) -> Response:
    stop = Stop(time.monotonic() + wanted.deadline_seconds, client_watch(request.environ))
    timings = g.timings = Timings()

    def admit(pixels: int, grey: bool) -> None:
        try:
            claim.admit(pixels, grey)
        except MemoryFull as full:
            raise memory_full(full) from None

    image = decode_for(data, wanted.limits, wanted.output, timings, admit)
    g.image_size = (image.width, image.height)
    role = route(wanted.model, image.source_format, model.upscalers, image.jpeg_quality)
    g.model = role
    waiting = time.perf_counter()
    try:
        with gate.turn(stop) as lanes:
            timings.queue = time.perf_counter() - waiting
            upscale = functools.partial(model.upscaler_for(CLEAN), lanes=lanes)
            first = functools.partial(model.upscaler_for(role), lanes=lanes)
            encoded = upscale_decoded(image, upscale, wanted.output, stop, timings, first)
    except DeadlineExceeded:
        raise deadline_passed() from None
    except ClientGone:
        return client_closed()
    response = Response(encoded, mimetype=OUTPUT_FORMATS[wanted.output.image_format].mimetype)
    name = wanted.output.file_name("supersized")
    response.headers["Content-Disposition"] = f'inline; filename="{name}"'
    response.headers["Server-Timing"] = timings.server_timing()
    response.headers["X-Model"] = role
    return response


def memory_full(full: MemoryFull) -> Refused:
    mib = 2**20
    if full.needed > full.budget:
        # It would not fit even alone: retrying cannot help.
        return Refused(
            "too_many_pixels",
            f"This image needs about {full.needed / mib:,.0f} MiB, more than the "
            f"{full.budget / mib:,.0f} MiB this worker has for images; send a smaller one.",
        )
    return retry_later(
        "insufficient_memory",
        f"This image needs about {full.needed / mib:,.0f} MiB and the images in flight leave "
        f"{max(0, full.free) / mib:,.0f} MiB of this worker's memory; retry shortly.",
    )


def overloaded() -> Refused:
    return retry_later(
        "overloaded",
        "This worker is busy with other images and its queue is full; retry shortly.",
    )


def client_closed() -> Response:
    return handle_refused(
        Refused(
            "client_closed_request",
            "The client closed the connection before its image was done; the work was stopped.",
        )
    )


def deadline_passed() -> Refused:
    seconds = current_app.config["DEADLINE_SECONDS"]
    return retry_later(
        "deadline_exceeded",
        f"The image could not be processed within the request deadline of {seconds:g} s; "
        "the server is busy or the image is large. Retry later or send a smaller image.",
    )


# The demo page loads only its own files and talks only to this API; results are blob: URLs.
DEMO_PAGE_POLICY = (
    "default-src 'self'; img-src 'self' blob:; object-src 'none'; base-uri 'none'; "
    "form-action 'self'; frame-ancestors 'none'"
)


@bp.get("/")
def demo_page() -> ResponseReturnValue:
    """The browser demo: static HTML whose script POSTs to /supersizeme/ like any client."""
    # Its Content-Security-Policy (DEMO_PAGE_POLICY) is set with every page's.
    return current_app.send_static_file("index.html")


@bp.get("/healthz")
def healthz() -> ResponseReturnValue:
    return jsonify(status="ok")


@bp.get("/openapi.json")
def openapi() -> ResponseReturnValue:
    # Byte for byte the file that tests/test_openapi.py checks against the app's routes.
    with bp.open_resource("openapi.json") as document:
        return Response(document.read(), mimetype="application/json")


@bp.get("/metrics")
def prometheus_metrics() -> ResponseReturnValue:
    body, content_type = telemetry().exposition()
    return Response(body, content_type=content_type)


@bp.get("/readyz")
def readyz() -> ResponseReturnValue:
    model = slot()
    if model.state != "ready":
        raise (
            not_ready()
            if model.state == "loading"
            else Refused("model_failed", "The model failed to load in this worker.", retry_after=60)
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
        training=public_training(spec.get("training")),
        precision=model.precision,
        runtime=runtime_info(model),
        state=model.state,
        scales=list(SCALES),
        formats=list(FORMATS),
        models=models_info(model),
        model_choices=list(MODEL_CHOICES[:1]) + list(model.folders),
        limits={
            "max_body_bytes": config["MAX_BODY_BYTES"],
            "max_pixels": model.max_pixels,
            "max_pixels_configured": config["MAX_PIXELS"],
            "max_pixels_decided_by": model.cap.decided_by if model.cap else None,
            "memory_for_images_bytes": model.memory.budget,
            "max_pixels_by_scale": {
                str(scale): replace(limits(), scale=scale).pixel_cap for scale in SCALES
            },
            "max_output_pixels_by_scale": {
                str(scale): replace(limits(), scale=scale).pixel_cap * scale**2
                for scale in SCALES
            },
            "min_side": config["MIN_SIDE"],
            "deadline_seconds": config["DEADLINE_SECONDS"],
            "upload_seconds": config["UPLOAD_SECONDS"],
            "tile": config["TILE"],
        },
    )


# What a model's training record says about the machine it was made on, not the model:
# paths on that machine, and the command lines that name them.
PRIVATE_TRAINING_FIELDS = ("data_path", "checkpoint", "command")


def public_training(training: dict[str, Any] | None) -> dict[str, Any] | None:
    if training is None:
        return None
    return {k: v for k, v in training.items() if k not in PRIVATE_TRAINING_FIELDS}


def models_info(model: ModelSlot) -> list[dict[str, Any]]:
    """Each model this worker serves: its role, folder, weights, measured quality, which
    uploads go to it by default, and its measured speed once loaded."""
    described = []
    for role, folder in model.folders.items():
        served = model.upscalers.get(role)
        routes = auto_routes(role, model.folders)
        described.append(
            {
                "role": role,
                "name": folder.path.resolve().name,
                "weights_sha256": folder.spec.get("weights_sha256"),
                "evaluation": folder.spec.get("evaluation"),
                "evaluation_jpeg": folder.spec.get("evaluation_jpeg"),
                "default_for": routes["formats"],
                "default_for_jpeg_quality": routes["jpeg_qualities"],
                "seconds_per_megapixel": (
                    round(served.seconds_per_megapixel, 3) if served else None
                ),
            }
        )
    return described


def runtime_info(model: ModelSlot) -> dict[str, Any]:
    """What runs the network in this worker, on which CPU features, and how fast."""
    served = model.served
    if served is None:
        return {"name": model.settings.runtime, "precision": model.precision}
    return {
        "name": served.runtime,
        "precision": served.precision,
        "precision_reason": served.precision_reason,
        "threads": served.threads,
        "streams": served.streams,
        "cpu_features": served.cpu_features,
        "seconds_per_megapixel": round(served.seconds_per_megapixel, 3),
    }
