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
"""

from __future__ import annotations

import secrets
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


def refusal(
    policy: Policy,
    method: str,
    host: str,
    origin: str | None,
    fetch_site: str | None,
    scheme: str = "http",
) -> tuple[int, str] | None:
    """(status, why) when the request must be refused before it reaches a page, else None."""
    name, _ = split_host(host)
    if not name or (policy.hosts is not None and name not in policy.hosts):
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
