"""HTTP(S) fetching for URL sources: polite, bounded, resumable.

- bounded concurrency overall and a minimum interval per host (robots.txt Crawl-delay wins
  when longer);
- timeouts, retries with exponential backoff and jitter on connection errors, 429 and 5xx
  (Retry-After honoured, capped);
- a hard cap on response bytes (Content-Length checked first, then counted while streaming);
- content sniffing: the bytes decide what a response is, not its Content-Type;
- conditional requests with the ETag / Last-Modified from the previous run, so an unchanged
  URL costs one 304 and no body;
- robots.txt fetched once per origin and obeyed (4xx: allow all; 5xx or unreachable:
  disallow all, as RFC 9309 says).

`fetch_bytes` reads one URL a user named (classify) with the same client settings and byte cap.
"""

from __future__ import annotations

import asyncio
import random
import time
import urllib.robotparser
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from email.utils import parsedate_to_datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from spritesafe.config import HttpSettings
from spritesafe.decode import sniff

RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
MAX_RETRY_AFTER_S = 60.0


@dataclass(frozen=True)
class Previous:
    etag: str | None = None
    last_modified: str | None = None


@dataclass(frozen=True)
class FetchResult:
    url: str
    outcome: str  # ok, not_modified, rejected
    data: bytes = b""
    etag: str | None = None
    last_modified: str | None = None
    reason: str | None = None
    detail: str = ""
    attempts: int = 1


class HostLimiter:
    """At most one request start per `interval` seconds for each host."""

    def __init__(self, interval: float) -> None:
        self.interval = interval
        self._next: dict[str, float] = {}
        self._locks: dict[str, asyncio.Lock] = {}
        self.delays: dict[str, float] = {}  # per-host overrides (robots Crawl-delay)

    async def wait(self, host: str) -> None:
        lock = self._locks.setdefault(host, asyncio.Lock())
        async with lock:
            now = time.monotonic()
            start = max(now, self._next.get(host, now))
            self._next[host] = start + max(self.interval, self.delays.get(host, 0.0))
        if start > now:
            await asyncio.sleep(start - now)


