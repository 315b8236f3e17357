"""POST /stylize against a real server: every field, the CLI's pixels, the cache, concurrency."""

from __future__ import annotations

import io
import os
import re
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from devkit import REPO
from devkit import reference_port as port
from devkit.images import encode, random_image
from devkit.server import RunningServer

CONTENT = encode(random_image(96, 64, seed=1))
STYLE_A = encode(random_image(80, 80, seed=2))
STYLE_B = encode(random_image(64, 96, seed=3), "JPEG", quality=95)
SMALL = {"content_size": "64", "style_size": "64"}


def stylize(server: RunningServer, data: dict[str, str | list[str]],
            files: list[tuple[str, tuple[str, bytes]]]) -> httpx.Response:
    """A list value sends the field repeated."""
    return httpx.post(f"{server.url}/stylize", data=data, files=files, timeout=120)


def ok(response: httpx.Response) -> httpx.Response:
    assert response.status_code == 200, response.text
    return response


def pixels(data: bytes) -> np.ndarray:
    with Image.open(io.BytesIO(data)) as image:
        return np.asarray(image.convert("RGB"))


def styles(*images: bytes) -> list[tuple[str, tuple[str, bytes]]]:
    return [("style", (f"style{i}.png", data)) for i, data in enumerate(images)]


def content(data: bytes = CONTENT) -> list[tuple[str, tuple[str, bytes]]]:
    return [("content", ("content.png", data))]


def timing(response: httpx.Response, name: str) -> float:
    match = re.search(rf"{name};dur=([0-9.]+)", response.headers["server-timing"])
    assert match, response.headers["server-timing"]
    return float(match.group(1))


def test_output_equals_the_cli_pixel_for_pixel(
    server: RunningServer, reference_weights: tuple[Path, Path], tmp_path: Path
) -> None:
    """Same inputs, same preprocessing functions: the pixels of `adain stylize`. Two processes
    may run other kernels or thread counts, and a float rounding difference can flip a pixel
    across a level boundary: equal within one 8-bit level, nearly every pixel exactly."""
    mask = Image.new("L", (96, 64), 0)
    mask.paste(255, (0, 0, 40, 64))
    paths = {"content.png": CONTENT, "a.png": STYLE_A, "b.jpg": STYLE_B, "mask.png": encode(mask)}
    for name, data in paths.items():
        (tmp_path / name).write_bytes(data)
    encoder, decoder = reference_weights
    cases = [
        (["--alpha", "0.7", "--weights", "1,3", "--mask", "mask.png", "--preserve-color",
          "--content-size", "80", "--style-size", "48"],
         {"alpha": "0.7", "weights": "1,3", "preserve_color": "true", "content_size": "80",
          "style_size": "48"}, [("mask", ("mask.png", paths["mask.png"]))]),
        (["--crop", "--content-size", "56", "--style-size", "40", "--weights", "2,1"],
         {"crop": "true", "content_size": "56", "style_size": "40", "weights": "2,1"}, []),
    ]
    for index, (options, form, masks) in enumerate(cases):
        output = tmp_path / f"cli{index}.png"
        subprocess.run(
            [sys.executable, "-m", "cli", "stylize", "content.png", "a.png", "b.jpg",
             "-o", str(output), "--encoder", str(encoder), "--decoder", str(decoder),
             "--device", "cpu", "--precision", "fp32", *options],
            # The CLI of this checkout, whatever the installed package points at.
            cwd=tmp_path, check=True, capture_output=True,
            env={**os.environ, "PYTHONPATH": str(REPO)},
        )
        response = ok(stylize(server, form, content() + styles(STYLE_A, STYLE_B) + masks))
        assert response.headers["content-type"] == "image/png"
        cli_pixels, http_pixels = pixels(output.read_bytes()), pixels(response.content)
        assert cli_pixels.std() > 5  # a real image, not a flat grey
        difference = np.abs(http_pixels.astype(int) - cli_pixels.astype(int))
        assert difference.max() <= 1
        assert (difference == 0).mean() > 0.99


@pytest.mark.parametrize(("fmt", "media_type"), [("png", "image/png"), ("jpeg", "image/jpeg"),
                                                  ("webp", "image/webp")])
