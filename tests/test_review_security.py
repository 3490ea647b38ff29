"""The review page's security policy as a function of the request's headers (review.security),
and the remote mode end to end: `spritesafe review --host 0.0.0.0` opened in Chromium under a
non-loopback name, with the token, a decision and an undo."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest
import sqlalchemy as sa

from review.security import LOOPBACK, Entry, Policy, refusal, split_host, token_entry

SPRITESAFE = str(Path(sys.executable).with_name("spritesafe"))
LOCAL = Policy.serving("127.0.0.1", [])


def test_split_host() -> None:
    assert split_host("127.0.0.2:8765") == ("127.0.0.2", 8765)
    assert split_host("Review.Example") == ("review.example", None)
    assert split_host("[::1]:80") == ("[::1]", 80)
    assert split_host("[::1]") == ("[::1]", None)  # was cut to "[:" by rsplit(":")


def test_policies_for_each_binding() -> None:
    assert Policy(frozenset(LOOPBACK), None) == LOCAL
    anywhere = Policy.serving("0.0.0.0", [])
    assert anywhere.hosts is None and anywhere.token
    named = Policy.serving("0.0.0.0", ["Review.Example", "127.0.0.2"], token="t")
    assert named.hosts == frozenset({"review.example", "127.0.0.2", *LOOPBACK})
    own = Policy.serving("192.168.1.5", [], token="t")
    assert own.hosts is not None and "192.168.1.5" in own.hosts


def test_host_rule() -> None:
    assert refusal(LOCAL, "GET", "127.0.0.1:8765", None, None) is None
    assert refusal(LOCAL, "GET", "evil.example:8765", None, None) == (400, "unknown host")
    assert refusal(LOCAL, "GET", "", None, None) == (400, "unknown host")
    anywhere = Policy.serving("0.0.0.0", [])
    assert refusal(anywhere, "GET", "evil.example:8765", None, None) is None  # the token guards


@pytest.mark.parametrize(
    ("origin", "site", "refused"),
    [
        (None, None, False),  # not a browser (curl): CSRF token and cookie still apply
        ("http://127.0.0.2:8765", "same-origin", False),
        ("http://127.0.0.2:8765", "cross-site", True),
        ("http://127.0.0.2:9999", None, True),  # another port: another site
        ("http://127.0.0.2", None, True),  # port 80
        ("https://127.0.0.2:8765", None, True),
        ("http://evil.example:8765", None, True),
        ("null", None, True),
    ],
)
def test_origin_must_be_this_page_port_included(
    origin: str | None, site: str | None, refused: bool
) -> None:
    for policy in (Policy.serving("0.0.0.0", [], "t"), Policy.serving("0.0.0.0", ["127.0.0.2"])):
        answer = refusal(policy, "POST", "127.0.0.2:8765", origin, site)
        assert (answer == (403, "cross-site request refused")) is refused
        # GETs carry no decision: the Origin rule is for POSTs.
        assert refusal(policy, "GET", "127.0.0.2:8765", origin, site) is None


def test_token_entry() -> None:
    policy = Policy(None, "s3cret")
    assert token_entry(LOCAL, None, None) is Entry.PASS
    assert token_entry(policy, None, None) is Entry.REFUSE
    assert token_entry(policy, "wrong", "") is Entry.REFUSE
    assert token_entry(policy, "s3cret", None) is Entry.ENTER
    assert token_entry(policy, None, "s3cret") is Entry.PASS
    assert token_entry(policy, "日本語", "日本語") is Entry.REFUSE


@pytest.mark.slow
def test_remote_review_in_a_real_browser(review_data: Path, tmp_path: Path) -> None:
    """Bound to every address, opened as http://127.0.0.2:PORT (a configured name): the token,
    a reviewer name, a decision and an undo, all from Chromium; the refusals still hold."""
    from playwright.sync_api import sync_playwright

    from tests.helpers import free_port

    port = free_port()
    env = os.environ | {
        "SPRITESAFE_DATA_DIR": str(review_data),
        "SPRITESAFE_REVIEW__HOSTS": '["127.0.0.2"]',
        "COLUMNS": "300",
        "PYTHONUNBUFFERED": "1",  # the URL line arrives before the server blocks
    }
    server = subprocess.Popen(
        [SPRITESAFE, "review", "--host", "0.0.0.0", "--port", str(port)],
        env=env,
        stderr=subprocess.PIPE,  # where the CLI says what it does
        text=True,
    )
    try:
        assert server.stderr is not None
        line = server.stderr.readline()
        match = re.search(r"(http://127\.0\.0\.2:\d+/\?token=\S+)", line)
        assert match, line
        url = match.group(1)
        base = url.split("?")[0].rstrip("/")
        deadline = time.monotonic() + 30
        while True:
            try:
                httpx.get(base + "/", timeout=2)
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline, "the review server did not start"
                time.sleep(0.2)
        # Refusals that held before still hold in remote mode.
        assert httpx.get(base + "/").status_code == 401  # no token
        evil = httpx.get(url.replace("127.0.0.2", "127.0.0.1"), headers={"host": "evil.example"})
        assert evil.status_code == 400
        with sync_playwright() as pw:
            browser = pw.chromium.launch(
                executable_path="/usr/bin/chromium", args=["--no-sandbox", "--disable-gpu"]
            )
            page = browser.new_page()
            page.goto(url)  # the token, once: kept in a cookie, dropped from the URL
            assert "token" not in page.url
            page.fill("#reviewer", "remote reviewer")
            with page.expect_navigation():
                page.click("text=set")
            first = int(page.get_attribute("#decide-form input[name=item]", "value") or 0)
            assert first > 0
            with page.expect_navigation():
                page.keyboard.press("2")  # suggestive
            assert _item(review_data, first) == ("decided", "remote reviewer")
            with page.expect_navigation():
                page.keyboard.press("u")
            assert _item(review_data, first) == ("open", None)
            page.screenshot(path=str(tmp_path / "remote.png"), full_page=True)
            cookies = {c["name"]: c["value"] for c in page.context.cookies()}
            browser.close()
        # A form posted from another port of this machine is another site.
        forged = httpx.post(
            base + "/decide",
            data={"item": first, "choice": "safe", "csrf": cookies["csrf"]},
            cookies=cookies,
            headers={"origin": f"http://127.0.0.2:{port + 1}"},
        )
        assert forged.status_code == 403
        assert _item(review_data, first) == ("open", None)
    finally:
        server.terminate()
        server.wait(10)
    assert (tmp_path / "remote.png").stat().st_size > 5000
    from corpus.catalog import labels, open_catalog

    catalog = open_catalog(f"sqlite:///{review_data / 'catalog.db'}")
    with catalog.read() as conn:
        rows = conn.execute(
            sa.select(labels.c.category).where(labels.c.model == "remote reviewer")
        ).scalars()
        assert list(rows) == ["suggestive", "retract"]
    catalog.dispose()


@pytest.fixture
def review_data(tmp_path: Path) -> Path:
    """A catalog of a few generated sprites, each queued for review."""
    import numpy as np

    from corpus.catalog import images, insert_ignore, review_queue, utcnow
    from corpus.ingest import ingest
    from corpus.sources import parse_source
    from corpus.workspace import open_workspace
    from spritesafe.config import load_settings
    from tests.helpers import png

    folder = tmp_path / "sprites"
    folder.mkdir()
    for n in range(6):
        pixels = np.full((16, 16, 4), 255, dtype=np.uint8)
        pixels[4:12, 2 + n : 10 + n, :3] = (40 * n, 200 - 30 * n, 90)
        (folder / f"{n}.png").write_bytes(png(pixels))
    settings = load_settings(data_dir=tmp_path / "data", ingest={"workers": 1})
    with open_workspace(settings) as ws:
        ingest(ws.catalog, ws.blobs, [parse_source(str(folder), settings)], settings)
        with ws.catalog.write() as conn:
            ids = conn.execute(sa.select(images.c.id)).scalars().all()
            rows = [
                {"image_id": i, "reason": "audit", "priority": 1.0, "status": "open"}
                | {"created_at": utcnow()}
                for i in ids
            ]
            insert_ignore(conn, review_queue, rows, ["image_id", "reason"])
    return tmp_path / "data"


def _item(data: Path, queue_id: int) -> tuple[str, str | None]:
    from corpus.catalog import open_catalog, review_queue

    catalog = open_catalog(f"sqlite:///{data / 'catalog.db'}")
    with catalog.read() as conn:
        row = conn.execute(sa.select(review_queue).where(review_queue.c.id == queue_id)).one()
    catalog.dispose()
    return row.status, row.decided_by
