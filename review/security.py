"""Who may talk to the review page: the Host names it answers to, where a POST may come from,
and the token a remote page asks for. Pure functions of the request's headers, so every rule
is tested without a server.

- **Host**: only the names the page is served under (the loopback names by default), which
  stops a DNS-rebinding page from reaching it; bound to every address with no names
  configured, any name may reach it, and the token guards it.
- **POST**: a browser says where a form came from. `Sec-Fetch-Site` must be same-origin (or
  absent: not a browser) and `Origin`, when sent, must be this very page: scheme, name *and
  port* of the Host the request was sent to (another port on the same machine is another
  site).
- **Token**: given once as `?token=`, then kept in a cookie (HttpOnly, SameSite=Strict).
- **Reports** (`POST /api/report`, and only that route): posted by the demo page of a web
  bundle, which is served from another origin, so the two rules above cannot hold there.
  The route has its own, narrower gate instead (see `report_refusal`): its own bearer token
  (it ships inside the bundle, so it is a key to this route alone, never the page's token),
  CORS for the configured origins only, and a per-client rate limit (`RateLimit`).
"""

from __future__ import annotations

import secrets
import threading
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from enum import Enum
from urllib.parse import urlsplit

LOOPBACK = ("127.0.0.1", "localhost", "[::1]")
ANY_ADDRESS = ("0.0.0.0", "::", "[::]")

