"""HTTP fetching (corpus.fetch) and the URL source (corpus.sources.web) against a real server.

The server is a `ThreadingHTTPServer` on 127.0.0.1 in a background thread. Every test
registers the routes it needs; the server logs each request (path, headers, arrival time) and
tracks the most requests it had in flight at once, so the tests assert on what actually went
over the wire, not only on what the fetcher reports.
"""

from __future__ import annotations

import io
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from itertools import pairwise
from pathlib import Path
from typing import Any

import pytest
from PIL import Image

from corpus.fetch import FetchError, FetchResult, Previous, fetch_bytes, fetch_urls
from corpus.sources.base import Item, Known, Skip, Unchanged
from corpus.sources.web import UrlSource, read_url_list
from spritesafe.config import HttpSettings

pytestmark = pytest.mark.timeout(60)

ETAG = '"sprite-v1"'
LAST_MODIFIED = "Wed, 01 Jan 2025 00:00:00 GMT"


# --------------------------------------------------------------------------- test server


@dataclass
class Reply:
    status: int = 200
    body: bytes = b""
    headers: dict[str, str] = field(default_factory=dict)
    delay: float = 0.0  # seconds to wait before answering (cut short on server shutdown)
    framing: str = "length"  # "length": Content-Length; "close": HTTP/1.0-style; "chunked"


@dataclass
class Request:
    path: str
    headers: dict[str, str]  # lower-case names
    arrived: float  # time.monotonic() when the handler started
    n: int  # how many requests for this path came before this one
    reply_headers: dict[str, str] = field(default_factory=dict)  # lower-case names
    body_sent: int = 0  # body bytes the handler wrote


Route = Reply | Callable[[Request], Reply]


class Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: SpriteServer
    _reply_headers: dict[str, str] | None = None  # where send_header records, per reply

    def do_GET(self) -> None:
        app = self.server
        request = app.enter(self.path, {k.lower(): v for k, v in self.headers.items()})
        try:
            reply = app.resolve(request)
            if reply.delay:
                app.stop.wait(reply.delay)
            self._send(reply, request)
        except (BrokenPipeError, ConnectionResetError):
            self.close_connection = True  # the client gave up (timeout, size cap)
        finally:
            app.leave()

    def send_header(self, keyword: str, value: str) -> None:
        if self._reply_headers is not None:
            self._reply_headers[keyword.lower()] = value
        super().send_header(keyword, value)

    def _send(self, reply: Reply, request: Request) -> None:
        self._reply_headers = request.reply_headers
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        no_body = reply.status in (204, 304)
        body = b"" if no_body else reply.body
        if no_body:
            pass  # a 304 has no body and needs no framing
        elif reply.framing == "length":
            if not any(name.lower() == "content-length" for name in reply.headers):
                self.send_header("Content-Length", str(len(body)))
        elif reply.framing == "chunked":
            self.send_header("Transfer-Encoding", "chunked")
        else:  # close-delimited: no length, the end of the body is the end of the connection
            self.send_header("Connection", "close")
            self.close_connection = True
        self.end_headers()
        step = 4096
        for start in range(0, len(body), step):
            piece = body[start : start + step]
            if reply.framing == "chunked":
                self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            else:
                self.wfile.write(piece)
            request.body_sent += len(piece)
            self.wfile.flush()
        if reply.framing == "chunked" and not no_body:
            self.wfile.write(b"0\r\n\r\n")
        self.wfile.flush()

    def log_message(self, format: str, *args: Any) -> None:
        pass  # keep pytest output clean


class SpriteServer(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), Handler)
        self.routes: dict[str, Route] = {}
        self.requests: list[Request] = []
        self.stop = threading.Event()
        self._lock = threading.Lock()
        self._in_flight = 0
        self.max_in_flight = 0

    def handle_error(self, request: Any, client_address: Any) -> None:
        # A client that stops reading (the size cap, a timeout) resets the connection on
        # purpose: not worth a traceback in the test output.
        if not isinstance(sys.exc_info()[1], ConnectionError):
            super().handle_error(request, client_address)

    @property
    def origin(self) -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}"

    def url(self, path: str) -> str:
        return self.origin + path

    def enter(self, path: str, headers: dict[str, str]) -> Request:
        with self._lock:
            n = sum(1 for r in self.requests if r.path == path)
            request = Request(path, headers, time.monotonic(), n)
            self.requests.append(request)
            self._in_flight += 1
            self.max_in_flight = max(self.max_in_flight, self._in_flight)
        return request

    def leave(self) -> None:
        with self._lock:
            self._in_flight -= 1

    def resolve(self, request: Request) -> Reply:
        route = self.routes.get(request.path)
        if route is None:
            return Reply(404, b"not found", {"Content-Type": "text/plain"})
        return route(request) if callable(route) else route

    def hits(self, path: str) -> list[Request]:
        with self._lock:
            return [r for r in self.requests if r.path == path]


