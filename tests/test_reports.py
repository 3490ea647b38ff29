"""Reports from users (review.reports): `spritesafe report`, the review server's
`POST /api/report` against a real server, and the web bundle's "wrong?" button in headless
Chromium, from another origin than the review server. Each ends as a queue row (reason
user_report, the reporter's expectation in its detail) that a decision turns into a human
label."""

from __future__ import annotations

import functools
import http.server
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import httpx
import numpy as np
import pytest
import sqlalchemy as sa
import uvicorn

from corpus.catalog import images, labels, review_queue, source_items, sources
from corpus.ingest import ingest
from corpus.sources import parse_source
from corpus.workspace import open_workspace
from export.bundle import build_web
from review.app import create_app
from review.decisions import decide
from review.reports import REASON, report_image
from review.security import Policy, RateLimit, report_refusal
from spritesafe.config import Settings, load_settings
from spritesafe.decode import Rejected
from tests.helpers import free_port, png, sprite
from tests.learning import RED

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))
TOKEN = "report-token-for-tests"


def _sprite_png(seed: int, red: bool = False) -> bytes:
    tile = sprite(np.random.default_rng(seed), 16, colors=6)
    tile[..., 3] = 255
    if red:
        tile[2:14, 2:14, :3] = RED
    return png(tile)


def _queue(settings: Settings) -> list[Any]:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        return list(conn.execute(sa.select(review_queue).order_by(review_queue.c.id)).all())


def _count(settings: Settings, table: sa.Table) -> int:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        return int(conn.execute(sa.select(sa.func.count()).select_from(table)).scalar_one())


def _human_labels(settings: Settings) -> list[Any]:
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        return list(conn.execute(sa.select(labels).where(labels.c.labeler == "human")).all())


def test_report_command(tmp_path: Path) -> None:
    """A real sprite reported, the same bytes again (one image, one queue row, two reports),
    then junk refused with ingest's reason and a non-zero exit; nothing written for it."""
    data = tmp_path / "data"
    env = os.environ | {"SPRITESAFE_DATA_DIR": str(data), "COLUMNS": "200"}

    def report(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [SPRITESAFE, "report", *args], env=env, capture_output=True, text=True
        )

    picture = tmp_path / "heart.png"
    picture.write_bytes(_sprite_png(1, red=True))
    first = report(str(picture), "--expected", "explicit", "--note", "a red heart", "--json")
    assert first.returncode == 0, first.stderr
    made = json.loads(first.stdout)
    assert made["new_image"] and made["new_item"] and made["reports"] == 1
    assert made["status"] == "open"

    copy = tmp_path / "copy.png"
    copy.write_bytes(picture.read_bytes())
    again = report(str(copy), "--expected", "suggestive", "--reporter", "bo")
    assert again.returncode == 0, again.stderr
    assert f"added to the open item {made['queue_id']} (2 reports)" in again.stdout

    junk = tmp_path / "junk.png"
    junk.write_bytes(b"this is not an image, whatever its name says")
    refused = report(str(junk), "--expected", "safe")
    assert refused.returncode != 0
    assert "not_an_image" in refused.stderr

    settings = load_settings(data_dir=data)
    (item,) = _queue(settings)
    assert item.reason == REASON and item.status == "open" and item.priority == 0.75
    assert item.detail["expected"] == "explicit" and item.detail["note"] == "a red heart"
    assert item.detail["count"] == 2
    assert [r["expected"] for r in item.detail["reports"]] == ["explicit", "suggestive"]
    assert item.detail["reports"][1]["reporter"] == "bo"
    assert _count(settings, images) == 1  # the junk was not recorded
    with open_workspace(settings) as ws, ws.catalog.read() as conn:
        items = conn.execute(
            sa.select(source_items.c.locator, source_items.c.image_id, sources.c.name)
            .join(sources, sources.c.id == source_items.c.source_id)
            .order_by(source_items.c.id)
        ).all()
    assert [(i.name, i.image_id) for i in items] == [("reports", item.image_id)] * 2
    assert len({i.locator for i in items}) == 2  # each report is its own item


