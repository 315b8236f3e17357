"""Schema fuzzing of the OpenAPI description with schemathesis, against a real server of this
module's own (fuzzed forms register styles and must not show up in other tests' registry):
no request, however malformed, gets a 5xx, and every answer is the one /openapi.json describes
(status, content type, body schema, headers). Bounded in examples for CI, seeded to reproduce."""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from collections.abc import Iterator
from typing import Any

import httpx
import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server
from tests.service.conftest import SHARED_LIMITS

CLI_EXAMPLES = 25  # per operation
# Every check but one: the schema cannot say "a decodable PNG", so the schema-valid random bytes
# schemathesis sends as images are rightly refused (415, or 422 below the encoder's 9 pixels).
CLI_EXCLUDED_CHECKS = "positive_data_acceptance"
# Conformance to the description, checked on each answer to the forms with real images.
CONFORMANCE = [not_a_server_error, status_code_conformance, content_type_conformance,
               response_schema_conformance, response_headers_conformance]
CLI_TIMEOUT_S = 240
FORM_EXAMPLES = 40  # per operation, with real images in the file fields
FILE_FIELDS = ("content", "file", "style", "mask")
SIZE_FIELDS = ("content_size", "style_size")
# Each dropped 3 times out of 4: random ids are unknown (404) and random weights are not
# numbers (422), which would stop most forms before the networks.
OPTIONAL_FIELDS = ("style_id", "weights", "mask")

# Small real uploads, so that fuzzed forms get past decoding into the networks; odd sizes
# (1 x 1, 9 x 9: the smallest the encoder takes) and every accepted format.
IMAGES = [
    encode(random_image(40, 30, seed=1)),
    encode(random_image(24, 32, seed=2), "JPEG"),
    encode(random_image(16, 16, seed=3), "WEBP"),
    encode(Image.new("RGB", (9, 9), (10, 200, 30))),
    encode(Image.new("L", (1, 1), 128)),
    encode(Image.new("L", (40, 30), 255)),  # a mask for the first content
]


@pytest.fixture(scope="module")
def fuzz_server(server_env: dict[str, str], tmp_path_factory: pytest.TempPathFactory
                ) -> Iterator[RunningServer]:
    env = {**server_env, **SHARED_LIMITS, "ADAIN_STYLES_DIR": str(tmp_path_factory.mktemp("fz"))}
    with running_server(env) as running:
        yield running


@pytest.fixture(scope="module")
def schema(fuzz_server: RunningServer) -> Any:
    return schemathesis.openapi.from_url(f"{fuzz_server.url}/openapi.json")


def test_schemathesis_cli_finds_no_server_error_and_no_undocumented_answer(
    fuzz_server: RunningServer,
) -> None:
    """Every operation of /openapi.json, schemathesis' own generation (random bytes as images,
    out-of-range numbers, odd strings and field names, undocumented methods, and sequences
    such as register -> get -> delete -> get): no 5xx; statuses, content types, bodies and
    headers as documented; invalid data refused; Allow lists the documented methods."""
    binary = shutil.which("schemathesis")
    assert binary, "schemathesis is a dev dependency: pip install -e .[dev]"
    run = subprocess.run(
        [binary, "run", f"{fuzz_server.url}/openapi.json", "--checks", "all",
         "--exclude-checks", CLI_EXCLUDED_CHECKS, "--max-examples", str(CLI_EXAMPLES),
         "--phases", "examples,coverage,fuzzing,stateful", "--workers", "1",
         "--seed", "20171001", "--request-timeout", "60", "--generation-database", "none"],
        capture_output=True, text=True, timeout=CLI_TIMEOUT_S,
    )
    print(run.stdout[-3000:])
    assert run.returncode == 0, run.stdout[-6000:] + run.stderr[-2000:]
    assert "generated" in run.stdout  # requests were really sent
    documented = httpx.get(f"{fuzz_server.url}/openapi.json").json()["paths"]
    tested = re.search(r"Tested:\s+(\d+)", run.stdout)
    assert tested, run.stdout[-3000:]
    assert int(tested.group(1)) == sum(len(item) for item in documented.values())


