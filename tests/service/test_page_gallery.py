"""The page's first impression, in real headless Chromium against real servers: the preset
gallery to start from, the before / after view, masks, style names that wrap between words,
the Save button explained."""

from __future__ import annotations

import io

import httpx
import numpy as np
import pytest
from PIL import Image
from playwright.sync_api import Browser, FilePayload, Page, expect

from devkit.images import encode
from devkit.server import RunningServer
from service.gallery import PRESET_NAMES
from tests.service.test_gallery import gallery_server
from tests.service.test_page import (
    CONTENT_SIZE,
    browser,
    choose_images,
    decoded_pixels,
    page,
    png_file,
    pytestmark,
    stylize_and_wait,
)

__all__ = ["browser", "gallery_server", "page", "pytestmark"]  # fixtures and the skip, shared


def shown_result(page: Page) -> np.ndarray:
    return decoded_pixels(page.locator("#result-image"))


def test_a_first_visit_has_a_gallery_to_try(
    browser: Browser, gallery_server: RunningServer
) -> None:
    context = browser.new_context(viewport={"width": 1280, "height": 900})
    page = context.new_page()
    page.goto(gallery_server.url + "/")
    tiles = page.locator("#registered-list li.registered")
    expect(tiles).to_have_count(len(PRESET_NAMES))
    for name in PRESET_NAMES:
        thumbnail = tiles.filter(has_text=name).locator("img.thumb")
        expect(thumbnail).to_be_visible()
    assert page.locator("#registered-empty").is_hidden()
    page.get_by_role("checkbox", name="starry-night").check()
    page.get_by_label("Content photo").set_input_files(png_file("gallery-photo.png", 40))
    page.get_by_label("Output size").select_option("0")
    page.get_by_label("Style scale").select_option("256")
    assert "ms" in stylize_and_wait(page)
    expect(page.locator("#error")).to_be_hidden()
    context.close()


def test_the_result_has_a_before_after_view(page: Page) -> None:
    """The slider cuts between the content photo (left) and the result (right)."""
    choose_images(page, png_file("compare.png", 41), png_file("compare-style.png", 42))
    stylize_and_wait(page)
    split = page.get_by_label("Before / after")
    expect(split).to_be_visible()
    box = page.locator("#result-image").bounding_box()
    assert box is not None
    assert box["width"] >= 250  # a 64 px result is shown scaled up to 16rem, not a stamp
    left = (box["x"] + 0.1 * box["width"], box["y"] + box["height"] / 2)
    right = (box["x"] + 0.9 * box["width"], box["y"] + box["height"] / 2)
    shown_at = "([x, y]) => document.elementFromPoint(x, y).id"
    split.fill("50")
    assert page.evaluate(shown_at, left) == "before-image"
    assert page.evaluate(shown_at, right) == "result-image"
    split.fill("0")
    assert page.evaluate(shown_at, left) == "result-image"
    split.fill("100")
    assert page.evaluate(shown_at, right) == "before-image"
    expect(page.locator("#compare-value")).to_have_text("100% before")
    # The photo it shows is the content sent, at the result's place and size.
    before = page.locator("#before-image")
    assert before.evaluate("i => [i.naturalWidth, i.naturalHeight]") == list(CONTENT_SIZE)
    assert before.bounding_box() == box


def test_masks_are_sent(page: Page, base_url: str) -> None:
    """One white mask for two styles: the first style everywhere (the API's binary form), so
    the page shows what /stylize makes of the first style alone, not the two mixed."""
    content, first, second = (
        png_file("masked.png", 43),
        png_file("first.png", 44),
        png_file("second.png", 45),
    )
    choose_images(page, content, first, second)
    white: FilePayload = {
        "name": "white.png",
        "mimeType": "image/png",
        "buffer": encode(Image.new("L", CONTENT_SIZE, 255)),
    }
    page.get_by_label("Masks (optional)").set_input_files(white)
    expect(page.locator("#mask-list li")).to_have_text(["Mask 1: white.pngRemove"])
    stylize_and_wait(page)
    shown = shown_result(page)

    def over_http(*styles: FilePayload) -> np.ndarray:
        answer = httpx.post(
            base_url + "/stylize",
            files=[
                ("content", (content["name"], content["buffer"], "image/png")),
                *[("style", (s["name"], s["buffer"], "image/png")) for s in styles],
            ],
            data={"content_size": "0", "style_size": "0"},
            timeout=60,
        )
        assert answer.status_code == 200, answer.text
        with Image.open(io.BytesIO(answer.content)) as image:
            return np.asarray(image.convert("RGB"), dtype=np.float64) / 255

    first_alone, mixed = over_http(first), over_http(first, second)
    assert np.abs(shown - first_alone).max() <= 3 / 255
    assert np.abs(shown - mixed).mean() > 10 * np.abs(shown - first_alone).mean()

    page.get_by_role("button", name="Remove mask white.png").click()
    expect(page.locator("#mask-list li")).to_have_count(0)


LONG_NAMES = ("adain__la_muse", "contrast_of_forms-by_willi", "picasso_seated_nude_hr")


@pytest.mark.parametrize("width", [1280, 360])
def test_style_names_wrap_between_words_only(browser: Browser, base_url: str, width: int) -> None:
    """Long names in the gallery and the chosen list: no word of them is split over two
    lines, wherever they wrap."""
    for seed, name in enumerate(LONG_NAMES[:1]):
        style = png_file(f"{name}.png", 50 + seed)
        answer = httpx.post(
            base_url + "/styles",
            data={"name": name},
            files={"file": (style["name"], style["buffer"])},
            timeout=30,
        )
        assert answer.status_code in (200, 201), answer.text
    context = browser.new_context(viewport={"width": width, "height": 900})
    page = context.new_page()
    page.goto(base_url + "/")
    page.get_by_role("checkbox", name=LONG_NAMES[0]).check()
    page.get_by_label("Upload style images").set_input_files(
        [png_file(f"{name}.png", 60 + seed) for seed, name in enumerate(LONG_NAMES[1:])]
    )
    expect(page.get_by_label(f"Weight for {LONG_NAMES[1]}")).to_be_visible()
    split_words = page.evaluate("""() => {
        const split = [];
        const names = document.querySelectorAll('#registered-list .name, #chosen-list .name');
        for (const name of names) {
            const walker = document.createTreeWalker(name, NodeFilter.SHOW_TEXT);
            for (let text = walker.nextNode(); text; text = walker.nextNode()) {
                // Each word (between "_", "-" or spaces) on one line: one box per word.
                for (const match of text.data.matchAll(/[^_\\-\\s.]+/g)) {
                    const range = document.createRange();
                    range.setStart(text, match.index);
                    range.setEnd(text, match.index + match[0].length);
                    const tops = [...range.getClientRects()].map((r) => Math.round(r.top));
                    if (new Set(tops).size > 1) split.push(`${name.textContent}: ${match[0]}`);
                }
            }
        }
        return split;
    }""")
    assert split_words == []
    assert page.locator("#chosen-list .name").count() == 3
    context.close()


def test_the_save_button_says_what_it_does(page: Page) -> None:
    choose_images(page, png_file("photo.png", 70), png_file("keeper.png", 71))
    save = page.get_by_role("button", name="Save keeper to the registered styles")
    expect(save).to_have_text("Save to gallery")
    title = save.get_attribute("title") or ""
    assert "gallery" in title and "without uploading it again" in title