@pytest.fixture
def server() -> Iterator[SpriteServer]:
    httpd = SpriteServer()
    thread = threading.Thread(target=httpd.serve_forever, kwargs={"poll_interval": 0.05})
    thread.start()
    try:
        yield httpd
    finally:
        httpd.stop.set()  # wake handlers still sleeping in a slow reply
        httpd.shutdown()
        httpd.server_close()
        thread.join(timeout=5)


# --------------------------------------------------------------------------- helpers


def sprite_png(seed: int = 0) -> bytes:
    """A real 16x16 RGBA sprite: transparent background, a coloured body, an outline."""
    palette = [(220, 40, 40, 255), (40, 180, 60, 255), (40, 80, 220, 255), (250, 210, 60, 255)]
    image = Image.new("RGBA", (16, 16), (0, 0, 0, 0))
    body = palette[seed % len(palette)]
    accent = palette[(seed + 1) % len(palette)]
    for y in range(3, 13):
        for x in range(3, 13):
            edge = x in (3, 12) or y in (3, 12)
            image.putpixel((x, y), (0, 0, 0, 255) if edge else body)
    image.putpixel((6, 6), accent)
    image.putpixel((9, 6), accent)
    out = io.BytesIO()
    image.save(out, format="PNG")
    return out.getvalue()


def png_reply(seed: int = 0, **headers: str) -> Reply:
    return Reply(200, sprite_png(seed), {"Content-Type": "image/png", **headers})


def conditional(body: bytes, etag: str = ETAG, last_modified: str = LAST_MODIFIED) -> Route:
    """A resource with validators that answers 304 to a matching conditional request."""

    def route(request: Request) -> Reply:
        if (
            request.headers.get("if-none-match") == etag
            or request.headers.get("if-modified-since") == last_modified
        ):
            return Reply(304, headers={"ETag": etag, "Last-Modified": last_modified})
        headers = {"Content-Type": "image/png", "ETag": etag, "Last-Modified": last_modified}
        return Reply(200, body, headers)

    return route


def sequence(*replies: Reply) -> Route:
    """The n-th request gets the n-th reply; the last one repeats."""

    def route(request: Request) -> Reply:
        return replies[min(request.n, len(replies) - 1)]

    return route


def settings(**overrides: Any) -> HttpSettings:
    values: dict[str, Any] = {
        "concurrency": 4,
        "per_host_rps": 1000.0,
        "timeout_s": 5.0,
        "retries": 2,
        "backoff_s": 0.05,
        "max_bytes": 1_000_000,
        "respect_robots": False,
    }
    values.update(overrides)
    return HttpSettings(**values)


def fetch_one(url: str, http: HttpSettings, previous: Previous | None = None) -> FetchResult:
    results = fetch_urls([url], {url: previous} if previous else {}, http)
    assert len(results) == 1
    assert results[0].url == url
    return results[0]


def image_paths(server: SpriteServer) -> list[str]:
    return [r.path for r in server.requests if r.path != "/robots.txt"]


# --------------------------------------------------------------------------- plain fetch


def test_plain_image_fetch_returns_exact_bytes(server: SpriteServer) -> None:
    png = sprite_png(1)
    server.routes["/sprites/hero.png"] = Reply(200, png, {"Content-Type": "image/png"})

    result = fetch_one(server.url("/sprites/hero.png"), settings())

    assert result.outcome == "ok"
    assert result.reason is None
    assert result.data == png
    assert result.attempts == 1
    assert result.etag is None and result.last_modified is None
    with Image.open(io.BytesIO(result.data)) as image:
        assert image.size == (16, 16)
        assert image.mode == "RGBA"
    [request] = server.hits("/sprites/hero.png")
    assert request.headers["user-agent"] == settings().user_agent


# --------------------------------------------------------------------------- validators


