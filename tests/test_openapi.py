"""The OpenAPI document: served as kept, valid, complete against the app, and true of its answers.

schemathesis fuzzes every described operation in-process (WSGI) on the tiny RDN: no answer may
be a 5xx, and each must match the document's status codes, media types, headers and body
schemas. Uploads are real PNG and JPEG files of random size and mode, mixed with junk bytes.
"""

from __future__ import annotations

import ast
import json
import re
from io import BytesIO
from urllib.parse import parse_qs, urlsplit

import jsonschema
import pytest
import schemathesis
from flask import Flask
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from openapi_spec_validator import validate
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    negative_data_rejection,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
    unsupported_method,
)

from benchmarks.imagefactory import encoded, gradient
from supersizeme.service.api import HTTP_STATUS
from supersizeme.service.config import REPO_ROOT
from supersizeme.service.jpeg_quality import estimate_quality
from supersizeme.service.routing import route

DOCUMENT_PATH = REPO_ROOT / "supersizeme" / "service" / "openapi.json"
DOCUMENT = json.loads(DOCUMENT_PATH.read_text())
HTTP_METHODS = {"get", "put", "post", "delete", "options", "head", "patch", "trace"}
# Flask answers these on every GET rule by itself; the document leaves them out.
AUTOMATIC_METHODS = {"HEAD", "OPTIONS"}
FORMATS = ("png", "webp", "jpeg")
MODES = {"PNG": ("RGB", "L", "1", "P", "RGBA", "LA"), "JPEG": ("RGB", "L", "CMYK")}
CONFORMANCE = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
# The same examples on every run (reproducible in CI), and no example database kept.
BOUNDED = {"deadline": None, "derandomize": True, "database": None}


def picture(
    mode: str = "RGB", image_format: str = "PNG", size: tuple[int, int] = (20, 12)
) -> bytes:
    """An image file; in RGBA and LA its alpha is partly transparent."""
    return encoded(Image.fromarray(gradient(*size, channels=4)).convert(mode), image_format)


SIDES = st.integers(8, 24)


def image_files(image_format: str) -> st.SearchStrategy[bytes]:
    # Hypothesis's simplest example, the one schemathesis's coverage phase sends, is a valid
    # image; some are under the minimum side.
    sides = SIDES | st.integers(1, 7)
    sizes = st.tuples(sides, sides)
    return st.builds(picture, st.sampled_from(MODES[image_format]), st.just(image_format), sizes)


def uploads(*image_formats: str) -> st.SearchStrategy[bytes]:
    return st.one_of(*(image_files(f) for f in image_formats), st.binary(max_size=64))


schemathesis.openapi.media_type("image/png", uploads("PNG"))
schemathesis.openapi.media_type("image/jpeg", uploads("JPEG"))
schemathesis.openapi.media_type("application/octet-stream", uploads("PNG", "JPEG"))


@pytest.fixture(scope="module")
def api(tiny_model_dir, tiny_photo_model_dir, tiny_photo_low_model_dir) -> Flask:
    from supersizeme.service.app import create_app

    # A small body limit lets a test reach 413 without megabytes of data.
    return create_app(
        {
            "TESTING": True,
            "MODEL_DIR": str(tiny_model_dir),
            "PHOTO_MODEL_DIR": str(tiny_photo_model_dir),
            "PHOTO_LOW_MODEL_DIR": str(tiny_photo_low_model_dir),
            "TILE": 64,
            "MAX_BODY_BYTES": 8192,
        }
    )


# Loaded from the file, not the app: schemathesis's fixture-based loader does not run under
# pytest 9. test_served_document_is_the_file shows that the app serves these same bytes.
schema = schemathesis.openapi.from_path(DOCUMENT_PATH)
UPSCALE = schema["/supersizeme/"]["POST"]


def follows_query(ctx, response, case) -> None:
    """A 200 answers a valid query with the format, scale and model it asked for, pixels
    included."""
    if response.status_code != 200 or response.request.method != "POST":
        return
    sent = parse_qs(urlsplit(response.request.url).query, keep_blank_values=True)
    scale, image_format = sent.get("scale", ["2"])[0], sent.get("format", ["png"])[0]
    assert set(sent) <= {"scale", "format", "model"}, f"200 for the query {sent}"
    assert scale in {"2", "4"} and image_format in FORMATS, f"200 for the query {sent}"
    assert response.headers["content-type"] == [f"image/{image_format}"]
    disposition = response.headers.get("content-disposition", ["(none)"])[0]
    assert disposition.endswith(f'-x{scale}.{image_format}"'), disposition
    upload = case.body.get("file") if isinstance(case.body, dict) else case.body
    with Image.open(BytesIO(response.content)) as output, Image.open(BytesIO(upload)) as source:
        assert output.format == image_format.upper()
        assert output.size == (source.width * int(scale), source.height * int(scale))
        choice = sent.get("model", ["auto"])[0]
        tables = getattr(source, "quantization", None)
        quality = estimate_quality(tables[0]) if tables else None
        routed = route(choice, source.format, ("clean", "photo", "photo-low"), quality)
        assert response.headers["x-model"] == [routed], f"{choice} for a {source.format}"


