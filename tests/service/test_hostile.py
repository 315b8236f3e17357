"""Hostile input against a real server: every bad upload gets a 4xx JSON error naming the field
or the limit, odd but valid images are served, and the server keeps serving with bounded memory.
"""

from __future__ import annotations

import io
import struct
import zlib
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit.images import encode, random_image
from devkit.server import RunningServer, running_server

MIB = 1024 * 1024
# This module's server: limits small enough to reach with small images, large enough that
# a 512 x 512 output (the default content_size) is allowed.
LIMITS = {
    "ADAIN_MAX_UPLOAD_BYTES": str(MIB),
    "ADAIN_MAX_IMAGE_PIXELS": "200000",
    "ADAIN_MAX_OUTPUT_PIXELS": "300000",
}
SMALL = {"content_size": "32", "style_size": "32"}
CONTENT = encode(random_image(64, 48, seed=11))
STYLE = encode(random_image(48, 48, seed=12))
MEMORY_GROWTH_LIMIT_MB = 300


@pytest.fixture(scope="module")
def hostile_server(server_env: dict[str, str]) -> Iterator[RunningServer]:
    with running_server({**server_env, **LIMITS}) as running:
        yield running


# --- building hostile uploads -------------------------------------------------------------


def png_chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def decompression_bomb(width: int = 30000, height: int = 30000) -> bytes:
    """A valid PNG header declaring width x height RGB pixels, with one tiny zlib-compressed
    row of data: a few hundred bytes that would decode to 2.7 GB."""
    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)  # 8-bit RGB, no interlace
    row = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    return (b"\x89PNG\r\n\x1a\n" + png_chunk(b"IHDR", header) + png_chunk(b"IDAT", row)
            + png_chunk(b"IEND", b""))


def padded_png(image: Image.Image, padding: int) -> bytes:
    """A PNG grown by `padding` bytes of a private ancillary chunk (decoders skip it): a large
    upload that decodes to a small image."""
    data = encode(image)
    end_of_header = 8 + 25  # signature + the IHDR chunk
    return data[:end_of_header] + png_chunk(b"prVt", b"\x00" * padding) + data[end_of_header:]


def animated(fmt: str, frames: list[Image.Image]) -> bytes:
    """Lossless (WebP too), so that the first frame decodes to exactly `frames[0]`."""
    buffer = io.BytesIO()
    frames[0].save(buffer, format=fmt, save_all=True, append_images=frames[1:], lossless=True)
    return buffer.getvalue()


def multipart(parts: list[tuple[bytes, bytes]], boundary: bytes = b"hostile-boundary") -> bytes:
    """A hand-built multipart body from (raw Content-Disposition name, value) pairs; a value
    that starts with the PNG signature is sent as a file. Names are raw bytes: any encoding."""
    body = b""
    for name, value in parts:
        body += b"--" + boundary + b"\r\nContent-Disposition: form-data; name=\"" + name + b"\""
        if value.startswith(b"\x89PNG"):
            body += b"; filename=\"upload.png\"\r\nContent-Type: image/png"
        body += b"\r\n\r\n" + value + b"\r\n"
    return body + b"--" + boundary + b"--\r\n"


# --- sending and checking -----------------------------------------------------------------

Files = list[tuple[str, tuple[str, bytes]]]


def stylize(server: RunningServer, files: Files, data: dict[str, str | list[str]] | None = None
            ) -> httpx.Response:
    return httpx.post(f"{server.url}/stylize", files=files, data={**SMALL, **(data or {})},
                      timeout=120)


def pair(content: bytes = CONTENT, style: bytes = STYLE) -> Files:
    return [("content", ("content.png", content)), ("style", ("style.png", style))]


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        assert image.mode == "RGB"
        return np.asarray(image)