def test_a_known_image_is_reported_not_copied(tmp_path: Path) -> None:
    """Bytes already in the catalog (ingested) queue that image; a decision is a human label;
    a report after the decision is recorded without reopening the item."""
    settings = load_settings(data_dir=tmp_path / "data", ingest={"workers": 1})
    folder = tmp_path / "sprites"
    folder.mkdir()
    for i in range(3):
        (folder / f"{i}.png").write_bytes(_sprite_png(10 + i))
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        with ws.catalog.read() as conn:
            ids = list(conn.execute(sa.select(images.c.id)).scalars())
        data = (folder / "1.png").read_bytes()
        result = report_image(ws.catalog, ws.blobs, settings, data, "suggestive", "  hm\n", "ana")
        assert result.image_id in ids and not result.new_image and result.new_item
        with pytest.raises(ValueError, match="unknown expectation"):
            report_image(ws.catalog, ws.blobs, settings, data, "nsfw", None, "ana")
        broken = b"\x89PNG\r\n\x1a\n garbage"
        with pytest.raises(Rejected) as rejected:
            report_image(ws.catalog, ws.blobs, settings, broken, "safe", None, "ana")
        assert rejected.value.reason == "truncated"
        decide(ws.catalog, result.queue_id, "ana", "suggestive")
        later = report_image(ws.catalog, ws.blobs, settings, data, "explicit", None, "bo")
        assert later.queue_id == result.queue_id and later.status == "decided"
        assert later.reports == 2 and not later.new_item
    assert _count(settings, images) == 3
    (label,) = _human_labels(settings)
    assert (label.image_id, label.category, label.selection) == (
        result.image_id,
        "suggestive",
        REASON,
    )
    (item,) = _queue(settings)
    assert item.status == "decided" and item.detail["note"] == "hm"


def test_the_report_gate_and_its_rate() -> None:
    origins = ["http://127.0.0.1:9000"]
    bearer = f"Bearer {TOKEN}"

    def status(token: str, origin: str | None, authorization: str | None) -> int:
        refused = report_refusal(token, origins, origin, authorization)
        return 0 if refused is None else refused[0]

    assert status("", None, bearer) == 404  # reports are off
    assert status(TOKEN, None, None) == 401
    assert status(TOKEN, None, "Basic " + TOKEN) == 401
    assert status(TOKEN, None, "Bearer nope") == 403
    assert status(TOKEN, None, bearer) == 0  # not a browser: the token decides
    assert status(TOKEN, "http://127.0.0.1:9000", bearer) == 0
    for origin in ("http://127.0.0.1:9001", "https://127.0.0.1:9000", "null"):
        assert status(TOKEN, origin, bearer) == 403, origin
    assert report_refusal(TOKEN, ["*"], "https://any.example", bearer) is None

    now = [0.0]
    limit = RateLimit(per_minute=6, burst=2, clock=lambda: now[0])
    assert [limit.take("a"), limit.take("a")] == [0.0, 0.0]
    assert limit.take("a") == pytest.approx(10.0)  # one report per 10 s
    assert limit.take("b") == 0.0  # per client
    now[0] = 10.0
    assert limit.take("a") == 0.0 and limit.take("a") > 0