@schema.parametrize()
@settings(max_examples=50, suppress_health_check=list(HealthCheck), **BOUNDED)
def test_every_answer_conforms_to_the_document(case, api):
    checks = [*CONFORMANCE, negative_data_rejection, unsupported_method, follows_query]
    case.call_and_validate(app=api, checks=checks)


@given(
    source_format=st.sampled_from(list(MODES)),
    data=st.data(),
    scale=st.sampled_from([None, 2, 4]),
    output_format=st.sampled_from([None, *FORMATS]),
    as_form=st.booleans(),
)
@settings(max_examples=40, **BOUNDED)
def test_real_uploads_get_conforming_answers(
    api, source_format, data, scale, output_format, as_form
):
    mode = data.draw(st.sampled_from(MODES[source_format]))
    upload = picture(mode, source_format, data.draw(st.tuples(SIDES, SIDES)))
    query = {name: value for name, value in [("scale", scale), ("format", output_format)] if value}
    if as_form:
        body, media_type = {"file": upload}, "multipart/form-data"
    else:
        body, media_type = upload, f"image/{source_format.lower()}"
    case = UPSCALE.Case(body=body, media_type=media_type, query=query)
    response = case.call_and_validate(app=api, checks=[*CONFORMANCE, follows_query])
    refused = output_format == "jpeg" and mode in ("RGBA", "LA")
    assert response.status_code == (422 if refused else 200)
    if refused:
        assert response.json()["error"] == "format_cannot_carry_alpha"


@pytest.mark.parametrize(
    ("body", "query", "status", "code"),
    [
        (encoded(Image.new("P", (16, 16)), "GIF"), {}, 415, "unsupported_media_type"),
        (b"", {}, 400, "empty_body"),
        (picture()[:60], {}, 422, "corrupt_image"),
        (picture(size=(7, 30)), {}, 422, "too_small"),
        (bytes(9000), {}, 413, "payload_too_large"),
        (picture(), {"scale": 3}, 422, "invalid_parameter"),
        (picture(), {"format": "gif"}, 422, "invalid_parameter"),
        (picture(), {"quality": "90"}, 422, "invalid_parameter"),
        (picture("RGBA"), {"format": "jpeg"}, 422, "format_cannot_carry_alpha"),
    ],
    ids=[
        "gif",
        "empty",
        "truncated",
        "too-small",
        "too-large",
        "scale-3",
        "format-gif",
        "unknown-parameter",
        "alpha-as-jpeg",
    ],
)
def test_a_refusal_conforms_to_the_document(api, body, query, status, code):
    case = UPSCALE.Case(body=body, media_type="image/png", query=query)
    response = case.call_and_validate(app=api, checks=CONFORMANCE)
    assert (response.status_code, response.json()["error"]) == (status, code)


def test_a_bad_value_names_the_allowed_ones(api):
    case = UPSCALE.Case(body=picture(), media_type="image/png", query={"scale": 3})
    response = case.call_and_validate(app=api, checks=CONFORMANCE)
    assert response.json()["allowed"] == ["2", "4"]


def test_served_document_is_the_file(api):
    response = api.test_client().get("/openapi.json")
    assert response.status_code == 200
    assert response.mimetype == "application/json"
    assert response.data == DOCUMENT_PATH.read_bytes()


def test_document_is_valid_openapi_3_1():
    assert DOCUMENT["openapi"].startswith("3.1.")
    validate(DOCUMENT)


def flask_path(rule: str) -> str:
    return re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule)


def test_document_describes_exactly_the_app_routes(api):
    served = {
        (flask_path(rule.rule), method)
        for rule in api.url_map.iter_rules()
        if rule.endpoint != "static"
        for method in rule.methods - AUTOMATIC_METHODS
    }
    described = {
        (path, method.upper())
        for path, item in DOCUMENT["paths"].items()
        for method in item
        if method in HTTP_METHODS
    }
    assert sorted(described - served) == [], "described but not served"
    assert sorted(served - described) == [], "served but not described"