def assert_error(response: httpx.Response, status: int, field: str | None, *words: str) -> None:
    """The documented error: `status`, a JSON body {"detail", "field"}, the field at fault, and
    `words` (the limit, the accepted values) in the message."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"] == "application/json"
    body = response.json()
    assert set(body) == {"detail", "field"}, body
    assert body["field"] == field, body
    for word in words:
        assert word in body["detail"], (word, body)


def rss_mb(server: RunningServer) -> float:
    """Resident memory of the server process, from the kernel."""
    status = Path(f"/proc/{server.process.pid}/status").read_text()
    kib = next(line.split()[1] for line in status.splitlines() if line.startswith("VmRSS:"))
    return int(kib) / 1024


# --- the hostile set: requests that must each get one documented error ----------------------


@dataclass(frozen=True)
class Hostile:
    files: Files
    status: int
    field: str | None
    words: tuple[str, ...]
    data: dict[str, str | list[str]] = field(default_factory=dict)


ACCEPTED = "send PNG, JPEG or WebP"
half_jpeg = encode(random_image(64, 48, seed=13), "JPEG")
mask_10px = encode(Image.new("L", (10, 10), 255))
mask_right = encode(Image.new("L", (64, 48), 255))

HOSTILE: dict[str, Hostile] = {
    "truncated JPEG": Hostile(pair(half_jpeg[: len(half_jpeg) // 2]), 415, "content",
                              ("JPEG", "could not be decoded")),
    "truncated PNG": Hostile(pair(CONTENT[: len(CONTENT) // 2]), 415, "content",
                             ("PNG", "could not be decoded")),
    "not an image": Hostile(pair(b"plain text, not an image " * 20), 415, "content", (ACCEPTED,)),
    "empty file": Hostile(pair(b""), 415, "content", (ACCEPTED,)),
    "TIFF": Hostile(pair(encode(random_image(32, 32), "TIFF")), 415, "content",
                    ("TIFF", ACCEPTED)),
    "GIF": Hostile(pair(encode(random_image(32, 32), "GIF")), 415, "content", ("GIF", ACCEPTED)),
    "animated GIF": Hostile(
        pair(animated("GIF", [random_image(32, 32, seed=s) for s in range(3)])),
        415, "content", ("GIF", ACCEPTED)),
    "SVG": Hostile(pair(b'<svg xmlns="http://www.w3.org/2000/svg" width="8" height="8">'
                        b'<rect width="8" height="8"/></svg>'), 415, "content", (ACCEPTED,)),
    "TIFF style": Hostile(pair(style=encode(random_image(32, 32), "TIFF")), 415, "style[0]",
                          ("TIFF",)),
    "bomb content": Hostile(pair(decompression_bomb()), 413, "content",
                            ("200000", "ADAIN_MAX_IMAGE_PIXELS")),
    "bomb style": Hostile(pair(style=decompression_bomb()), 413, "style[0]",
                          ("ADAIN_MAX_IMAGE_PIXELS",)),
    "bomb mask": Hostile([*pair(), ("mask", ("m.png", decompression_bomb()))], 413, "mask[0]",
                         ("ADAIN_MAX_IMAGE_PIXELS",)),
    "10000x8 at the default content_size": Hostile(
        pair(encode(random_image(10000, 8, seed=14))), 422, "content_size",
        ("300000", "ADAIN_MAX_OUTPUT_PIXELS"), {"content_size": "512"}),
    "10000x8 at content_size=0": Hostile(
        pair(encode(random_image(10000, 8, seed=14))), 422, "content_size", ("9",),
        {"content_size": "0"}),
    "1x1 at content_size=0": Hostile(
        pair(encode(Image.new("RGB", (1, 1), (200, 30, 30)))), 422, "content_size", ("9",),
        {"content_size": "0"}),
    "1x1 style at style_size=0": Hostile(
        pair(style=encode(Image.new("RGB", (1, 1)))), 422, "style_size", ("9",),
        {"style_size": "0"}),
    "content_size 4": Hostile(pair(), 422, "content_size", ("9",), {"content_size": "4"}),
    "huge content_size": Hostile(pair(), 422, "content_size", ("ADAIN_MAX_OUTPUT_PIXELS",),
                                 {"content_size": "99999999999999999999"}),
    "negative style_size": Hostile(pair(), 422, "style_size", (), {"style_size": "-1"}),
    "mask of the wrong size": Hostile([*pair(), ("mask", ("m.png", mask_10px))], 422, "mask[0]",
                                      ("10 x 10", "64 x 48")),
    "3 masks for 1 style": Hostile(pair() + [("mask", ("m.png", mask_right))] * 3, 422, "mask",
                                   ("3 masks",)),
    "mask not an image": Hostile([*pair(), ("mask", ("m.png", b"not a mask"))], 415, "mask[0]",
                                 (ACCEPTED,)),
    "2 weights for 1 style": Hostile(pair(), 422, "weights", ("got 2",), {"weights": "1,2"}),
    "NaN weight": Hostile(pair(), 422, "weights", ("finite",), {"weights": "nan"}),
    "negative weight": Hostile([*pair(), ("style", ("b.png", STYLE))], 422, "weights",
                               ("non-negative",), {"weights": ["-1", "2"]}),
    "weights not numbers": Hostile(pair(), 422, "weights", ("numbers",), {"weights": "one"}),
    "negative alpha": Hostile(pair(), 422, "alpha", (), {"alpha": "-0.5"}),
    "NaN alpha": Hostile(pair(), 422, "alpha", (), {"alpha": "nan"}),
    "infinite alpha": Hostile(pair(), 422, "alpha", (), {"alpha": "inf"}),
    "huge alpha": Hostile(pair(), 422, "alpha", (), {"alpha": "1e308"}),
    "alpha not a number": Hostile(pair(), 422, "alpha", (), {"alpha": "strong"}),
    "0 styles": Hostile(pair()[:1], 422, "style", ("1 to 8",)),
    "9 styles": Hostile(pair() + [("style", ("s.png", STYLE))] * 8, 422, "style",
                        ("got 9", "1 to 8")),
    "unknown style id": Hostile(pair()[:1], 404, "style_id", ("no style",),
                                {"style_id": "0" * 64}),
    "path in style id": Hostile(pair()[:1], 404, "style_id", ("no style",),
                                {"style_id": "../../etc/passwd"}),
    "1001 form fields": Hostile(pair(), 400, None, ("1000",),
                                {f"extra{i}": "x" for i in range(999)}),
    "1001 files": Hostile(pair() + [("style", ("s.png", b"x"))] * 999, 400, None, ("1000",)),
    "unknown output format": Hostile(pair(), 422, "format", ("png",), {"format": "gif"}),
    "quality 0": Hostile(pair(), 422, "quality", (), {"quality": "0"}),
}


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_request_gets_a_documented_error(hostile_server: RunningServer, name: str
                                                 ) -> None:
    case = HOSTILE[name]
    response = stylize(hostile_server, case.files, case.data)
    assert_error(response, case.status, case.field, *case.words)


def test_chunked_upload_over_the_limit_is_refused_while_streaming(
    hostile_server: RunningServer,
) -> None:
    """No Content-Length to refuse up front: the body is counted as it arrives."""
    # The content part, then a style part whose bytes keep coming.
    opening = multipart([(b"content", CONTENT)]).removesuffix(b"--hostile-boundary--\r\n")

    def body() -> Iterator[bytes]:
        yield opening + (b"--hostile-boundary\r\nContent-Disposition: form-data; "
                         b"name=\"style\"; filename=\"big.png\"\r\n\r\n")
        for _ in range(24):  # 1.5 MiB, over the 1 MiB limit
            yield b"\x00" * 65536
        yield b"\r\n--hostile-boundary--\r\n"

    response = httpx.post(
        f"{hostile_server.url}/stylize", content=body(), timeout=60,
        headers={"content-type": "multipart/form-data; boundary=hostile-boundary"},
    )
    assert "content-length" not in response.request.headers
    assert response.request.headers["transfer-encoding"] == "chunked"
    assert_error(response, 413, None, str(MIB), "ADAIN_MAX_UPLOAD_BYTES")
    # With a Content-Length the same body is refused before it is read.
    declared = stylize(hostile_server, pair(style=padded_png(random_image(8, 8), MIB)))
    assert_error(declared, 413, None, "ADAIN_MAX_UPLOAD_BYTES")


def test_non_utf8_field_names_and_values(hostile_server: RunningServer) -> None:
    """Field names are matched byte for byte: an unknown one is refused like any unknown field
    (a garbled `content` with `content` suggested), a non-UTF-8 number is not a number."""
    content_type = {"content-type": "multipart/form-data; boundary=hostile-boundary"}
    sizes = [(b"content_size", b"32"), (b"style_size", b"32")]

    def post(parts: list[tuple[bytes, bytes]]) -> httpx.Response:
        return httpx.post(f"{hostile_server.url}/stylize", content=multipart(sizes + parts),
                          headers=content_type, timeout=60)

    unknown = post([(b"\xff\xfe\xc3", b"v"), (b"content", CONTENT), (b"style", STYLE)])
    assert unknown.status_code == 422, unknown.text
    assert "unknown field" in unknown.json()["detail"]
    garbled = post([(b"cont\xe9nt", CONTENT), (b"style", STYLE)])
    assert garbled.status_code == 422, garbled.text
    assert "did you mean 'content'" in garbled.json()["detail"]
    assert_error(post([(b"content", CONTENT), (b"style", STYLE), (b"alpha", b"\xff\xfe")]),
                 422, "alpha")


def test_registering_hostile_styles(hostile_server: RunningServer) -> None:
    def register(data: bytes) -> httpx.Response:
        return httpx.post(f"{hostile_server.url}/styles", files={"file": ("s.png", data)},
                          timeout=60)

    assert_error(register(decompression_bomb()), 413, "file", "ADAIN_MAX_IMAGE_PIXELS")
    assert_error(register(b"%PDF-1.4 not an image"), 415, "file", ACCEPTED)
    assert_error(register(encode(random_image(16, 16), "TIFF")), 415, "file", "TIFF")


# --- odd but valid images: served, converted to RGB, upright -------------------------------


def test_image_modes_are_served(hostile_server: RunningServer) -> None:
    photo = random_image(64, 48, seed=15)
    palette = photo.convert("P")
    palette.info["transparency"] = 0  # palette entry 0 transparent
    grey_alpha = photo.convert("LA")
    uploads = {
        "CMYK JPEG": encode(photo.convert("CMYK"), "JPEG"),
        "16-bit grey PNG": encode(
            Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)),
        "palette PNG with transparency": encode(palette, transparency=0),
        "grey PNG": encode(photo.convert("L")),
        "grey JPEG": encode(photo.convert("L"), "JPEG"),
        "grey + alpha PNG": encode(grey_alpha),
    }
    for name, data in uploads.items():
        response = stylize(hostile_server, pair(data, data))
        assert response.status_code == 200, (name, response.text)
        assert pixels(response.content).shape == (32, 42, 3), name


def test_animated_webp_and_png_use_the_first_frame(hostile_server: RunningServer) -> None:
    frames = [random_image(40, 40, seed=20 + i) for i in range(3)]
    first_only = stylize(hostile_server, pair(encode(frames[0])), {"content_size": "0"})
    assert first_only.status_code == 200, first_only.text
    for fmt in ("WEBP", "PNG"):
        data = animated(fmt, frames)
        with Image.open(io.BytesIO(data)) as image:
            assert image.n_frames == 3  # really animated
        response = stylize(hostile_server, pair(data), {"content_size": "0"})
        assert response.status_code == 200, (fmt, response.text)
        np.testing.assert_array_equal(pixels(response.content), pixels(first_only.content))


def test_exif_rotated_jpeg_comes_back_upright(hostile_server: RunningServer) -> None:
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display": 40 x 20 stored, 20 x 40 shown
    rotated = encode(random_image(40, 20, seed=16), "JPEG", exif=exif.tobytes())
    response = stylize(hostile_server, pair(rotated), {"content_size": "0"})
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (20, 40)


def test_1x1_at_the_default_sizes(hostile_server: RunningServer) -> None:
    """Resized like the reference: the shorter side to 512, so 1 x 1 becomes 512 x 512."""
    tiny = encode(Image.new("RGB", (1, 1), (200, 30, 30)))
    response = httpx.post(f"{hostile_server.url}/stylize", files=pair(tiny, tiny), timeout=300)
    assert response.status_code == 200, response.text
    assert Image.open(io.BytesIO(response.content)).size == (512, 512)


# --- after all that -------------------------------------------------------------------------


def test_server_keeps_serving_with_bounded_memory(hostile_server: RunningServer) -> None:
    """The hostile set three times over, plus a style_id list pointing 998 times at a 0.9 MB
    style (each id would be read before the count is checked): memory stays bounded and a
    normal request gives the same pixels as before."""
    registered = httpx.post(f"{hostile_server.url}/styles", timeout=60, files={
        "file": ("padded.png", padded_png(random_image(48, 48, seed=17), 900_000))})
    assert registered.status_code in (200, 201), registered.text
    many_ids = Hostile(pair()[:1], 422, "style", ("1 to 8",),
                       {"style_id": [registered.json()["id"]] * 998})

    normal = stylize(hostile_server, pair())
    assert normal.status_code == 200, normal.text
    before = rss_mb(hostile_server)
    for _ in range(3):
        for case in [*HOSTILE.values(), many_ids]:
            response = stylize(hostile_server, case.files, case.data)
            assert response.status_code == case.status, response.text
    growth = rss_mb(hostile_server) - before
    print(f"server RSS: {before:.0f} MB before, {growth:+.0f} MB after 3 hostile sets")
    assert growth < MEMORY_GROWTH_LIMIT_MB

    again = stylize(hostile_server, pair())
    assert again.status_code == 200, again.text
    np.testing.assert_array_equal(pixels(again.content), pixels(normal.content))
    assert httpx.get(f"{hostile_server.url}/readyz", timeout=10).status_code == 200