# The page runs its own inline script and styles and loads only its own images; nothing may
# frame it (clickjacking) and no response is sniffed into another type.
HEADERS = {
    "X-Content-Type-Options": "nosniff",
    "Content-Security-Policy": (
        "default-src 'none'; img-src 'self'; style-src 'unsafe-inline'; "
        "script-src 'unsafe-inline'; form-action 'self'; base-uri 'none'; frame-ancestors 'none'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "same-origin",  # no-referrer would turn a form's Origin into "null"
}


@dataclass(frozen=True)
class Policy:
    hosts: frozenset[str] | None  # Host names answered (lower case); None: any
    token: str | None  # required on every request when set

    @classmethod
    def serving(cls, bind: str, names: list[str], token: str | None = None) -> Policy:
        """The policy for a page bound to `bind`: loopback alone needs no token; any other
        address answers to its own name, the configured `names` and the loopback names, and
        needs a token; every address with no names configured answers to any name."""
        local = bind in ("127.0.0.1", "localhost", "::1")
        if local:
            return cls(frozenset(LOOPBACK), None)
        token = token or secrets.token_urlsafe(16)
        if bind in ANY_ADDRESS and not names:
            return cls(None, token)
        own = [] if bind in ANY_ADDRESS else [f"[{bind}]" if ":" in bind else bind]
        return cls(frozenset(n.lower() for n in [*names, *own, *LOOPBACK]), token)


def split_host(value: str) -> tuple[str, int | None]:
    """'name:port' (a Host header, or an Origin's netloc) -> (name, port); IPv6 in brackets."""
    value = value.strip().lower()
    if value.startswith("["):
        name, _, rest = value.partition("]")
        name += "]"
        port = rest[1:] if rest.startswith(":") else ""
    else:
        name, _, port = value.partition(":")
    return name, int(port) if port.isdigit() else None


def _site(scheme: str, netloc: str) -> tuple[str, str, int]:
    name, port = split_host(netloc)
    return scheme, name, port if port is not None else (443 if scheme == "https" else 80)


def unknown_host(policy: Policy, host: str) -> bool:
    """The Host rule alone: the name is not one the page is served under."""
    name, _ = split_host(host)
    return not name or (policy.hosts is not None and name not in policy.hosts)


def refusal(
    policy: Policy,
    method: str,
    host: str,
    origin: str | None,
    fetch_site: str | None,
    scheme: str = "http",
) -> tuple[int, str] | None:
    """(status, why) when the request must be refused before it reaches a page, else None."""
    if unknown_host(policy, host):
        return 400, "unknown host"
    if method == "POST":
        if fetch_site not in (None, "same-origin", "none"):
            return 403, "cross-site request refused"
        if origin is not None:
            parts = urlsplit(origin)
            if _site(parts.scheme, parts.netloc) != _site(scheme, host):
                return 403, "cross-site request refused"
    return None


class Entry(Enum):
    PASS = "pass"  # the cookie holds the token (or none is needed)
    ENTER = "enter"  # ?token= is right: set the cookie and come back without it
    REFUSE = "refuse"


def token_entry(policy: Policy, given: str | None, cookie: str | None) -> Entry:
    if policy.token is None:
        return Entry.PASS
    if given is not None and same(given, policy.token):
        return Entry.ENTER
    return Entry.PASS if same(cookie or "", policy.token) else Entry.REFUSE


def same(a: str, b: str) -> bool:
    return secrets.compare_digest(a.encode(), b.encode())  # bytes: any text compares safely


# Reports from users. Why CORS here and nowhere else: the demo page of a web bundle runs on
# the site that embeds the classifier, another origin than this server, and posts the image a
# user thinks was scored wrong. Everything else on this server stays same-origin only (the
# rules above). The page sends `Authorization: Bearer <report token>`, a header a cross-origin
# form cannot send, so a browser must ask first (preflight) and only the configured origins
# get an answer that lets it go on; a POST that skips the preflight anyway (not a browser, or
# a form) is refused here by its Origin and its token, whatever CORS says. No cookies: the
# page posts with credentials omitted and no Allow-Credentials is ever sent, so the review
# cookies never travel with a report.
REPORT_PATH = "/api/report"
REPORT_METHODS = "POST"
REPORT_HEADERS = "Authorization, Content-Type"
PREFLIGHT_MAX_AGE = 600


def _origin_site(origin: str) -> tuple[str, str, int] | None:
    parts = urlsplit(origin.strip())
    if parts.scheme not in ("http", "https") or not parts.netloc:
        return None
    return _site(parts.scheme, parts.netloc)


def origin_allowed(origins: Iterable[str], origin: str) -> bool:
    """`origin` (a request's Origin header) is one of the configured `origins` (scheme, name
    and port; a default port may be left out on either side), or they hold "*"."""
    allowed = list(origins)
    if "*" in allowed:
        return True
    site = _origin_site(origin)
    return site is not None and any(_origin_site(o) == site for o in allowed)


def report_refusal(
    token: str, origins: Iterable[str], origin: str | None, authorization: str | None
) -> tuple[int, str] | None:
    """(status, why) when a report must be refused before its body is read, else None.
    `token`: the report token (empty: reports are off); `origin`: the Origin header (absent
    when not sent by a browser); `authorization`: the Authorization header."""
    if not token:
        return 404, "reports are off on this server (review.report_token)"
    if origin is not None and not origin_allowed(origins, origin):
        return 403, "this origin may not send reports (review.report_origins)"
    scheme, _, given = (authorization or "").strip().partition(" ")
    if scheme.lower() != "bearer" or not given.strip():
        return 401, "a report token is required (Authorization: Bearer ...)"
    if not same(given.strip(), token):
        return 403, "wrong report token"
    return None


def cors_headers(origins: Iterable[str], origin: str | None) -> dict[str, str]:
    """The CORS answer for a report request from `origin`: only an allowed origin is named
    (credentials are never allowed); `Vary: Origin` so no cache serves it to another."""
    if origin is None or not origin_allowed(origins, origin):
        return {"Vary": "Origin"}
    return {"Access-Control-Allow-Origin": origin, "Vary": "Origin"}


def preflight_headers(origins: Iterable[str], origin: str | None) -> dict[str, str] | None:
    """The answer to a report route's preflight (OPTIONS), or None to refuse it."""
    if origin is None or not origin_allowed(origins, origin):
        return None
    return cors_headers(origins, origin) | {
        "Access-Control-Allow-Methods": REPORT_METHODS,
        "Access-Control-Allow-Headers": REPORT_HEADERS,
        "Access-Control-Max-Age": str(PREFLIGHT_MAX_AGE),
    }


class RateLimit:
    """A token bucket per client (its IP address), in memory: `burst` requests at once,
    refilled at `per_minute`. Behind a reverse proxy every client shares the proxy's address
    (forwarded headers are not trusted: any client could write them)."""

    MAX_CLIENTS = 10_000  # beyond this, clients whose bucket is full again are forgotten

    def __init__(
        self, per_minute: float, burst: int, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.rate = per_minute / 60.0
        self.burst = float(burst)
        self.clock = clock
        self._buckets: dict[str, tuple[float, float]] = {}  # client -> (tokens, at)
        self._lock = threading.Lock()

    def take(self, client: str) -> float:
        """0.0 when `client` may go on (one token taken), else the seconds until it may."""
        with self._lock:
            now = self.clock()
            tokens, at = self._buckets.get(client, (self.burst, now))
            tokens = min(self.burst, tokens + (now - at) * self.rate)
            if tokens < 1.0:
                self._buckets[client] = (tokens, now)
                return (1.0 - tokens) / self.rate
            self._buckets[client] = (tokens - 1.0, now)
            if len(self._buckets) > self.MAX_CLIENTS:
                self._forget(now)
            return 0.0

    def _forget(self, now: float) -> None:
        full = self.burst / self.rate
        for client, (_, at) in list(self._buckets.items()):
            if now - at >= full:
                del self._buckets[client]