@st.composite
def with_real_images(draw: st.DrawFn, body: dict[str, Any]) -> dict[str, Any]:
    """The generated form with real images in most of its file fields and, on /stylize, small
    sizes most of the time, so that the fuzzing reaches the networks."""
    mostly = st.sampled_from([True, True, True, False])  # 3 times out of 4
    form = {name: value for name, value in body.items()
            if name not in OPTIONAL_FIELDS or not draw(mostly)}
    if "content" in body and "style" not in form and draw(mostly):
        form["style"] = None  # /stylize without styles: filled with images below
    for name in FILE_FIELDS:
        if name not in form:
            continue
        if isinstance(form[name], list):
            form[name] = [draw(st.sampled_from(IMAGES)) if draw(mostly) else value
                          for value in form[name]]
        elif form[name] is None and name != "content" and draw(mostly):
            form[name] = [draw(st.sampled_from(IMAGES))]  # the list schemathesis left out
        elif draw(mostly):
            form[name] = draw(st.sampled_from(IMAGES))
    # Only /stylize (whose forms have a content) has sizes: on /styles they are unknown fields,
    # and forms refused for them alone would never reach the registry.
    for name in SIZE_FIELDS if "content" in body else ():
        if draw(mostly):
            form[name] = draw(st.integers(0, 64))
    return form


def form_text(value: object) -> str:
    """A generated non-file value as a form field: JSON for what a form has no syntax for."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool | int | float):
        return json.dumps(value).lower() if isinstance(value, bool) else repr(value)
    return json.dumps(value)


def send_form(url: str, form: dict[str, Any]) -> httpx.Response:
    """POST the generated form as multipart: bytes as files, lists as repeated fields.

    (schemathesis sends the items of an optional file list as text fields, which would only
    test the 422 for a text where a file is due.)"""
    files: list[tuple[str, tuple[str, bytes]]] = []
    fields: list[tuple[str, str]] = []
    for name, value in form.items():
        for item in value if isinstance(value, list) else [value]:
            if isinstance(item, bytes):
                files.append((name, (f"{name}.bin", item)))
            else:
                fields.append((name, form_text(item)))
    # httpx sends `data` with `files` as multipart parts, in this order.
    request = httpx.Request("POST", url, data=dict_of_lists(fields), files=files)
    request.read()  # the body in memory: schemathesis' checks read the request back
    with httpx.Client(timeout=120) as client:
        return client.send(request)


def dict_of_lists(pairs: list[tuple[str, str]]) -> dict[str, list[str]]:
    grouped: dict[str, list[str]] = {}
    for name, value in pairs:
        grouped.setdefault(name, []).append(value)
    return grouped


def assert_error_shape(response: httpx.Response, label: str) -> None:
    assert response.status_code < 500, (label, response.status_code, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"detail", "field"}, (label, body)
        assert body["detail"], (label, body)


@pytest.mark.parametrize("path", ["/stylize", "/styles"])
def test_fuzzed_forms_with_real_images(fuzz_server: RunningServer, schema: Any, path: str
                                       ) -> None:
    """Forms generated from the schema (odd field names, out-of-range numbers, extra fields)
    whose uploads are real images: no 5xx, every error in the JSON shape, every 200 an image,
    every answer (images and their headers included) as /openapi.json describes it."""
    operation = schema[path]["POST"]
    statuses: list[int] = []

    @given(case=operation.as_strategy(), data=st.data())
    @settings(max_examples=FORM_EXAMPLES, deadline=None, database=None, derandomize=True,
              suppress_health_check=list(HealthCheck))
    def fuzz(case: Any, data: st.DataObject) -> None:
        form = data.draw(with_real_images(case.body if isinstance(case.body, dict) else {}))
        response = send_form(f"{fuzz_server.url}{path}", form)
        statuses.append(response.status_code)
        assert_error_shape(response, f"POST {path} {sorted(form)}")
        if path == "/stylize" and response.status_code == 200:
            assert response.headers["content-type"].startswith("image/")
        case.validate_response(response, checks=CONFORMANCE)

    fuzz()
    print(f"POST {path}: statuses {sorted(set(statuses))} of {len(statuses)} requests")
    assert any(status < 300 for status in statuses), "no fuzzed request got through"