def test_etag_and_last_modified_make_a_second_fetch_conditional(server: SpriteServer) -> None:
    png = sprite_png(2)
    server.routes["/cond.png"] = conditional(png)
    url = server.url("/cond.png")
    http = settings()

    first = fetch_one(url, http)
    assert first.outcome == "ok"
    assert first.data == png
    assert first.etag == ETAG
    assert first.last_modified == LAST_MODIFIED
    assert "if-none-match" not in server.hits("/cond.png")[0].headers

    second = fetch_one(url, http, Previous(first.etag, first.last_modified))

    assert second.outcome == "not_modified"
    assert second.reason is None
    assert second.data == b""
    assert second.etag == ETAG
    first_request, second_request = server.hits("/cond.png")
    assert first_request.body_sent == len(png)
    assert second_request.headers["if-none-match"] == ETAG
    assert second_request.headers["if-modified-since"] == LAST_MODIFIED
    assert second_request.body_sent == 0  # the 304 carried no body


def test_last_modified_alone_is_sent_as_if_modified_since(server: SpriteServer) -> None:
    server.routes["/lm.png"] = conditional(sprite_png(3))
    url = server.url("/lm.png")

    result = fetch_one(url, settings(), Previous(None, LAST_MODIFIED))

    assert result.outcome == "not_modified"
    [request] = server.hits("/lm.png")
    assert request.headers["if-modified-since"] == LAST_MODIFIED
    assert "if-none-match" not in request.headers


# --------------------------------------------------------------------------- robots.txt


def test_robots_disallow_rejects_without_requesting(server: SpriteServer) -> None:
    server.routes["/robots.txt"] = Reply(
        200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"}
    )
    server.routes["/public/a.png"] = png_reply(0)
    server.routes["/private/b.png"] = png_reply(1)

    results = fetch_urls(
        [server.url("/public/a.png"), server.url("/private/b.png")],
        {},
        settings(respect_robots=True),
    )

    public, private = results
    assert public.outcome == "ok"
    assert public.data == sprite_png(0)
    assert private.outcome == "rejected"
    assert private.reason == "robots_disallowed"
    assert private.data == b""
    assert server.hits("/private/b.png") == []
    assert image_paths(server) == ["/public/a.png"]


def test_robots_fetched_once_per_origin(server: SpriteServer) -> None:
    server.routes["/robots.txt"] = Reply(
        200, b"User-agent: *\nDisallow: /private/\n", {"Content-Type": "text/plain"}
    )
    paths = [f"/s/{i}.png" for i in range(10)] + [f"/private/{i}.png" for i in range(3)]
    for i, path in enumerate(paths):
        server.routes[path] = png_reply(i)

    results = fetch_urls([server.url(p) for p in paths], {}, settings(respect_robots=True))

    assert [r.outcome for r in results[:10]] == ["ok"] * 10
    assert [r.reason for r in results[10:]] == ["robots_disallowed"] * 3
    assert len(server.hits("/robots.txt")) == 1
    assert sorted(image_paths(server)) == sorted(paths[:10])
    # robots.txt comes before any image request
    assert server.requests[0].path == "/robots.txt"


def test_robots_404_allows_everything(server: SpriteServer) -> None:
    # No /robots.txt route: the server answers 404.
    paths = ["/a.png", "/private/b.png", "/deep/path/c.png"]
    for i, path in enumerate(paths):
        server.routes[path] = png_reply(i)

    results = fetch_urls([server.url(p) for p in paths], {}, settings(respect_robots=True))

    assert [r.outcome for r in results] == ["ok", "ok", "ok"]
    assert [r.data for r in results] == [sprite_png(i) for i in range(3)]
    assert len(server.hits("/robots.txt")) == 1
    assert sorted(image_paths(server)) == sorted(paths)


def test_robots_500_disallows_everything(server: SpriteServer) -> None:
    server.routes["/robots.txt"] = Reply(500, b"oops", {"Content-Type": "text/plain"})
    paths = ["/a.png", "/b.png", "/c.png"]
    for i, path in enumerate(paths):
        server.routes[path] = png_reply(i)
    http = settings(respect_robots=True, retries=1)

    results = fetch_urls([server.url(p) for p in paths], {}, http)

    assert [r.outcome for r in results] == ["rejected"] * 3
    assert [r.reason for r in results] == ["robots_disallowed"] * 3
    assert image_paths(server) == []
    # A 5xx may be retried, but robots.txt is still loaded once for the origin.
    assert 1 <= len(server.hits("/robots.txt")) <= http.retries + 1