@contextmanager
def _review_server(settings: Settings, port: int | None = None) -> Iterator[str]:
    """The review app on 127.0.0.1 (a real uvicorn server, in a thread)."""
    port = port or free_port()
    ws = open_workspace(settings)
    config = uvicorn.Config(
        create_app(ws.catalog, ws.blobs, Policy.serving("127.0.0.1", []), settings),
        host="127.0.0.1",
        port=port,
        log_level="warning",
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started and time.monotonic() < deadline:
        time.sleep(0.05)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(10)
        ws.close()


def _reporting(tmp_path: Path, origins: list[str], **review: Any) -> Settings:
    config = {"report_token": TOKEN, "report_origins": origins, **review}
    return load_settings(data_dir=tmp_path / "data", review=config)


def test_report_api(tmp_path: Path) -> None:
    page = "http://127.0.0.1:9000"  # the web bundle's origin
    settings = _reporting(tmp_path, [page], report_max_bytes=8192)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    good = _sprite_png(3, red=True)
    note = "clearly <b>not</b> safe"
    form = {"expected": "explicit", "note": note, "label": "safe", "model_id": "m-1"}
    with _review_server(settings) as url, httpx.Client(base_url=url) as client:
        api = "/api/report"
        files = {"image": ("s.png", good, "image/png")}
        missing = client.post(api, files=files, data=form)
        assert missing.status_code == 401 and "token" in missing.json()["detail"]
        wrong = client.post(api, files=files, data=form, headers={"Authorization": "Bearer x"})
        assert wrong.status_code == 403
        foreign = client.post(
            api, files=files, data=form, headers=auth | {"Origin": "http://evil.example"}
        )
        assert foreign.status_code == 403 and "access-control-allow-origin" not in foreign.headers

        # Preflight: the configured origin only, and on this route only.
        asked = {"Origin": page, "Access-Control-Request-Method": "POST"}
        preflight = client.options(api, headers=asked)
        assert preflight.status_code == 204
        assert preflight.headers["access-control-allow-origin"] == page
        assert "authorization" in preflight.headers["access-control-allow-headers"].lower()
        assert "access-control-allow-credentials" not in preflight.headers
        other = client.options(api, headers=asked | {"Origin": "http://evil.example"})
        assert other.status_code == 403
        assert "access-control-allow-origin" not in client.options("/", headers=asked).headers
        # Every other route keeps its rules: a cross-origin POST is still refused.
        crossed = client.post(
            "/decide", data={"item": "1", "choice": "safe"}, headers={"Origin": page}
        )
        assert crossed.status_code == 403 and crossed.text == "cross-site request refused"
        assert "access-control-allow-origin" not in crossed.headers

        # Too large: refused by the declared length, and while reading a body that has none.
        big = {"image": ("big.png", b"\x89PNG" + b"\0" * 9000, "image/png")}
        large = client.post(api, files=big, data=form, headers=auth)
        assert large.status_code == 413 and "report_max_bytes" in large.json()["detail"]
        chunks = (b"x" * 1024 for _ in range(16))
        streamed = client.post(
            api, content=chunks, headers=auth | {"Content-Type": "multipart/form-data; b=x"}
        )
        assert streamed.status_code == 413

        junk = client.post(
            api,
            files={"image": ("j.png", b"<html>hi</html>", "image/png")},
            data=form,
            headers=auth,
        )
        assert junk.status_code == 422
        assert junk.json() == {"error": "not_an_image", "detail": "HTML document"}
        unknown = client.post(api, files=files, data=form | {"expected": "nsfw"}, headers=auth)
        assert unknown.status_code == 400 and "unknown expectation" in unknown.json()["detail"]
        bare = client.post(api, data=form, headers=auth)
        assert bare.status_code == 400 and "image" in bare.json()["detail"]

        done = client.post(api, files=files, data=form, headers=auth | {"Origin": page})
        assert done.status_code == 200, done.text
        assert done.headers["access-control-allow-origin"] == page
        assert done.json()["queued"] and done.json()["reports"] == 1

        # The review page lists the reason and shows what the user expects, and why.
        shown = client.get("/", params={"reason": REASON}).text
        assert f'<option value="{REASON}" selected>' in shown
        assert f'<span class="reason" id="reason">{REASON}</span>' in shown
        assert '<strong class="expected">explicit</strong>' in shown
        assert "(the model said safe)" in shown
        assert "clearly &lt;b&gt;not&lt;/b&gt; safe" in shown and note not in shown

    (item,) = _queue(settings)
    assert item.reason == REASON and item.model_id == "m-1"
    assert item.detail["expected"] == "explicit" and item.detail["note"] == note
    assert item.detail["reporter"] == page and item.detail["reports"][0]["label"] == "safe"
    with open_workspace(settings) as ws:
        decide(ws.catalog, item.id, "ana", "explicit")
    (label,) = _human_labels(settings)
    assert (label.image_id, label.category, label.selection) == (item.image_id, "explicit", REASON)


def test_report_api_rate_limit(tmp_path: Path) -> None:
    settings = _reporting(tmp_path, [], report_burst=2, report_per_minute=1)
    auth = {"Authorization": f"Bearer {TOKEN}"}
    with _review_server(settings) as url, httpx.Client(base_url=url) as client:
        answers = [
            client.post(
                "/api/report",
                files={"image": ("s.png", _sprite_png(20 + i), "image/png")},
                data={"expected": "safe"},
                headers=auth,
            )
            for i in range(3)
        ]
    assert [a.status_code for a in answers] == [200, 200, 429]
    assert answers[2].json()["error"] == "rate_limited"
    assert 0 < int(answers[2].headers["retry-after"]) <= 60
    assert len(_queue(settings)) == 2


def test_the_report_token_is_never_the_page_token(tmp_path: Path) -> None:
    settings = _reporting(tmp_path, [])
    with open_workspace(settings) as ws, pytest.raises(ValueError, match="must not be"):
        create_app(ws.catalog, ws.blobs, Policy.serving("0.0.0.0", [], TOKEN), settings)


@pytest.fixture
def int8(tiny_levels: tuple[Settings, Path]) -> Path:
    return tiny_levels[1]


@pytest.mark.slow
def test_wrong_button_reports_to_the_review_server(int8: Path, tmp_path: Path) -> None:
    """The demo page (one origin) posts a dropped sprite and the chosen expectation to the
    review server (another port: another origin); the queue row appears, a decision labels."""
    from playwright.sync_api import sync_playwright

    site_port, review_port = free_port(), free_port()
    review = f"http://127.0.0.1:{review_port}"
    build_web(int8, tmp_path / "site", report_url=f"{review}/api/report", report_token=TOKEN)
    handler = functools.partial(
        http.server.SimpleHTTPRequestHandler, directory=str(tmp_path / "site")
    )
    site = http.server.ThreadingHTTPServer(("127.0.0.1", site_port), handler)
    threading.Thread(target=site.serve_forever, daemon=True).start()
    picture = tmp_path / "reported.png"
    picture.write_bytes(_sprite_png(5, red=True))
    settings = _reporting(tmp_path, [f"http://127.0.0.1:{site_port}"])
    visited: list[str] = []
    try:
        with _review_server(settings, review_port), sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium",
                args=["--no-sandbox", "--disable-gpu", "--disable-background-networking"],
            )
            page = browser.new_page()
            errors: list[str] = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.on("request", lambda request: visited.append(request.url))
            page.goto(f"http://127.0.0.1:{site_port}/index.html")
            page.wait_for_function("document.getElementById('status').textContent === 'ready'")
            page.set_input_files("#files", [str(picture)])
            page.wait_for_selector("#out li .wrong")
            shown = page.get_attribute("#out li", "data-label")
            assert page.is_hidden("#out li .report-form")
            page.click("#out li .wrong")
            page.select_option("#out li .expected", "suggestive")
            page.fill("#out li .report-note", "only a red square")
            page.click("#out li .send")
            page.wait_for_function(
                "(document.querySelector('#out li').dataset.report || '').startsWith('reported')"
            )
            assert page.inner_text("#out li .report-status") == "reported: thanks"
            assert page.is_disabled("#out li .wrong")
            assert not errors, errors
            browser.close()
    finally:
        site.shutdown()

    (item,) = _queue(settings)
    assert item.reason == REASON and item.status == "open"
    detail = item.detail
    assert (detail["expected"], detail["note"]) == ("suggestive", "only a red square")
    assert detail["reporter"] == f"http://127.0.0.1:{site_port}"
    assert detail["reports"][0]["label"] == shown
    with open_workspace(settings) as ws:
        with ws.catalog.read() as conn:
            stored = conn.execute(
                sa.select(images.c.sha256, images.c.blob_key).where(images.c.id == item.image_id)
            ).one()
        assert ws.blobs.get(stored.blob_key) == picture.read_bytes()  # the very bytes dropped
        decide(ws.catalog, item.id, "ana", "suggestive")
    (label,) = _human_labels(settings)
    assert (label.image_id, label.category, label.selection) == (
        item.image_id,
        "suggestive",
        REASON,
    )
    # The page's requests carried no score or label in a URL.
    report_urls = [u for u in visited if u.startswith(review)]
    assert report_urls == [f"{review}/api/report"]
    for url in visited:
        assert not urlsplit(url).query and not urlsplit(url).fragment, url