def test_output_formats(server: RunningServer, fmt: str, media_type: str) -> None:
    response = ok(stylize(server, {**SMALL, "format": fmt, "quality": "80"},
                          content() + styles(STYLE_A)))
    assert response.headers["content-type"] == media_type
    with Image.open(io.BytesIO(response.content)) as image:
        assert image.format == fmt.upper()
        assert image.size == (96, 64)


def test_quality_changes_lossy_output(server: RunningServer) -> None:
    low, high = (ok(stylize(server, {**SMALL, "format": "jpeg", "quality": q},
                            content() + styles(STYLE_A))) for q in ("5", "95"))
    assert len(low.content) < len(high.content)


@pytest.mark.parametrize(("form", "size"), [
    ({"content_size": "0", "style_size": "64"}, (96, 64)),
    ({"content_size": "48", "style_size": "64"}, (72, 48)),
    ({"content_size": "48", "style_size": "64", "crop": "true"}, (48, 48)),
])
def test_content_size_and_crop(server: RunningServer, form: dict[str, str],
                               size: tuple[int, int]) -> None:
    response = ok(stylize(server, form, content() + styles(STYLE_A)))
    assert Image.open(io.BytesIO(response.content)).size == size


@pytest.mark.parametrize("change", [
    {"alpha": "0"}, {"alpha": "0.5"}, {"style_size": "32"}, {"preserve_color": "true"},
])
def test_alpha_style_size_and_preserve_color_are_the_reference_test_py(
    server: RunningServer, reference_weights: tuple[Path, Path], tmp_path: Path,
    change: dict[str, str],
) -> None:
    """Each control against the reference port's `test.py` with the same option (the server
    runs fp32 on the same test weights): within one 8-bit level; and each changes the output,
    so that a control ignored by the form could not pass."""
    (tmp_path / "content.png").write_bytes(CONTENT)
    (tmp_path / "style.png").write_bytes(STYLE_A)
    form = {**SMALL, **change}
    port.run_test_py(
        *port.load_nets(*reference_weights), tmp_path / "content.png", [tmp_path / "style.png"],
        tmp_path / "reference.png", alpha=float(form.get("alpha", "1")),
        preserve_color=form.get("preserve_color") == "true",
        content_size=int(form["content_size"]), style_size=int(form["style_size"]),
    )
    ours = pixels(ok(stylize(server, form, content() + styles(STYLE_A))).content)
    reference = pixels((tmp_path / "reference.png").read_bytes())[: ours.shape[0], : ours.shape[1]]
    assert np.abs(ours.astype(int) - reference.astype(int)).max() <= 1
    base = pixels(ok(stylize(server, SMALL, content() + styles(STYLE_A))).content)
    assert np.abs(base.astype(int) - ours.astype(int)).max() > 2, change  # more than rounding


def test_weights_and_the_order_of_files_then_ids(server: RunningServer) -> None:
    """Styles are uploaded files first, then style_ids; a weight of 0 removes a style."""
    registered = httpx.post(f"{server.url}/styles", files={"file": ("b.jpg", STYLE_B)}, timeout=30)
    style_b = registered.json()["id"]
    only_a = ok(stylize(server, SMALL, content() + styles(STYLE_A))).content
    only_b = ok(stylize(server, {**SMALL, "style_id": style_b}, content())).content
    mixes = {}
    for weights in (["1", "0"], ["0,1"], ["1", "3"], ["1,3"]):
        form = {**SMALL, "style_id": style_b, "weights": weights}
        response = ok(stylize(server, form, content() + styles(STYLE_A)))
        mixes[" ".join(weights)] = pixels(response.content)  # "1 3": two repeated fields
    np.testing.assert_array_equal(mixes["1 0"], pixels(only_a))
    np.testing.assert_array_equal(mixes["0,1"], pixels(only_b))
    # Repeated fields and one comma-separated field mean the same.
    np.testing.assert_array_equal(mixes["1 3"], mixes["1,3"])
    assert not np.array_equal(mixes["1,3"], pixels(only_a))
    assert not np.array_equal(mixes["1,3"], pixels(only_b))