# --------------------------------------------------------------------------- retries


def test_503_twice_then_200_is_retried(server: SpriteServer) -> None:
    png = sprite_png(0)
    unavailable = Reply(503, b"busy", {"Content-Type": "text/plain"})
    server.routes["/flaky.png"] = sequence(unavailable, unavailable, png_reply(0))

    result = fetch_one(server.url("/flaky.png"), settings(retries=3))

    assert result.outcome == "ok"
    assert result.data == png
    assert result.attempts == 3
    assert len(server.hits("/flaky.png")) == 3


def test_retry_after_is_honoured(server: SpriteServer) -> None:
    limited = Reply(429, b"slow down", {"Content-Type": "text/plain", "Retry-After": "1"})
    server.routes["/limited.png"] = sequence(limited, png_reply(0))

    started = time.monotonic()
    result = fetch_one(server.url("/limited.png"), settings(retries=2, backoff_s=0.05))
    elapsed = time.monotonic() - started

    assert result.outcome == "ok"
    assert result.attempts == 2
    first, second = server.hits("/limited.png")
    # The exponential backoff alone would wait ~0.05 s; Retry-After asks for 1 s.
    assert second.arrived - first.arrived >= 0.95
    assert elapsed >= 0.95


def test_permanent_500_gives_up_after_all_attempts(server: SpriteServer) -> None:
    server.routes["/broken.png"] = Reply(500, b"error", {"Content-Type": "text/plain"})

    result = fetch_one(server.url("/broken.png"), settings(retries=2))

    assert result.outcome == "rejected"
    assert result.reason == "http_error"
    assert "HTTP 500" in result.detail
    assert "after 3 attempts" in result.detail
    assert result.attempts == 3
    assert len(server.hits("/broken.png")) == 3


def test_404_is_not_retried(server: SpriteServer) -> None:
    result = fetch_one(server.url("/missing.png"), settings(retries=3))

    assert result.outcome == "rejected"
    assert result.reason == "http_error"
    assert "HTTP 404" in result.detail
    assert "attempts" not in result.detail
    assert result.attempts == 1
    assert len(server.hits("/missing.png")) == 1


# --------------------------------------------------------------------------- timeout


def test_slow_response_times_out(server: SpriteServer) -> None:
    server.routes["/slow.png"] = Reply(200, sprite_png(0), {"Content-Type": "image/png"}, 3.0)

    started = time.monotonic()
    result = fetch_one(server.url("/slow.png"), settings(timeout_s=0.5, retries=0))
    elapsed = time.monotonic() - started

    assert result.outcome == "rejected"
    assert result.reason == "timeout"
    assert result.attempts == 1
    assert 0.4 <= elapsed < 2.5
    assert len(server.hits("/slow.png")) == 1


# --------------------------------------------------------------------------- size cap


def test_declared_content_length_over_cap_is_rejected(server: SpriteServer) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(20_000)
    server.routes["/big.png"] = Reply(200, big, {"Content-Type": "image/png"})

    result = fetch_one(server.url("/big.png"), settings(max_bytes=10_000))

    assert result.outcome == "rejected"
    assert result.reason == "response_too_large"
    assert "Content-Length 20008" in result.detail
    assert result.data == b""
    assert result.attempts == 1


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_streamed_body_over_cap_is_rejected(server: SpriteServer, framing: str) -> None:
    big = b"\x89PNG\r\n\x1a\n" + bytes(64_000)
    server.routes["/stream.png"] = Reply(200, big, {"Content-Type": "image/png"}, framing=framing)
    # Sanity check: the same body under a larger cap is fetched completely.
    server.routes["/small.png"] = Reply(
        200, big[:5000], {"Content-Type": "image/png"}, framing=framing
    )
    http = settings(max_bytes=10_000)

    result = fetch_one(server.url("/stream.png"), http)
    small = fetch_one(server.url("/small.png"), http)

    assert result.outcome == "rejected"
    assert result.reason == "response_too_large"
    assert "max_bytes 10000" in result.detail
    assert result.attempts == 1
    [request] = server.hits("/stream.png")
    assert "content-length" not in request.reply_headers
    if framing == "chunked":
        assert request.reply_headers["transfer-encoding"] == "chunked"
    else:
        assert request.reply_headers["connection"] == "close"
    assert small.outcome == "ok"
    assert small.data == big[:5000]