def resolved(node: dict) -> dict:
    while "$ref" in node:
        target = DOCUMENT
        for key in node["$ref"].removeprefix("#/").split("/"):
            target = target[key.replace("~1", "/").replace("~0", "~")]
        node = target
    return node


def error_codes(response: dict) -> set[str]:
    """The codes a described error answer may carry: the enum or const narrowing ``error``."""
    narrowing = resolved(response)["content"]["application/json"]["schema"]["allOf"][1]
    error = narrowing["properties"]["error"]
    return set(error["enum"]) if "enum" in error else {error["const"]}


def documented_error_codes() -> set[tuple[int, str]]:
    pairs = {(404, "not_found"), (405, "method_not_allowed")}
    for item in DOCUMENT["paths"].values():
        for method, operation in item.items():
            if method not in HTTP_METHODS:
                continue
            for status, response in operation["responses"].items():
                if int(status) >= 400:
                    pairs |= {(int(status), code) for code in error_codes(response)}
    return pairs


# What builds a Refused: the class and the helpers that pass their first argument on as its code.
REFUSAL_MAKERS = {"Refused", "retry_later"}
# The batch CLI's own codes say what happened to a file; they never reach HTTP.
NOT_SERVED = {"cli.py"}


class RefusalScan(ast.NodeVisitor):
    """The codes of the refusals in one module, and where a code is not a literal."""

    def __init__(self) -> None:
        self.codes: set[str] = set()
        self.unread: list[int] = []
        self.function = ""

    def visit_FunctionDef(self, node: ast.FunctionDef) -> None:
        outer, self.function = self.function, node.name
        self.generic_visit(node)
        self.function = outer

    def visit_Call(self, node: ast.Call) -> None:
        func = node.func
        if (func.id if isinstance(func, ast.Name) else getattr(func, "attr", "")) in REFUSAL_MAKERS:
            code = node.args[0] if node.args else None
            if isinstance(code, ast.Constant):
                self.codes.add(code.value)
            elif self.function not in REFUSAL_MAKERS:
                # Only a maker may pass on a code it was given; anywhere else the scan
                # would miss a code.
                self.unread.append(node.lineno)
        self.generic_visit(node)


def raised_error_codes() -> tuple[set[str], list[str]]:
    """The code of every refusal the served modules build, and the calls whose code is
    not a literal the scan can read (as ``module.py:line``)."""
    codes, unread = set(), []
    for source in sorted((REPO_ROOT / "supersizeme" / "service").glob("*.py")):
        if source.name in NOT_SERVED:
            continue
        scan = RefusalScan()
        scan.visit(ast.parse(source.read_text()))
        codes |= scan.codes
        unread += [f"{source.name}:{line}" for line in scan.unread]
    return codes, unread


# Codes that the HTTP error handler derives from werkzeug's exception names.
WERKZEUG_CODES = {(400, "bad_request"), (404, "not_found"), (405, "method_not_allowed")}
# Nobody receives a 499 (the client is gone): the contract does not list it.
UNDOCUMENTED = {(499, "client_closed_request")}


def test_every_code_the_source_raises_has_a_status():
    raised, unread = raised_error_codes()
    assert "unsupported_media_type" in raised, "the source scan found nothing"
    assert unread == [], "refusals whose code is not a literal"
    assert sorted(raised - set(HTTP_STATUS)) == [], "raised but without a status"
    assert sorted(set(HTTP_STATUS) - raised) == [], "a status for a code never raised"


def test_document_names_exactly_the_statuses_of_the_table():
    table = {(status, code) for code, status in HTTP_STATUS.items()}
    documented = documented_error_codes() - WERKZEUG_CODES
    assert sorted(table - UNDOCUMENTED - documented) == [], "in the table but not documented"
    assert sorted(documented - table) == [], "documented but not in the table"


def conforms(body: object, response_name: str) -> None:
    pointer = f"#/components/responses/{response_name}/content/application~1json/schema"
    # The whole document is the root, so that the schema's own $refs resolve.
    jsonschema.Draft202012Validator({**DOCUMENT, "$ref": pointer}).validate(body)


def test_unknown_path_answers_the_documented_404(api):
    response = api.test_client().get("/no/such/path")
    assert response.status_code == 404
    conforms(response.get_json(), "NotFound")
    assert re.fullmatch(r"[A-Za-z0-9._:-]{1,128}", response.headers["X-Request-ID"])


def test_wrong_method_answers_the_documented_405(api):
    response = api.test_client().delete("/supersizeme/")
    assert response.status_code == 405
    conforms(response.get_json(), "MethodNotAllowed")
    assert "POST" in response.headers["Allow"]