def test_masks_one_per_style_or_one_binary(server: RunningServer) -> None:
    left = Image.new("L", (96, 64), 0)
    left.paste(255, (0, 0, 44, 64))  # the edge inside a relu4_1 cell (8 px)
    right = Image.eval(left, lambda v: 255 - v)
    binary = ok(stylize(server, SMALL, content() + styles(STYLE_A, STYLE_B)
                        + [("mask", ("m.png", encode(left)))]))
    swapped = ok(stylize(server, SMALL, content() + styles(STYLE_B, STYLE_A)
                         + [("mask", ("m.png", encode(right)))]))
    two = ok(stylize(server, SMALL, content() + styles(STYLE_A, STYLE_B)
                     + [("mask", ("l.png", encode(left))), ("mask", ("r.png", encode(right)))]))
    unmasked = ok(stylize(server, SMALL, content() + styles(STYLE_A, STYLE_B)))
    # One binary mask: white is the first style, black the second.
    np.testing.assert_array_equal(pixels(binary.content), pixels(swapped.content))
    # Two masks give the same regions, but the cell the edge cuts is shared (area-averaged)
    # instead of given whole to one style (nearest, as the reference's binary mask).
    regions = np.abs(pixels(binary.content).astype(int) - pixels(two.content).astype(int))
    mixing = np.abs(pixels(binary.content).astype(int) - pixels(unmasked.content).astype(int))
    print(f"mean difference: binary vs two masks {regions.mean():.2f}, "
          f"vs unmasked {mixing.mean():.2f}")
    assert 0 < regions.mean() < mixing.mean() / 2


def test_image_kinds_are_converted_and_exif_orientation_applied(server: RunningServer) -> None:
    photo = random_image(96, 64, seed=4)
    exif = Image.Exif()
    exif[0x0112] = 6  # "rotate 90 degrees clockwise to display"
    rotated = encode(photo, "JPEG", exif=exif.tobytes())
    response = ok(stylize(server, {**SMALL, "content_size": "0"},
                          content(rotated) + styles(STYLE_A)))
    assert Image.open(io.BytesIO(response.content)).size == (64, 96)

    rgba = photo.convert("RGBA")
    rgba.putalpha(128)
    grey16 = Image.fromarray(np.asarray(photo.convert("L"), dtype=np.uint16) * 257)
    kinds = {"grey": photo.convert("L"), "palette": photo.convert("P"), "rgba": rgba,
             "16-bit": grey16, "cmyk-jpeg": photo.convert("CMYK")}
    for name, image in kinds.items():
        data = encode(image, "JPEG") if name == "cmyk-jpeg" else encode(image)
        response = stylize(server, SMALL, content(data) + styles(data))
        assert response.status_code == 200, (name, response.text)
        assert Image.open(io.BytesIO(response.content)).mode == "RGB"
    webp = encode(photo, "WEBP")
    ok(stylize(server, SMALL, content(webp) + styles(webp)))


def test_cache_hit_skips_the_encoder_and_gives_identical_output(server: RunningServer) -> None:
    style = encode(random_image(72, 72, seed=77))  # used by this test only
    first = ok(stylize(server, SMALL, content() + styles(style, style)))
    second = ok(stylize(server, SMALL, content() + styles(style)))
    assert first.headers["x-style-cache"] == "miss,hit"  # the same file twice: encoded once
    assert second.headers["x-style-cache"] == "hit"
    assert timing(first, "styles") > 0
    assert timing(second, "styles") == 0  # no encoder pass for the style at all
    print(f"inference ms: miss {first.headers['x-inference-time-ms']}, "
          f"hit {second.headers['x-inference-time-ms']}")
    # Cached statistics are the computed ones: one style twice at weights 1:1 is that style.
    np.testing.assert_array_equal(pixels(first.content), pixels(second.content))
    # Other style sizes and crops have their own statistics.
    other = ok(stylize(server, {**SMALL, "style_size": "40"}, content() + styles(style)))
    assert other.headers["x-style-cache"] == "miss"
    # Colour preservation recolours the style per content: never from the cache.
    bypass = ok(stylize(server, {**SMALL, "preserve_color": "1"}, content() + styles(style)))
    assert bypass.headers["x-style-cache"] == "bypass"
    assert float(bypass.headers["x-inference-time-ms"]) > 0