# --------------------------------------------------------------------------- one URL (classify)


def test_fetch_bytes_returns_the_body_with_our_user_agent(server: SpriteServer) -> None:
    server.routes["/one.png"] = png_reply(4)
    server.routes["/page.html"] = Reply(200, b"<html></html>", {"Content-Type": "text/html"})

    assert fetch_bytes(server.url("/one.png"), settings()) == sprite_png(4)
    # No sniffing here: what the bytes are is the classifier's to say.
    assert fetch_bytes(server.url("/page.html"), settings()) == b"<html></html>"
    [request] = server.hits("/one.png")
    assert request.headers["user-agent"] == settings().user_agent
    with pytest.raises(FetchError, match="HTTP 404"):
        fetch_bytes(server.url("/missing.png"), settings())


def test_fetch_bytes_refuses_a_declared_length_over_the_cap(server: SpriteServer) -> None:
    server.routes["/big.png"] = Reply(200, b"\x89PNG\r\n\x1a\n" + bytes(20_000))

    with pytest.raises(FetchError, match="too large, Content-Length 20008 > 10000"):
        fetch_bytes(server.url("/big.png"), settings(max_bytes=10_000))


@pytest.mark.parametrize("framing", ["chunked", "close"])
def test_fetch_bytes_stops_reading_past_the_cap(server: SpriteServer, framing: str) -> None:
    """No length declared: the body is counted as it arrives, and the connection dropped once
    it passes max_bytes, long before the server could send all of it."""
    huge = b"\x89PNG\r\n\x1a\n" + bytes(32 * 2**20)
    server.routes["/huge.png"] = Reply(200, huge, {"Content-Type": "image/png"}, framing=framing)

    with pytest.raises(FetchError, match="too large, body over 10000 bytes"):
        fetch_bytes(server.url("/huge.png"), settings(max_bytes=10_000))

    [request] = server.hits("/huge.png")
    deadline = time.monotonic() + 10
    while server._in_flight and time.monotonic() < deadline:
        time.sleep(0.05)  # the handler notices the closed connection on a later write
    assert server._in_flight == 0
    assert request.body_sent < len(huge) // 2  # what the socket buffers took, not the body


# --------------------------------------------------------------------------- sniffing


def test_html_page_is_not_an_image(server: SpriteServer) -> None:
    page = b"<!DOCTYPE html><html><head><title>Gallery</title></head><body></body></html>"
    server.routes["/gallery"] = Reply(200, page, {"Content-Type": "text/html; charset=utf-8"})

    result = fetch_one(server.url("/gallery"), settings())

    assert result.outcome == "rejected"
    assert result.reason == "not_an_image"
    assert "text/html" in result.detail
    assert result.attempts == 1


def test_png_with_generic_content_type_is_accepted(server: SpriteServer) -> None:
    png = sprite_png(3)
    server.routes["/download"] = Reply(200, png, {"Content-Type": "application/octet-stream"})

    result = fetch_one(server.url("/download"), settings())

    assert result.outcome == "ok"
    assert result.data == png


def test_png_bytes_win_over_a_misleading_content_type(server: SpriteServer) -> None:
    png = sprite_png(2)
    server.routes["/lies.html"] = Reply(200, png, {"Content-Type": "text/html"})

    result = fetch_one(server.url("/lies.html"), settings())

    assert result.outcome == "ok"
    assert result.data == png


def test_svg_is_a_vector_image(server: SpriteServer) -> None:
    svg = (
        b'<?xml version="1.0"?>\n<svg xmlns="http://www.w3.org/2000/svg" width="16" '
        b'height="16"><rect width="16" height="16" fill="red"/></svg>'
    )
    server.routes["/icon.svg"] = Reply(200, svg, {"Content-Type": "image/svg+xml"})

    result = fetch_one(server.url("/icon.svg"), settings())

    assert result.outcome == "rejected"
    assert result.reason == "vector_image"


def test_empty_body_is_an_empty_file(server: SpriteServer) -> None:
    server.routes["/empty.png"] = Reply(200, b"", {"Content-Type": "image/png"})

    result = fetch_one(server.url("/empty.png"), settings())

    assert result.outcome == "rejected"
    assert result.reason == "empty_file"
    assert result.attempts == 1


def test_unknown_bytes_are_not_an_image(server: SpriteServer) -> None:
    server.routes["/blob.png"] = Reply(200, b"plain text, no image", {"Content-Type": "image/png"})

    result = fetch_one(server.url("/blob.png"), settings())

    assert result.outcome == "rejected"
    assert result.reason == "not_an_image"


