"""The form a route declares is the form it takes (service/forms.py): unknown fields, text
where a file part belongs and bodies that are not forms are refused with the field named."""

from __future__ import annotations

import httpx
import pytest

from devkit.images import encode, random_image
from devkit.server import RunningServer

CONTENT = encode(random_image(40, 32, seed=8101))
STYLE = encode(random_image(32, 32, seed=8102))
SMALL = {"content_size": "32", "style_size": "32"}


def stylize(
    url: str, data: dict[str, str], files: list[tuple[str, tuple[str, bytes]]]
) -> httpx.Response:
    return httpx.post(f"{url}/stylize", data=data, files=files, timeout=60)


def error_of(response: httpx.Response, status: int) -> tuple[str, str | None]:
    assert response.status_code == status, response.text
    body = response.json()
    assert set(body) == {"detail", "field"}
    return body["detail"], body["field"]


def test_a_misspelt_field_is_refused_with_the_nearest_known_one(server: RunningServer) -> None:
    answer = stylize(
        server.url,
        {**SMALL, "alpah": "0.1"},
        [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))],
    )
    detail, field = error_of(answer, 422)
    assert field == "alpah"
    assert "unknown field 'alpah'" in detail and "'alpha'" in detail


def test_a_misspelt_file_field_is_named_not_counted(server: RunningServer) -> None:
    # Before: "got 0 styles", which does not say that `styles` was ignored.
    answer = stylize(
        server.url, SMALL, [("content", ("c.png", CONTENT)), ("styles", ("s.png", STYLE))]
    )
    detail, field = error_of(answer, 422)
    assert field == "styles"
    assert "'style'" in detail


def test_a_field_far_from_any_lists_the_known_ones(server: RunningServer) -> None:
    answer = httpx.post(
        f"{server.url}/styles", data={"zzzz": "1"}, files={"file": ("s.png", STYLE)}, timeout=30
    )
    detail, field = error_of(answer, 422)
    assert field == "zzzz"
    assert "file" in detail and "name" in detail  # the fields POST /styles knows


def test_text_where_a_file_part_belongs_says_so(server: RunningServer) -> None:
    # curl -F content=/path/photo.jpg (no @) sends the path as text.
    answer = stylize(
        server.url, {**SMALL, "content": "/home/me/photo.jpg"}, [("style", ("s.png", STYLE))]
    )
    detail, field = error_of(answer, 422)
    assert field == "content"
    assert "expected a file part" in detail and "@" in detail
    assert "UploadFile" not in detail


@pytest.mark.parametrize("path", ["/stylize", "/styles"])
def test_a_json_body_is_told_the_api_takes_forms(server: RunningServer, path: str) -> None:
    answer = httpx.post(f"{server.url}{path}", json={"content": "x", "style_id": ["y"]}, timeout=30)
    detail, _ = error_of(answer, 415)
    assert "multipart/form-data" in detail and "application/json" in detail


def test_the_known_fields_still_work(server: RunningServer) -> None:
    answer = stylize(
        server.url,
        {**SMALL, "alpha": "0.5", "format": "jpeg"},
        [("content", ("c.png", CONTENT)), ("style", ("s.png", STYLE))],
    )
    assert answer.status_code == 200, answer.text
    assert answer.headers["content-type"] == "image/jpeg"