class Fetcher:
    def __init__(self, settings: HttpSettings, client: httpx.AsyncClient | None = None) -> None:
        self.settings = settings
        self._client = client
        self._own_client = client is None
        self._semaphore = asyncio.Semaphore(settings.concurrency)
        self._limiter = HostLimiter(1.0 / settings.per_host_rps)
        self._robots: dict[str, urllib.robotparser.RobotFileParser | None] = {}
        self._robots_locks: dict[str, asyncio.Lock] = {}

    async def __aenter__(self) -> Fetcher:
        if self._client is None:
            self._client = httpx.AsyncClient(**_client_options(self.settings))
        return self

    async def __aexit__(self, *exc: object) -> None:
        if self._own_client and self._client is not None:
            await self._client.aclose()

    @property
    def client(self) -> httpx.AsyncClient:
        if self._client is None:
            raise RuntimeError("use `async with Fetcher(...)`")
        return self._client

    async def fetch_all(
        self, urls: Iterable[str], previous: Mapping[str, Previous]
    ) -> list[FetchResult]:
        tasks = [self.fetch(url, previous.get(url, Previous())) for url in urls]
        return list(await asyncio.gather(*tasks))

    async def fetch(self, url: str, previous: Previous = Previous()) -> FetchResult:
        try:  # a malformed URL must reject that URL, not crash the whole batch
            parts = urlsplit(url)
            _ = parts.port  # raises ValueError when out of range
            httpx.URL(url)
        except (ValueError, httpx.InvalidURL) as exc:
            return FetchResult(url, "rejected", reason="bad_url", detail=str(exc))
        if parts.scheme not in ("http", "https") or not parts.netloc:
            return FetchResult(url, "rejected", reason="bad_url", detail="not an http(s) URL")
        if self.settings.respect_robots and not await self._allowed(url):
            return FetchResult(url, "rejected", reason="robots_disallowed", detail="robots.txt")
        headers = {}
        if previous.etag:
            headers["If-None-Match"] = previous.etag
        if previous.last_modified:
            headers["If-Modified-Since"] = previous.last_modified
        async with self._semaphore:
            return await self._with_retries(url, headers)

    async def _with_retries(self, url: str, headers: dict[str, str]) -> FetchResult:
        host = urlsplit(url).netloc
        attempts = self.settings.retries + 1
        last = FetchResult(url, "rejected", reason="http_error")
        for attempt in range(1, attempts + 1):
            await self._limiter.wait(host)
            retry_after: float | None = None
            try:
                result, retry_after = await self._get(url, headers)
            except httpx.TimeoutException as exc:
                result = FetchResult(url, "rejected", reason="timeout", detail=repr(exc))
            except httpx.TransportError as exc:
                result = FetchResult(url, "rejected", reason="connection_error", detail=repr(exc))
            except (httpx.TooManyRedirects, httpx.DecodingError) as exc:
                return FetchResult(url, "rejected", reason="http_error", detail=repr(exc))
            if result.reason not in ("timeout", "connection_error", "retryable_status"):
                return _with_attempts(result, attempt)
            last = result
            if attempt < attempts:
                backoff = self.settings.backoff_s * 2 ** (attempt - 1)
                delay = retry_after if retry_after is not None else backoff
                await asyncio.sleep(delay * random.uniform(1.0, 1.25))
        if last.reason == "retryable_status":
            last = FetchResult(url, "rejected", reason="http_error", detail=last.detail)
        return _with_attempts(last, attempts, f" after {attempts} attempts")

    async def _get(self, url: str, headers: dict[str, str]) -> tuple[FetchResult, float | None]:
        """One GET. Returns the result and, for retryable statuses, the Retry-After delay."""

        def reject(reason: str, detail: str) -> tuple[FetchResult, float | None]:
            return FetchResult(url, "rejected", reason=reason, detail=detail), None

        max_bytes = self.settings.max_bytes
        async with self.client.stream("GET", url, headers=headers) as response:
            status = response.status_code
            etag = response.headers.get("ETag")
            modified = response.headers.get("Last-Modified")
            if status == 304:
                return FetchResult(url, "not_modified", etag=etag, last_modified=modified), None
            if status in RETRY_STATUS:
                retry_after = _retry_after(response.headers.get("Retry-After"))
                return reject("retryable_status", f"HTTP {status}")[0], retry_after
            if status != 200:
                return reject("http_error", f"HTTP {status}")
            too_large = _declared_too_large(response, max_bytes)
            if too_large:
                return reject("response_too_large", too_large)
            chunks: list[bytes] = []
            size = 0
            async for chunk in response.aiter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    return reject("response_too_large", f"body exceeded max_bytes {max_bytes}")
                chunks.append(chunk)
            data = b"".join(chunks)
            content_type = response.headers.get("Content-Type") or "none"
        kind = sniff(data)
        if not data:
            return reject("empty_file", "empty body")
        if kind is None or kind in ("svg", "html"):
            detail = f"Content-Type {content_type}; content looks like {kind or 'unknown'}"
            return reject("vector_image" if kind == "svg" else "not_an_image", detail)
        return FetchResult(url, "ok", data, etag=etag, last_modified=modified), None

    async def _allowed(self, url: str) -> bool:
        parts = urlsplit(url)
        origin = f"{parts.scheme}://{parts.netloc}"
        lock = self._robots_locks.setdefault(origin, asyncio.Lock())
        async with lock:
            if origin not in self._robots:
                self._robots[origin] = await self._load_robots(origin)
        parser = self._robots[origin]
        if parser is None:  # robots.txt unreachable or 5xx: assume complete disallow
            return False
        return parser.can_fetch(self.settings.user_agent, url)

    async def _load_robots(self, origin: str) -> urllib.robotparser.RobotFileParser | None:
        parser = urllib.robotparser.RobotFileParser()
        host = urlsplit(origin).netloc
        response: httpx.Response | None = None
        for attempt in range(self.settings.retries + 1):
            await self._limiter.wait(host)
            try:
                response = await self.client.get(f"{origin}/robots.txt")
            except httpx.RequestError:  # transport, redirect loop, bad Content-Encoding
                response = None
            if response is not None and response.status_code < 500:
                break
            if attempt < self.settings.retries:
                await asyncio.sleep(self.settings.backoff_s * 2**attempt)
        if response is None or response.status_code >= 500:
            return None
        if response.status_code >= 400:
            parser.parse([])  # no rules: everything allowed
            return parser
        parser.parse(response.text.splitlines())
        delay = parser.crawl_delay(self.settings.user_agent)
        if delay:
            self._limiter.delays[host] = float(delay)
        return parser