def test_non_http_url_is_rejected_without_a_request(server: SpriteServer) -> None:
    result = fetch_one("ftp://127.0.0.1/sprite.png", settings())

    assert result.outcome == "rejected"
    assert result.reason == "bad_url"
    assert server.requests == []


def test_redirect_is_followed(server: SpriteServer) -> None:
    png = sprite_png(1)
    server.routes["/old.png"] = Reply(301, b"", {"Location": "/new.png"})
    server.routes["/new.png"] = Reply(200, png, {"Content-Type": "image/png"})

    result = fetch_one(server.url("/old.png"), settings())

    assert result.outcome == "ok"
    assert result.data == png
    assert [r.path for r in server.requests] == ["/old.png", "/new.png"]


def test_redirect_loop_is_rejected_without_retrying(server: SpriteServer) -> None:
    server.routes["/loop.png"] = Reply(302, b"", {"Location": "/loop.png"})

    result = fetch_one(server.url("/loop.png"), settings(retries=3))

    assert result.outcome == "rejected"
    assert result.reason == "http_error"
    assert "redirects" in result.detail
    assert result.attempts == 1
    assert len(server.hits("/loop.png")) == 6  # the first request and 5 redirects


def test_broken_content_encoding_rejects_only_that_url(server: SpriteServer) -> None:
    server.routes["/gz.png"] = Reply(200, b"not gzip at all", {"Content-Encoding": "gzip"})
    server.routes["/ok.png"] = png_reply(0)

    results = fetch_urls([server.url("/gz.png"), server.url("/ok.png")], {}, settings())

    broken, fine = results
    assert broken.outcome == "rejected"
    assert broken.reason == "http_error"
    assert "DecodingError" in broken.detail
    assert fine.outcome == "ok"
    assert fine.data == sprite_png(0)


@pytest.mark.parametrize(
    "bad", ["http://[::1/x.png", "http://127.0.0.1:99999/x.png", "http://exa\x00mple.test/x.png"]
)
def test_malformed_url_rejects_only_that_url(server: SpriteServer, bad: str) -> None:
    server.routes["/ok.png"] = png_reply(0)

    malformed, fine = fetch_urls([bad, server.url("/ok.png")], {}, settings())

    assert malformed.outcome == "rejected"
    assert malformed.reason == "bad_url"
    assert malformed.url == bad
    assert fine.outcome == "ok"


def test_unusable_robots_txt_disallows_without_crashing(server: SpriteServer) -> None:
    server.routes["/robots.txt"] = Reply(200, b"garbage", {"Content-Encoding": "gzip"})
    server.routes["/a.png"] = png_reply(0)

    result = fetch_one(server.url("/a.png"), settings(respect_robots=True, retries=0))

    assert result.outcome == "rejected"
    assert result.reason == "robots_disallowed"
    assert image_paths(server) == []


# --------------------------------------------------------------------------- politeness


def test_per_host_rate_limit_spaces_requests(server: SpriteServer) -> None:
    paths = [f"/rate/{i}.png" for i in range(6)]
    for i, path in enumerate(paths):
        server.routes[path] = png_reply(i)

    started = time.monotonic()
    results = fetch_urls(
        [server.url(p) for p in paths], {}, settings(per_host_rps=5.0, concurrency=6)
    )
    elapsed = time.monotonic() - started

    assert [r.outcome for r in results] == ["ok"] * 6
    arrivals = sorted(r.arrived for r in server.requests)
    assert len(arrivals) == 6
    gaps = [b - a for a, b in pairwise(arrivals)]
    # 0.2 s apart when sent; a loaded machine delays one arrival more than the next (0.169 s
    # was seen beside a training run), so each gap only has to be far from the unlimited ~0
    # and the span near five intervals.
    assert min(gaps) >= 0.1, gaps
    assert arrivals[-1] - arrivals[0] >= 5 * 0.18, gaps
    assert elapsed >= 5 * 0.18


def test_concurrency_is_bounded(server: SpriteServer) -> None:
    paths = [f"/slow/{i}.png" for i in range(6)]
    for i, path in enumerate(paths):
        server.routes[path] = Reply(200, sprite_png(i), {"Content-Type": "image/png"}, 0.3)

    results = fetch_urls([server.url(p) for p in paths], {}, settings(concurrency=2))

    assert [r.outcome for r in results] == ["ok"] * 6
    assert len(server.requests) == 6
    assert server.max_in_flight == 2


