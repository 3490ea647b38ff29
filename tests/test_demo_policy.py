"""The bundle's demo page (`spritesafe export --web`, web/index.html) in headless Chromium:
the "tag, not filter" policy (off, blur, hide; explicit and suggestive sliders) applied to
images whose scores Python's Classifier knows, and never a score or setting in the URL."""

from __future__ import annotations

import functools
import http.server
import itertools
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image

from export.bundle import build_web
from export.classify import Classifier, Result
from spritesafe.config import Settings
from tests.helpers import png, sprite
from tests.learning import GREY, RED


@pytest.fixture
def int8(tiny_levels: tuple[Settings, Path]) -> Path:
    """A tiny model (64 px, 3 epochs) on red (explicit), grey (suggestive) and plain sprites."""
    return tiny_levels[1]


def _images(folder: Path) -> list[Path]:
    """Three sprites of each kind the model learned, so the scores spread."""
    rng = np.random.default_rng(21)
    folder.mkdir()
    paths = []
    for kind, colour in (("red", RED), ("grey", GREY), ("plain", None)):
        for i in range(3):
            tile = sprite(rng, 16, colors=6)
            tile[..., 3] = 255
            if colour is not None:
                tile[2:14, 2:14, :3] = colour
            paths.append(folder / f"{kind}{i}.png")
            paths[-1].write_bytes(png(tile))
    return paths


def _between(scores: list[float]) -> float:
    """A slider value (on its 0.001 grid) in the widest gap between the scores, so some are
    above it and some below, each by far more than the JS-Python tolerance (1e-4)."""
    ordered = sorted(scores)
    low, high = max(itertools.pairwise(ordered), key=lambda p: p[1] - p[0])
    assert high - low > 0.004, f"the model barely separates the images: {ordered}"
    return round((low + high) / 2, 3)


@pytest.fixture
def site(int8: Path, tmp_path: Path) -> Iterator[str]:
    build_web(int8, tmp_path / "site")
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site")
    )
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}/index.html"
    server.shutdown()


def _state(page: Any) -> dict[str, dict[str, Any]]:
    """Per image (by file name): flagged, label, the img's filter and visibility."""
    state: dict[str, dict[str, Any]] = page.eval_on_selector_all(
        "#out li",
        """items => Object.fromEntries(items.map(li => {
            const img = li.querySelector('img');
            return [li.dataset.name, {
                flagged: li.dataset.flagged === 'true',
                label: li.dataset.label,
                filter: getComputedStyle(img).filter,
                visible: img.offsetParent !== null,
                note: li.querySelector('.note').offsetParent !== null,
            }];
        }))""",
    )
    return state


def _screenshot(page: Any, path: Path) -> np.ndarray[Any, Any]:
    page.screenshot(path=str(path), full_page=True)
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    pixels = np.asarray(Image.open(path).convert("RGB"))
    assert len(np.unique(pixels.reshape(-1, 3), axis=0)) > 50  # images drawn, not a blank page
    return pixels


@pytest.mark.slow
def test_demo_page_applies_the_policy_in_the_page(int8: Path, site: str, tmp_path: Path) -> None:
    from playwright.sync_api import sync_playwright

    paths = _images(tmp_path / "images")
    clf = Classifier(int8)
    expected: dict[str, Result] = {
        p.name: r for p, r in zip(paths, clf.classify(paths), strict=True)
    }
    explicit = {n: float(r.explicit or 0) for n, r in expected.items()}
    suggestive = {n: float(r.suggestive or 0) for n, r in expected.items()}

    with sync_playwright() as pw:
        browser = pw.chromium.launch(
            executable_path="/usr/bin/chromium",
            args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
        )
        page = browser.new_page(viewport={"width": 1000, "height": 700})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        navigations: list[str] = []
        page.on("framenavigated", lambda frame: navigations.append(frame.url))
        page.goto(site)
        page.wait_for_function("document.getElementById('status').textContent === 'ready'")
        entries = page.evaluate("history.length")  # about:blank and the page

        # Defaults: blur, explicit > 0.5, suggestive > 0.7.
        assert page.eval_on_selector("input[name=mode]:checked", "e => e.value") == "blur"
        assert page.input_value("#explicit") == "0.5"
        assert page.input_value("#suggestive") == "0.7"

        page.set_input_files("#files", [str(p) for p in paths])
        page.wait_for_function(
            f"document.querySelectorAll('#out li.shown, #out li.blurred').length === {len(paths)}"
        )
        state = _state(page)
        assert set(state) == set(expected)
        for name, r in expected.items():
            assert state[name]["label"] == r.label, name
        pixelated = page.eval_on_selector("#out img", "e => getComputedStyle(e).imageRendering")
        assert pixelated == "pixelated"

        def flagged_by(explicit_at: float, suggestive_at: float) -> dict[str, bool]:
            page.fill("#explicit", str(explicit_at))
            page.fill("#suggestive", str(suggestive_at))
            want = {n: explicit[n] > explicit_at or suggestive[n] > suggestive_at for n in expected}
            assert any(want.values()) and not all(want.values())  # the test can fail
            assert {n: s["flagged"] for n, s in _state(page).items()} == want
            return want

        # Flagged by the explicit slider alone (suggestive > 1 never holds): blurred.
        want = flagged_by(_between(list(explicit.values())), 1.0)
        for name, s in _state(page).items():
            assert ("blur" in s["filter"]) == want[name] and s["visible"], name
        blurred = _screenshot(page, tmp_path / "blur.png")
        first = next(n for n in want if want[n])
        page.click(f"#out li[data-name='{first}'] .frame")  # click to reveal
        assert "blur" not in _state(page)[first]["filter"]

        # hide: flagged images are not drawn, a placeholder says so; the others are.
        page.check("input[value=hide]")
        for name, s in _state(page).items():
            assert s["visible"] != want[name] and s["note"] == want[name], name
        assert page.inner_text(f"#out li[data-name='{first}'] .note") == "hidden"
        hidden = _screenshot(page, tmp_path / "hide.png")

        # off: everything shown, nothing blurred.
        page.check("input[value=off]")
        for name, s in _state(page).items():
            assert s["visible"] and not s["note"] and "blur" not in s["filter"], name
        shown = _screenshot(page, tmp_path / "off.png")
        assert blurred.shape == shown.shape == hidden.shape
        assert not np.array_equal(blurred, shown) and not np.array_equal(hidden, shown)

        # Back to blur, now flagged by the suggestive slider alone: the same images, re-judged.
        page.check("input[value=blur]")
        want = flagged_by(1.0, _between(list(suggestive.values())))
        for name, s in _state(page).items():
            assert ("blur" in s["filter"]) == want[name] and s["visible"], name
        # The default sliders again: the policy follows them, whatever the scores are.
        want = {n: explicit[n] > 0.5 or suggestive[n] > 0.7 for n in expected}
        page.fill("#explicit", "0.5")
        page.fill("#suggestive", "0.7")
        assert {n: s["flagged"] for n, s in _state(page).items()} == want

        # Nothing went into the URL, and nothing navigated.
        assert page.url == site and navigations == [site]
        assert page.evaluate("[location.search, location.hash]") == ["", ""]
        assert page.evaluate("history.length") == entries  # no pushState either
        assert not errors, errors
        browser.close()