class FetchError(OSError):
    """One URL could not be fetched; the message says which and why. An OSError, so callers
    that read files and URLs alike handle both the same way."""


def _client_options(settings: HttpSettings) -> dict[str, Any]:
    """What every client we open shares: the user agent, the timeout, bounded redirects."""
    return {
        "timeout": settings.timeout_s,
        "follow_redirects": True,
        "max_redirects": 5,
        "headers": {"User-Agent": settings.user_agent},
    }


def _declared_too_large(response: httpx.Response, max_bytes: int) -> str | None:
    declared = response.headers.get("Content-Length")
    if declared and declared.isdigit() and int(declared) > max_bytes:
        return f"Content-Length {declared} > {max_bytes}"
    return None


def fetch_bytes(url: str, settings: HttpSettings) -> bytes:
    """The body of one URL the user named (classify), read synchronously and stopped as soon
    as it passes `max_bytes`. No robots.txt, retries or sniffing: those are for crawling
    sources; here a failure is reported, not retried. Raises FetchError."""
    max_bytes = settings.max_bytes
    try:
        with (
            httpx.Client(**_client_options(settings)) as client,
            client.stream("GET", url) as response,
        ):
            if not response.is_success:
                raise FetchError(f"{url}: HTTP {response.status_code}")
            too_large = _declared_too_large(response, max_bytes)
            if too_large:
                raise FetchError(f"{url}: response too large, {too_large}")
            chunks: list[bytes] = []
            size = 0
            for chunk in response.iter_bytes():
                size += len(chunk)
                if size > max_bytes:
                    raise FetchError(f"{url}: response too large, body over {max_bytes} bytes")
                chunks.append(chunk)
    except httpx.TimeoutException as exc:
        raise FetchError(f"{url}: timed out after {settings.timeout_s}s ({exc!r})") from exc
    except (httpx.HTTPError, httpx.InvalidURL) as exc:
        raise FetchError(f"{url}: {exc!r}") from exc
    return b"".join(chunks)


def _with_attempts(result: FetchResult, attempts: int, suffix: str = "") -> FetchResult:
    return FetchResult(
        result.url,
        result.outcome,
        result.data,
        result.etag,
        result.last_modified,
        result.reason,
        result.detail + suffix if result.outcome == "rejected" else result.detail,
        attempts,
    )


def _retry_after(value: str | None) -> float | None:
    if not value:
        return None
    try:
        seconds = float(value)
    except ValueError:
        try:
            seconds = parsedate_to_datetime(value).timestamp() - time.time()
        except (TypeError, ValueError):
            return None
    return min(max(seconds, 0.0), MAX_RETRY_AFTER_S)


def fetch_urls(
    urls: list[str], previous: Mapping[str, Previous], settings: HttpSettings
) -> list[FetchResult]:
    """Synchronous entry point: fetch a batch of URLs on a private event loop."""

    async def run() -> list[FetchResult]:
        async with Fetcher(settings) as fetcher:
            return await fetcher.fetch_all(urls, previous)

    return asyncio.run(run())