# --------------------------------------------------------------------------- UrlSource


def test_read_url_list_skips_comments_blanks_and_duplicates(tmp_path: Path) -> None:
    listing = tmp_path / "urls.txt"
    listing.write_text(
        "# sprites to fetch\n\n"
        "http://example.test/a.png\n"
        "   # indented comment\n"
        "  http://example.test/b.png  \n"
        "http://example.test/a.png\n"
        "\n",
        encoding="utf-8",
    )

    assert read_url_list(listing) == ["http://example.test/a.png", "http://example.test/b.png"]


def test_url_source_scan_yields_items_unchanged_and_skips(
    server: SpriteServer, tmp_path: Path
) -> None:
    new_png = sprite_png(0)
    plain_png = sprite_png(1)
    server.routes["/new.png"] = conditional(new_png, etag='"new-1"')
    server.routes["/plain.png"] = Reply(200, plain_png, {"Content-Type": "image/png"})
    server.routes["/known.png"] = conditional(sprite_png(2), etag='"known-7"')
    server.routes["/page.html"] = Reply(200, b"<html><body>hi</body></html>", {})
    server.routes["/commented.png"] = png_reply(3)
    new, plain, known, gone, page = (
        server.url(p) for p in ("/new.png", "/plain.png", "/known.png", "/gone.png", "/page.html")
    )
    listing = tmp_path / "urls.txt"
    listing.write_text(
        f"# pixel art\n{new}\n\n{plain}\n  # {server.url('/commented.png')} is commented out\n"
        f"{known}\n{new}\n{gone}\n{page}\n{plain}\n",
        encoding="utf-8",
    )
    source = UrlSource(settings(), list_file=listing)

    assert source.kind == "urls"
    assert source.name == f"urls:{listing.absolute()}"
    assert source.urls() == [new, plain, known, gone, page]

    entries = list(source.scan({known: Known("fp", etag='"known-7"')}))

    by_locator = {e.locator: e for e in entries}
    assert len(entries) == 5 == len(by_locator)
    item = by_locator[new]
    assert isinstance(item, Item)
    assert item.load() == new_png
    assert item.etag == '"new-1"'
    assert item.last_modified == LAST_MODIFIED
    assert item.fingerprint == f'etag="new-1"|lm={LAST_MODIFIED}'
    plain_item = by_locator[plain]
    assert isinstance(plain_item, Item)
    assert plain_item.load() == plain_png
    assert plain_item.fingerprint is None
    assert by_locator[known] == Unchanged(known)
    gone_skip = by_locator[gone]
    assert isinstance(gone_skip, Skip)
    assert gone_skip.reason == "http_error"
    assert "HTTP 404" in gone_skip.detail
    page_skip = by_locator[page]
    assert isinstance(page_skip, Skip)
    assert page_skip.reason == "not_an_image"
    # Duplicates are fetched once; commented-out URLs are not fetched at all.
    assert server.hits("/commented.png") == []
    for path in ("/new.png", "/plain.png", "/known.png", "/gone.png", "/page.html"):
        assert len(server.hits(path)) == 1, path
    assert server.hits("/known.png")[0].headers["if-none-match"] == '"known-7"'
    assert source.stats["http_ok"] == 2
    assert source.stats["http_not_modified"] == 1
    assert source.stats["http_rejected"] == 2
    assert source.stats["http_attempts"] == 5


def test_url_source_single_url(server: SpriteServer) -> None:
    png = sprite_png(3)
    server.routes["/one.png"] = Reply(200, png, {"Content-Type": "image/png"})
    url = server.url("/one.png")
    source = UrlSource(settings(), url=url)

    [entry] = list(source.scan({}))

    assert source.kind == "url" and source.name == url
    assert isinstance(entry, Item)
    assert entry.locator == url
    assert entry.load() == png


def test_url_source_needs_exactly_one_of_url_or_list(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="exactly one"):
        UrlSource(settings())
    with pytest.raises(ValueError, match="exactly one"):
        UrlSource(settings(), url="http://example.test/a.png", list_file=tmp_path / "x")
    missing = UrlSource(settings(), list_file=tmp_path / "missing.txt")
    with pytest.raises(FileNotFoundError):
        list(missing.scan({}))