def test_concurrent_requests_equal_sequential_ones(server: RunningServer) -> None:
    requests = [(encode(random_image(80, 56, seed=200 + i)), [STYLE_A, STYLE_B][i % 2])
                for i in range(8)]

    def run(pair: tuple[bytes, bytes]) -> httpx.Response:
        return stylize(server, SMALL, content(pair[0]) + styles(pair[1]))

    sequential = [ok(run(pair)) for pair in requests]
    with ThreadPoolExecutor(len(requests)) as pool:
        concurrent = [ok(r) for r in pool.map(run, requests)]
    batch_sizes = [int(r.headers["x-batch-size"]) for r in concurrent]
    print(f"batch sizes of 8 concurrent requests: {batch_sizes}")
    for one, other in zip(sequential, concurrent, strict=True):
        alone, batched = pixels(one.content).astype(int), pixels(other.content).astype(int)
        # A batched convolution may sum in another order (float differences ~1e-6), which
        # can flip the rounding of a rare pixel by one level; nothing more may differ.
        assert np.abs(alone - batched).max() <= 1
        assert (alone != batched).mean() < 1e-3


def test_flat_style_with_colour_preservation(server: RunningServer) -> None:
    """A one-colour style has no colour covariance to transfer: a 200, not a failed SVD."""
    flat = encode(Image.new("RGB", (40, 40), (90, 140, 200)))
    response = ok(stylize(server, {**SMALL, "preserve_color": "true"}, content() + styles(flat)))
    assert response.headers["x-style-cache"] == "bypass"



def max_difference(first: bytes, second: bytes) -> int:
    return int(np.abs(pixels(first).astype(int) - pixels(second).astype(int)).max())


def test_any_finite_weights_mix_as_their_ratio(server: RunningServer) -> None:
    """Weights that overflow float32 (2e38) or their sum (1e308), or underflow it (1e-300),
    are the equal mix; a weight that is not a finite number is refused."""
    two_styles = content() + styles(STYLE_A, STYLE_B)
    equal = ok(stylize(server, {**SMALL, "weights": "1,1"}, two_styles)).content
    for weights in ("2e38,2e38", "1e308,1e308", "1e-300,1e-300"):
        mixed = ok(stylize(server, {**SMALL, "weights": weights}, two_styles)).content
        assert max_difference(mixed, equal) <= 1, weights
    for weights in ("1e309,1", "nan,1", "-1e-300,1"):
        refused = stylize(server, {**SMALL, "weights": weights}, two_styles)
        assert refused.status_code == 422 and refused.json()["field"] == "weights", weights


def masks(*images: bytes) -> list[tuple[str, tuple[str, bytes]]]:
    return [("mask", (f"mask{i}.png", data)) for i, data in enumerate(images)]


def test_pixels_no_mask_covers_take_the_unmasked_mix(server: RunningServer) -> None:
    form = {**SMALL, "weights": "1,3"}
    two_styles = content() + styles(STYLE_A, STYLE_B)
    black = encode(Image.new("L", (96, 64), 0))
    corner = Image.new("L", (96, 64), 0)
    corner.paste(255, (0, 0, 24, 24))  # the first style here; no mask covers the rest
    unmasked = ok(stylize(server, form, two_styles)).content
    all_black = ok(stylize(server, form, two_styles + masks(black, black))).content
    cornered = ok(stylize(server, form, two_styles + masks(encode(corner), black))).content
    assert max_difference(all_black, unmasked) <= 1
    difference = np.abs(pixels(cornered).astype(int) - pixels(unmasked).astype(int))
    # Beyond the decoder's reach of the corner (~30 px) the pixels are the unmasked ones.
    assert difference[40:, 56:].max() <= 1
    assert difference[:24, :24].mean() > 2  # the corner is the first style alone


def test_16_bit_and_alpha_masks_read_at_their_level(server: RunningServer) -> None:
    """A 16-bit mask at 16448/65535 and a white mask at alpha 64 cover as an 8-bit mask at
    64/255; clipped to 8 bits (or alpha ignored) they would cover as white."""
    two_styles = content() + styles(STYLE_A, STYLE_B)
    second = encode(Image.new("L", (96, 64), 191))

    def with_first_mask(mask: Image.Image) -> bytes:
        return ok(stylize(server, SMALL, two_styles + masks(encode(mask), second))).content

    eight_bit = with_first_mask(Image.new("L", (96, 64), 64))
    sixteen_bit = Image.fromarray(np.full((64, 96), 64 * 257, dtype=np.uint16))
    assert sixteen_bit.mode == "I;16"
    alpha = Image.new("RGBA", (96, 64), (255, 255, 255, 64))
    assert max_difference(with_first_mask(sixteen_bit), eight_bit) <= 1
    assert max_difference(with_first_mask(alpha), eight_bit) <= 1
    assert max_difference(with_first_mask(Image.new("L", (96, 64), 255)), eight_bit) > 2
