"""A simulated vision LLM behind a protocol-faithful Ollama server, for tests, benchmarks and
`spritesafe demo`: no model, no GPU, real HTTP, the real `ollama` client.

`FakeOllama` runs a real HTTP/1.1 server on 127.0.0.1 in a background thread and answers the
endpoints the official `ollama` Python client uses (`/`, `/api/version`, `/api/tags`,
`/api/show`, `/api/ps`, `/api/chat`) the way Ollama itself does: same JSON shapes, same status
codes and error bodies, NDJSON streaming with chunked transfer encoding, keep-alive connections.

On top of that it is scriptable:

* ``responder``: a callable that gets a `ChatRequestInfo` (parsed body, decoded images, model)
  and returns the assistant's message content (`rubric_responder` answers the label stage's
  schema for single sprites and contact sheets from a verdict per sprite; `NoisyOracle` is
  such a verdict: it knows the truth of every sprite it may be shown and errs realistically);
* knobs, settable at any time from any thread: ``latency_s`` (seconds each chat request takes
  once it holds a slot), ``parallelism`` (how many chat requests are processed at once; the
  rest wait in a queue, like ``OLLAMA_NUM_PARALLEL``), ``max_queue`` (like ``OLLAMA_MAX_QUEUE``:
  beyond it, 503);
* a fault script for the next chat requests: `fail_next`, `drop_next`, `garbage_next`,
  `invalid_next`, `hang_next`; and `down`/`up` to take the whole host away and bring it back on
  the same port;
* a record of every request (`requests`, `counts`, `chat_count`, `max_in_flight`).

Faults are consumed, in arrival order, by chat requests that pass validation (a request for an
unknown model does not use one up), and they strike after the request has waited for its slot
and slept ``latency_s``, as a runner that crashes mid-generation would.
"""

from __future__ import annotations

import base64
import binascii
import contextlib
import hashlib
import io
import json
import re
import select
import socket
import struct
import sys
import threading
import time
from collections import Counter, deque
from collections.abc import Callable, Hashable, Iterable, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from socketserver import TCPServer
from types import TracebackType
from typing import Any, Generic, Literal, Self, TypeVar
from urllib.parse import urlsplit

import numpy as np
from numpy.typing import NDArray
from PIL import Image

from labelers.sheets import LINE, cells  # the product's layout, defined once
from spritesafe.canonical import content_box

__all__ = [
    "DEFAULT_CONTENT",
    "DEFAULT_MODEL",
    "GARBAGE_CONTENT",
    "INVALID_CONTENT",
    "ChatRequestInfo",
    "FakeModel",
    "FakeOllama",
    "Fault",
    "NoisyOracle",
    "RecordedRequest",
    "Responder",
    "default_responder",
    "fake_digest",
    "rubric_responder",
    "sheet_layout",
]

VERSION = "0.12.0"
DEFAULT_MODEL = "qwen2.5vl:3b"
DEFAULT_CONTENT: dict[str, Any] = {
    "category": "safe",
    "scores": {"safe": 0.9, "suggestive": 0.08, "explicit": 0.02},
    "rationale": "A plain pixel-art sprite; nothing suggestive or explicit.",
}
GARBAGE_CONTENT = "I'm sorry, but I can't help with classifying this image."
INVALID_CONTENT = json.dumps(
    {"scores": {"safe": 0.9, "suggestive": 0.08, "explicit": 0.02}, "rationale": "no category"}
)
MAX_QUEUE_ERROR = "server busy, please try again.  maximum pending requests exceeded"
NO_VISION_ERROR = "this model is missing data required for image input"
UNKNOWN_IMAGE_ERROR = "failed to process inputs: image: unknown format"

_HEX64 = re.compile(r"[0-9a-f]{64}")
_DURATION_UNITS = {"ns": 1e-9, "us": 1e-6, "µs": 1e-6, "μs": 1e-6, "ms": 1e-3, "s": 1.0}
_DURATION_UNITS |= {"m": 60.0, "h": 3600.0}
_DURATION_PART = re.compile(r"(\d+\.?\d*|\.\d+)(ns|us|µs|μs|ms|s|m|h)")
_IMAGE_MAGIC = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"GIF87a", b"GIF89a")
_THINK_LEVELS = ("high", "medium", "low")
_POLL_S = 0.02


@dataclass(frozen=True)
class FakeModel:
    """One installed model. ``digest`` is the manifest's sha256, with or without ``sha256:``."""

    digest: str
    vision: bool = True
    thinking: bool = False
    tools: bool = False
    family: str = "qwen25vl"
    parameter_size: str = "3.8B"
    quantization_level: str = "Q4_K_M"
    size: int = 3_200_000_000
    context_length: int = 128_000
    modified_at: datetime = field(
        default_factory=lambda: datetime(2025, 9, 1, 12, 0, 0, 123456, tzinfo=UTC)
    )

    @property
    def hex_digest(self) -> str:
        """The digest as Ollama reports it in /api/tags and /api/ps: bare hex, no prefix."""
        return self.digest.removeprefix("sha256:")

    @property
    def capabilities(self) -> list[str]:
        caps = ["completion"]
        caps += ["vision"] if self.vision else []
        caps += ["tools"] if self.tools else []
        caps += ["thinking"] if self.thinking else []
        return caps


def fake_digest(name: str) -> str:
    """A stable made-up digest for a model name (bare hex, as /api/tags shows it)."""
    return hashlib.sha256(f"fake-ollama:{name}".encode()).hexdigest()


@dataclass
class ChatRequestInfo:
    """What the responder sees of one validated /api/chat request."""

    model: str
    """The model name exactly as the client sent it."""
    resolved_model: str
    """The installed model it resolved to, e.g. ``qwen2.5vl:latest`` for ``qwen2.5vl``."""
    body: dict[str, Any]
    """The parsed JSON body (images still base64, as sent)."""
    images: list[bytes]
    """Every image of every message, decoded, in order."""
    seq: int
    """0-based index of this request among all /api/chat requests the server received."""

    @property
    def messages(self) -> list[dict[str, Any]]:
        return list(self.body.get("messages") or [])

    @property
    def format(self) -> Any:
        return self.body.get("format")

    @property
    def options(self) -> dict[str, Any]:
        return dict(self.body.get("options") or {})

    @property
    def stream(self) -> bool:
        return self.body.get("stream") is not False

    @property
    def keep_alive(self) -> Any:
        return self.body.get("keep_alive")

    @property
    def prompt(self) -> str:
        """The content of the last user message ('' if none)."""
        users = [m for m in self.messages if m.get("role") == "user"]
        return str(users[-1].get("content") or "") if users else ""


Responder = Callable[[ChatRequestInfo], str]


def default_responder(info: ChatRequestInfo) -> str:
    """Valid JSON for spritesafe's labelling schema: always 'safe' (on a contact sheet: no
    cell flagged)."""
    if sheet_layout(info) is not None:
        return json.dumps({"flagged": []})
    return json.dumps(DEFAULT_CONTENT)


_SHEET_PROMPT = re.compile(r"grid of (\d+) rows and (\d+)\s+columns")


def sheet_layout(info: ChatRequestInfo) -> tuple[int, int, int] | None:
    """(rows, cols, cell px) when the request shows a contact sheet (labelers.sheets), as its
    prompt says; None for a single image."""
    found = _SHEET_PROMPT.search(info.prompt)
    if found is None or not info.images:
        return None
    rows, cols = int(found.group(1)), int(found.group(2))
    width = int.from_bytes(info.images[0][16:20], "big")  # PNG header
    return rows, cols, (width - (cols - 1) * LINE) // cols


Verdict = Callable[["NDArray[np.uint8]", ChatRequestInfo], str | None]


def rubric_responder(verdict: Verdict, unsure: str = GARBAGE_CONTENT) -> Responder:
    """A vision model that knows what each sprite is: `verdict(rgb, info)` names a sprite's
    category (None: it cannot tell, and answers `unsure`, never valid). A single image gets
    the rubric's answer; a contact sheet gets the numbers of the cells whose sprites it would
    call suggestive or explicit (it reads each cell where labelers.sheets drew it)."""

    def respond(info: ChatRequestInfo) -> str:
        layout = sheet_layout(info)
        if layout is not None:
            rows, cols, cell = layout
            said = [verdict(c, info) for c in cells(info.images[0], rows, cols, cell)]
            flagged = [n for n, c in enumerate(said, 1) if c in ("suggestive", "explicit")]
            return json.dumps({"flagged": flagged})
        rgb = np.asarray(Image.open(io.BytesIO(info.images[0])).convert("RGB"))
        category = verdict(rgb, info)
        if category is None:
            return unsure
        scores = {"safe": 0.05, "suggestive": 0.05, "explicit": 0.05} | {category: 0.9}
        return json.dumps({"category": category, "scores": scores, "rationale": category})

    return respond


# A realistic vision LLM's errors (bench/loop_bench.py measures the loop under them): per
# sprite and sticky, false positives and misses; per call; on a sheet, further misses by grid.
FALSE_ALARM, MISS, PER_CALL = 0.02, 0.15, 0.02
SHEET_MISS = {4: 0.10, 3: 0.05, 2: 0.02}

K = TypeVar("K", bound=Hashable)


def _unit(*parts: object) -> float:
    """A stable number in [0, 1) from its parts (noise that does not depend on order)."""
    return int(hashlib.sha256(":".join(map(str, parts)).encode()).hexdigest()[:12], 16) / 16**12


def signature(rgb: NDArray[np.uint8], background: tuple[int, int, int]) -> str:
    """Scale-free identity of a drawing: its content box sampled at 16 x 16 cell centres (an
    integer nearest enlargement samples the same source pixels), plus the box's shape."""
    box = content_box(rgb, background)
    h, w = box.shape[:2]
    rows = ((np.arange(16) + 0.5) * h / 16).astype(int)
    cols = ((np.arange(16) + 0.5) * w / 16).astype(int)
    sample = np.ascontiguousarray(box[rows][:, cols])
    ratio = round(h / w, 3)
    return hashlib.sha1(sample.tobytes() + str(ratio).encode()).hexdigest()


def _thumb(rgb: NDArray[np.uint8]) -> NDArray[np.float32]:
    return np.asarray(Image.fromarray(rgb).resize((8, 8), Image.Resampling.BOX), np.float32)


class NoisyOracle(Generic[K]):
    """A vision model that knows the truth of every sprite it may be shown and recognises it
    alone (enlarged) or in a cell of a contact sheet, answering with realistic noise: per
    sprite and sticky (`false_alarm` false positives, `miss` misses: asking again does not fix
    them), plus `per_call` per call; on a sheet of g x g it misses a further `sheet_miss[g]`
    of positives. `verdict` is a `rubric_responder` verdict: `positive` or "safe"."""

    def __init__(
        self,
        sprites: Iterable[tuple[K, NDArray[np.uint8], bool, str]],
        background: tuple[int, int, int],
        *,
        positive: str = "explicit",
        false_alarm: float = FALSE_ALARM,
        miss: float = MISS,
        per_call: float = PER_CALL,
        sheet_miss: Mapping[int, float] | None = None,
    ) -> None:
        """sprites: (key, canonical RGB pixels, truly positive, a stable id such as the
        canonical sha256, which seeds that sprite's noise)."""
        self.background = background
        self.positive = positive
        self.false_alarm, self.miss, self.per_call = false_alarm, miss, per_call
        self.sheet_miss = dict(SHEET_MISS if sheet_miss is None else sheet_miss)
        self.truth: dict[K, tuple[bool, str]] = {}
        self.by_signature: dict[str, K] = {}
        small: dict[K, NDArray[np.float32]] = {}  # fallback: 8x8 thumbnails
        for key, pixels, is_positive, seed in sprites:
            self.truth[key] = (is_positive, seed)
            self.by_signature[signature(pixels, background)] = key
            small[key] = _thumb(content_box(pixels, background))
        self.keys = list(small)
        self.thumbs = np.stack([small[k] for k in self.keys])
        self.unknown = 0  # sprites recognised only by their nearest thumbnail

    def which(self, rgb: NDArray[np.uint8]) -> K:
        found = self.by_signature.get(signature(rgb, self.background))
        if found is not None:
            return found
        self.unknown += 1  # a sheet cell shrunk by a non-integer factor: the nearest thumbnail
        thumb = _thumb(content_box(rgb, self.background))
        return self.keys[int(np.argmin(((self.thumbs - thumb) ** 2).sum(axis=(1, 2, 3))))]

    def says_positive(self, key: K, call: str, grid: int = 1) -> bool:
        """What it answers for sprite `key` in the call named `call` on a grid x grid sheet."""
        positive, seed = self.truth[key]
        sticky = _unit("sticky", seed)
        said = sticky >= self.miss if positive else sticky < self.false_alarm
        if said and positive and _unit("sheet", seed) < self.sheet_miss.get(grid, 0.0):
            said = False
        if _unit("call", seed, call) < self.per_call:
            said = not said
        return said

    def verdict(self, rgb: NDArray[np.uint8], info: ChatRequestInfo) -> str:
        layout = sheet_layout(info)
        grid = layout[0] if layout else 1
        options = info.options
        # Per-call noise: a sheet is a new look each time; one sprite at the same seed and
        # temperature answers the same (as Ollama does).
        seq = info.seq if grid > 1 else ""
        call = f"{options.get('seed')}:{options.get('temperature')}:{grid}:{seq}"
        return self.positive if self.says_positive(self.which(rgb), call, grid) else "safe"


FaultKind = Literal["fail", "drop", "reset", "garbage", "invalid", "hang"]


@dataclass(frozen=True)
class Fault:
    """One scripted misbehaviour for one chat request."""

    kind: FaultKind
    status: int = 500
    error: str = ""
    content: str = ""


@dataclass
class RecordedRequest:
    """One HTTP request as the server received it."""

    method: str
    path: str
    body: Any
    """Parsed JSON body; None when there was none or it was not JSON (see ``raw_body``)."""
    raw_body: bytes
    headers: dict[str, str]
    arrived: float
    """time.monotonic() when the request's headers and body had been read."""
    images: list[bytes] = field(default_factory=list)
    """For /api/chat: the decoded images of all messages."""
    fault: FaultKind | None = None
    status: int | None = None
    """HTTP status answered; None if no response was sent (dropped, cancelled, server down)."""
    finished: float | None = None


class _HTTPServer(ThreadingHTTPServer):
    """Tracks its connections and handler threads so it can be torn down completely."""

    daemon_threads = True
    allow_reuse_address = True
    request_queue_size = 512  # listen backlog: benchmarks open many connections at once

    def __init__(self, port: int, fake: FakeOllama) -> None:
        self.fake = fake
        self.stopping = threading.Event()
        self._conns: set[socket.socket] = set()
        self._handler_threads: list[threading.Thread] = []
        self._track = threading.Lock()
        super().__init__(("127.0.0.1", port), _Handler)

    def server_bind(self) -> None:
        # HTTPServer.server_bind would do a reverse DNS lookup (socket.getfqdn); skip it.
        TCPServer.server_bind(self)
        self.server_name = "127.0.0.1"
        self.server_port = self.server_address[1]

    def process_request(self, request: Any, client_address: Any) -> None:
        thread = threading.Thread(
            target=self.process_request_thread,
            args=(request, client_address),
            name=f"fake-ollama-conn-{client_address[1]}",
            daemon=True,
        )
        with self._track:
            self._conns.add(request)
            self._handler_threads = [t for t in self._handler_threads if t.is_alive()]
            self._handler_threads.append(thread)
        thread.start()

    def shutdown_request(self, request: Any) -> None:
        with self._track:
            self._conns.discard(request)
        super().shutdown_request(request)

    def handle_error(self, request: Any, client_address: Any) -> None:
        # Connections torn down by faults, down() or impatient clients are business as usual.
        if not isinstance(sys.exc_info()[1], OSError):
            super().handle_error(request, client_address)

    def close_connections(self) -> None:
        with self._track:
            conns = list(self._conns)
        for conn in conns:
            with contextlib.suppress(OSError):
                conn.shutdown(socket.SHUT_RDWR)

    def join_handlers(self, timeout: float) -> list[threading.Thread]:
        deadline = time.monotonic() + timeout
        with self._track:
            threads = list(self._handler_threads)
        for thread in threads:
            thread.join(max(0.0, deadline - time.monotonic()))
        return [t for t in threads if t.is_alive()]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    disable_nagle_algorithm = True  # headers and body go out in separate writes
    server: _HTTPServer
    record: RecordedRequest | None = None

    def send_response(self, code: int, message: str | None = None) -> None:
        # Record the status before any byte leaves, so a client that has its answer can
        # already see it in the record.
        if self.record is not None:
            self.record.status = code
        super().send_response(code, message)

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_GET(self) -> None:
        self.server.fake._dispatch(self)

    def do_POST(self) -> None:
        self.server.fake._dispatch(self)

    def do_HEAD(self) -> None:
        self.server.fake._dispatch(self)

    def do_DELETE(self) -> None:
        self.server.fake._dispatch(self)

    def do_PUT(self) -> None:
        self.server.fake._dispatch(self)

    # -- response helpers -------------------------------------------------------------------

    def send_bytes(
        self, status: int, content_type: str, data: bytes, *, head: bool = False
    ) -> None:
        self.send_response(status)
        self.send_header("Content-Type", content_type)
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        if not head:
            self.wfile.write(data)

    def send_json(self, status: int, payload: Any, *, head: bool = False) -> None:
        data = json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
        self.send_bytes(status, "application/json; charset=utf-8", data, head=head)

    def send_error_json(self, status: int, error: str) -> None:
        self.send_json(status, {"error": error})

    def start_chunked(self, content_type: str) -> None:
        self.send_response(200)
        self.send_header("Content-Type", content_type)
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()

    def write_chunk(self, data: bytes) -> None:
        self.wfile.write(f"{len(data):x}\r\n".encode() + data + b"\r\n")

    def end_chunked(self) -> None:
        self.wfile.write(b"0\r\n\r\n")

    def drop(self, *, reset: bool) -> None:
        """Close the connection without a response (reset: with a TCP RST instead of a FIN)."""
        self.close_connection = True
        if reset:
            try:
                self.connection.setsockopt(
                    socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0)
                )
                self.connection.close()
            except OSError:
                pass
        else:
            with contextlib.suppress(OSError):
                self.connection.shutdown(socket.SHUT_RDWR)

    def client_gone(self) -> bool:
        """True once the client has closed its end (it timed out or was cancelled)."""
        try:
            readable, _, _ = select.select([self.connection], [], [], 0)
            return bool(readable) and self.connection.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True


class _Abort(Exception):
    """The request will get no response: the server is going down or the client left."""


class FakeOllama:
    """A fake Ollama host. See the module docstring. Typical use::

    with FakeOllama({"qwen2.5vl:3b": "sha256:" + "ab" * 32}, latency_s=0.1) as server:
        ollama.Client(host=server.url).chat("qwen2.5vl:3b", messages=[...])
        assert server.chat_count == 1
    """

    def __init__(
        self,
        models: Mapping[str, str | FakeModel] | None = None,
        *,
        responder: Responder | None = None,
        latency_s: float = 0.0,
        parallelism: int | None = None,
        max_queue: int | None = None,
        validate_images: bool = True,
        port: int = 0,
    ) -> None:
        """
        models: installed models, name -> digest (``sha256:<hex>`` or bare hex) or `FakeModel`;
            default: ``{DEFAULT_MODEL: <made-up digest>}``. All vision-capable unless a
            `FakeModel` says otherwise. Names without a tag get ``:latest``.
        responder: builds the assistant content for each chat request; default
            `default_responder`.
        latency_s: seconds each chat request is processed for (while holding a slot).
        parallelism: chat requests processed at once (None: unlimited); others queue.
        max_queue: how many may wait for a slot before Ollama answers 503 (None: unlimited).
        validate_images: reject images that are not PNG/JPEG/GIF/WebP, as Ollama's runner does.
        port: 0 picks a free port; it is kept across `down`/`up` and `stop`/`start`.
        """
        self.models: dict[str, FakeModel] = {}
        for name, spec in (models or {DEFAULT_MODEL: fake_digest(DEFAULT_MODEL)}).items():
            model = FakeModel(digest=spec) if isinstance(spec, str) else spec
            if not _HEX64.fullmatch(model.hex_digest):
                raise ValueError(f"digest of {name!r} must be sha256:<64 hex> or <64 hex>")
            self.models[_normalize(name)] = model
        self.responder: Responder = responder or default_responder
        self.validate_images = validate_images
        self._port = port
        self._lock = threading.Lock()
        self._slots = threading.Condition(self._lock)
        self._latency_s = latency_s
        self._parallelism = parallelism
        self._max_queue = max_queue
        self._in_flight = 0
        self._max_in_flight = 0
        self._waiting = 0
        self._faults: deque[Fault] = deque()
        self._requests: list[RecordedRequest] = []
        self._counts: Counter[str] = Counter()
        self._loaded: dict[str, datetime] = {}
        self._lifecycle = threading.Lock()
        self._httpd: _HTTPServer | None = None
        self._serve_thread: threading.Thread | None = None
        self._stopped = True

    # -- lifecycle ------------------------------------------------------------------------------

    def start(self) -> Self:
        """Start listening (on the port used before, if any). Returns self."""
        with self._lifecycle:
            if not self._stopped:
                raise RuntimeError("FakeOllama is already started")
            self._stopped = False
        try:
            self._listen()
        except BaseException:
            self._stopped = True
            raise
        return self

    def stop(self) -> None:
        """Stop listening, drop every connection and join every thread. Idempotent."""
        with self._lifecycle:
            self._stopped = True
        self._unlisten()

    def down(self) -> None:
        """The host goes away: in-flight requests are dropped, new connections are refused."""
        self._unlisten()

    def up(self) -> None:
        """The host comes back, on the same port."""
        with self._lifecycle:
            if self._stopped:
                raise RuntimeError("FakeOllama is stopped; use start()")
        self._listen()

    @property
    def is_up(self) -> bool:
        return self._httpd is not None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _listen(self) -> None:
        with self._lifecycle:
            if self._httpd is not None:
                return
            httpd = _HTTPServer(self._port, self)
            self._port = httpd.server_address[1]
            thread = threading.Thread(
                target=httpd.serve_forever,
                kwargs={"poll_interval": 0.05},
                name=f"fake-ollama-{self._port}",
                daemon=True,
            )
            self._httpd, self._serve_thread = httpd, thread
            thread.start()

    def _unlisten(self) -> None:
        with self._lifecycle:
            httpd, thread = self._httpd, self._serve_thread
            self._httpd = self._serve_thread = None
        if httpd is None or thread is None:
            return
        httpd.stopping.set()
        with self._slots:
            self._slots.notify_all()
        httpd.shutdown()
        httpd.server_close()
        thread.join()
        httpd.close_connections()
        stuck = httpd.join_handlers(timeout=5.0)
        if stuck:
            raise RuntimeError(f"FakeOllama handler threads did not finish: {stuck}")

    @property
    def port(self) -> int:
        return self._port

    @property
    def url(self) -> str:
        if not self._port:
            raise RuntimeError("FakeOllama has not been started")
        return f"http://127.0.0.1:{self._port}"

    # -- knobs ----------------------------------------------------------------------------------

    @property
    def latency_s(self) -> float:
        with self._lock:
            return self._latency_s

    @latency_s.setter
    def latency_s(self, value: float) -> None:
        if value < 0:
            raise ValueError("latency_s must be >= 0")
        with self._lock:
            self._latency_s = value

    @property
    def parallelism(self) -> int | None:
        with self._lock:
            return self._parallelism

    @parallelism.setter
    def parallelism(self, value: int | None) -> None:
        if value is not None and value < 1:
            raise ValueError("parallelism must be >= 1 or None")
        with self._slots:
            self._parallelism = value
            self._slots.notify_all()

    @property
    def max_queue(self) -> int | None:
        with self._lock:
            return self._max_queue

    @max_queue.setter
    def max_queue(self, value: int | None) -> None:
        with self._lock:
            self._max_queue = value

    # -- fault script -----------------------------------------------------------------------------

    def fail_next(self, n: int = 1, status: int = 500, error: str = "") -> None:
        """The next n chat requests get HTTP ``status`` with ``{"error": error}``."""
        error = error or "llama runner process has terminated: exit status 2"
        self._script(n, Fault("fail", status=status, error=error))

    def drop_next(self, n: int = 1, *, reset: bool = False) -> None:
        """The next n chat requests get no response: the connection is closed (FIN, or RST)."""
        self._script(n, Fault("reset" if reset else "drop"))

    def garbage_next(self, n: int = 1, content: str = GARBAGE_CONTENT) -> None:
        """The next n chat requests succeed with content that is not JSON."""
        self._script(n, Fault("garbage", content=content))

    def invalid_next(self, n: int = 1, content: str = INVALID_CONTENT) -> None:
        """The next n chat requests succeed with JSON that misses ``category``."""
        self._script(n, Fault("invalid", content=content))

    def hang_next(self, n: int = 1) -> None:
        """The next n chat requests never answer, until the client gives up or the server stops."""
        self._script(n, Fault("hang"))

    def clear_faults(self) -> None:
        with self._lock:
            self._faults.clear()

    @property
    def pending_faults(self) -> list[Fault]:
        with self._lock:
            return list(self._faults)

    def _script(self, n: int, fault: Fault) -> None:
        with self._lock:
            self._faults.extend([fault] * n)

    # -- records ----------------------------------------------------------------------------------

    @property
    def requests(self) -> list[RecordedRequest]:
        """Every request received, in arrival order."""
        with self._lock:
            return list(self._requests)

    @property
    def chat_requests(self) -> list[RecordedRequest]:
        return [r for r in self.requests if r.path == "/api/chat"]

    @property
    def counts(self) -> Counter[str]:
        """Requests received per path."""
        with self._lock:
            return Counter(self._counts)

    @property
    def chat_count(self) -> int:
        with self._lock:
            return self._counts["/api/chat"]

    @property
    def in_flight(self) -> int:
        """Chat requests being processed now (holding a slot)."""
        with self._lock:
            return self._in_flight

    @property
    def max_in_flight(self) -> int:
        with self._lock:
            return self._max_in_flight

    @property
    def waiting(self) -> int:
        """Chat requests queued for a slot now."""
        with self._lock:
            return self._waiting

    def reset(self) -> None:
        """Forget recorded requests, counters, max_in_flight, loaded models and pending faults."""
        with self._lock:
            self._requests.clear()
            self._counts.clear()
            self._max_in_flight = self._in_flight
            self._faults.clear()
            self._loaded.clear()

    def digest(self, name: str) -> str:
        """The bare-hex digest /api/tags reports for an installed model."""
        return self.models[_normalize(name)].hex_digest

    # -- request handling -------------------------------------------------------------------------

    def _dispatch(self, h: _Handler) -> None:
        length = int(h.headers.get("Content-Length") or 0)
        raw = h.rfile.read(length) if length > 0 else b""
        path = urlsplit(h.path).path
        try:
            body: Any = json.loads(raw) if raw else None
        except ValueError:
            body = None
        record = RecordedRequest(
            method=h.command,
            path=path,
            body=body,
            raw_body=raw,
            headers={k.lower(): v for k, v in h.headers.items()},
            arrived=time.monotonic(),
        )
        with self._lock:
            seq = self._counts[path]
            self._requests.append(record)
            self._counts[path] += 1
        h.record = record
        try:
            self._route(h, record, seq)
        except _Abort:
            h.drop(reset=False)
        finally:
            h.record = None
            record.finished = time.monotonic()

    def _route(self, h: _Handler, record: RecordedRequest, seq: int) -> None:
        method, path = record.method, record.path
        head = method == "HEAD"
        if path == "/" and method in ("GET", "HEAD"):
            h.send_bytes(200, "text/plain; charset=utf-8", b"Ollama is running", head=head)
            return
        if path == "/api/version" and method in ("GET", "HEAD"):
            h.send_json(200, {"version": VERSION}, head=head)
            return
        if path == "/api/tags" and method in ("GET", "HEAD"):
            models = [self._tag(n, m) for n, m in self.models.items()]
            h.send_json(200, {"models": models}, head=head)
            return
        if path == "/api/ps" and method == "GET":
            h.send_json(200, self._ps())
            return
        if path == "/api/show" and method == "POST":
            self._show(h, record)
        elif path == "/api/chat" and method == "POST":
            self._chat(h, record, seq)
        else:
            h.send_bytes(404, "text/plain", b"404 page not found")

    def _tag(self, name: str, m: FakeModel) -> dict[str, Any]:
        return {
            "name": name,
            "model": name,
            "modified_at": _go_time(m.modified_at),
            "size": m.size,
            "digest": m.hex_digest,
            "details": _details(m),
        }

    def _ps(self) -> dict[str, Any]:
        now = datetime.now(UTC)
        with self._lock:
            loaded = {n: t for n, t in self._loaded.items() if t > now}
        models = []
        for name, expires in sorted(loaded.items(), key=lambda kv: kv[1], reverse=True):
            m = self.models[name]
            models.append(
                {
                    "name": name,
                    "model": name,
                    "size": m.size,
                    "digest": m.hex_digest,
                    "details": _details(m),
                    "expires_at": _go_time(expires.astimezone()),
                    "size_vram": m.size,
                    "context_length": 4096,
                }
            )
        return {"models": models}

    def _show(self, h: _Handler, record: RecordedRequest) -> None:
        body = record.body
        if not record.raw_body:
            h.send_error_json(400, "missing request body")
            return
        if not isinstance(body, dict):
            h.send_error_json(400, _json_error(record.raw_body, body, "api.ShowRequest"))
            return
        name = body.get("model") or body.get("name") or ""
        if not isinstance(name, str):
            h.send_error_json(400, _unmarshal("ShowRequest.model", name, "string"))
            return
        if not name:
            h.send_error_json(400, "model is required")
            return
        m = self.models.get(_normalize(name))
        if m is None:
            h.send_error_json(404, f"model '{name}' not found")
            return
        arch = m.family
        h.send_json(
            200,
            {
                "license": "",
                "modelfile": (
                    '# Modelfile generated by "ollama show"\n'
                    f"FROM /root/.ollama/models/blobs/sha256-{fake_digest(name + ':blob')}\n"
                    'TEMPLATE """{{ .Prompt }}"""\n'
                ),
                "parameters": "temperature 0.0001",
                "template": "{{ .Prompt }}",
                "details": _details(m),
                "model_info": {
                    "general.architecture": arch,
                    "general.file_type": 15,
                    "general.parameter_count": 3_754_622_976,
                    f"{arch}.context_length": m.context_length,
                    f"{arch}.embedding_length": 2048,
                },
                "capabilities": m.capabilities,
                "modified_at": _go_time(m.modified_at),
            },
        )
        return

    def _chat(self, h: _Handler, record: RecordedRequest, seq: int) -> None:
        started = time.monotonic()
        if not record.raw_body:
            h.send_error_json(400, "missing request body")
            return
        body = record.body
        if not isinstance(body, dict):
            h.send_error_json(400, _json_error(record.raw_body, body, "api.ChatRequest"))
            return
        try:
            images = _validate_chat(body)
        except _BadRequest as e:
            h.send_error_json(400, str(e))
            return
        record.images = images
        requested = body.get("model") or ""
        if not requested:
            h.send_error_json(400, "model is required")
            return
        name = _normalize(requested)
        m = self.models.get(name)
        if m is None:
            # Ollama <= 0.12.x; later versions answer "model 'x' not found" (also 404).
            h.send_error_json(404, f'model "{requested}" not found, try pulling it first')
            return
        if _think_on(body.get("think")) and not m.thinking:
            h.send_error_json(400, f'"{requested}" does not support thinking')
            return
        if body.get("tools") and not m.tools:
            h.send_error_json(400, f"registry.ollama.ai/library/{name} does not support tools")
            return
        keep_alive = _keep_alive_s(body.get("keep_alive"))
        messages = body.get("messages") or []
        if not messages:
            unload = keep_alive == 0
            self._mark_loaded(name, 0 if unload else keep_alive)
            h.send_json(
                200,
                {
                    "model": requested,
                    "created_at": _now(),
                    "message": {"role": "assistant", "content": ""},
                    "done_reason": "unload" if unload else "load",
                    "done": True,
                },
            )
            return

        with self._lock:
            fault = self._faults.popleft() if self._faults else None
        record.fault = fault.kind if fault else None

        if not self._acquire_slot(h):
            return
        admitted = time.monotonic()
        try:
            self._mark_loaded(name, keep_alive)
            self._sleep(h, self.latency_s)
            if fault is not None and fault.kind == "hang":
                self._sleep(h, float("inf"))
            if fault is not None and fault.kind in ("drop", "reset"):
                h.drop(reset=fault.kind == "reset")
                return
            if fault is not None and fault.kind == "fail":
                h.send_error_json(fault.status, fault.error)
                return
            if images and not m.vision:
                h.send_error_json(500, NO_VISION_ERROR)
                return
            if self.validate_images and any(not _is_image(i) for i in images):
                h.send_error_json(500, UNKNOWN_IMAGE_ERROR)
                return
            fmt = body.get("format")
            if fmt not in (None, "", "json") and not isinstance(fmt, dict):
                error = f'invalid format: {json.dumps(fmt)}; expected "json" or a valid JSON schema'
                h.send_error_json(500, error)
                return
            if fault is not None:
                content = fault.content
            else:
                info = ChatRequestInfo(requested, name, body, images, seq)
                try:
                    content = self.responder(info)
                except Exception as e:
                    h.send_error_json(500, f"responder failed: {e!r}")
                    return
            stats = _stats(body, images, content, started, admitted)
            if body.get("stream") is False:
                reply = _chunk(requested, content, done=True) | stats
                h.send_json(200, reply)
                return
            h.start_chunked("application/x-ndjson")
            for piece in _pieces(content):
                h.write_chunk(_ndjson(_chunk(requested, piece, done=False)))
            h.write_chunk(_ndjson(_chunk(requested, "", done=True) | stats))
            h.end_chunked()
        finally:
            with self._slots:
                self._in_flight -= 1
                self._slots.notify_all()

    def _acquire_slot(self, h: _Handler) -> bool:
        """Wait for a processing slot; False if the queue was full and 503 was answered."""
        stopping = h.server.stopping
        with self._slots:
            limit, queue = self._parallelism, self._max_queue
            busy = limit is not None and self._in_flight >= limit
            full = busy and queue is not None and self._waiting >= queue
            if not full:
                self._waiting += 1
        if full:
            h.send_error_json(503, MAX_QUEUE_ERROR)
            return False
        with self._slots:
            try:
                while True:
                    if stopping.is_set() or h.client_gone():
                        raise _Abort
                    limit = self._parallelism
                    if limit is None or self._in_flight < limit:
                        break
                    self._slots.wait(_POLL_S)
            finally:
                self._waiting -= 1
            self._in_flight += 1
            self._max_in_flight = max(self._max_in_flight, self._in_flight)
        return True

    def _sleep(self, h: _Handler, seconds: float) -> None:
        """Sleep, but give up (no response) when the server stops or the client leaves."""
        stopping = h.server.stopping
        deadline = time.monotonic() + seconds
        while (left := deadline - time.monotonic()) > 0:
            if stopping.wait(min(left, _POLL_S * 5)) or h.client_gone():
                raise _Abort

    def _mark_loaded(self, name: str, keep_alive_s: float) -> None:
        with self._lock:
            expires = datetime.now(UTC) + timedelta(seconds=min(keep_alive_s, 10 * 365 * 86400))
            self._loaded[name] = expires


class _BadRequest(Exception):
    """The body does not decode into Ollama's api.ChatRequest (Go's encoding/json would fail)."""


# -- helpers: Ollama's data shapes ----------------------------------------------------------------


def _normalize(name: str) -> str:
    name = name.strip().lower()
    last = name.rsplit("/", 1)[-1]
    return name if ":" in last else f"{name}:latest"


def _details(m: FakeModel) -> dict[str, Any]:
    return {
        "parent_model": "",
        "format": "gguf",
        "family": m.family,
        "families": [m.family],
        "parameter_size": m.parameter_size,
        "quantization_level": m.quantization_level,
    }


def _go_time(t: datetime, nanos: int = 0) -> str:
    """RFC 3339 with nanoseconds, trailing zeros trimmed, like Go's time.Time JSON."""
    base = t.strftime("%Y-%m-%dT%H:%M:%S")
    frac = f"{t.microsecond:06d}{nanos % 1000:03d}".rstrip("0")
    offset = t.utcoffset()
    if offset is None or offset == timedelta(0):
        zone = "Z"
    else:
        minutes = int(offset.total_seconds() // 60)
        sign = "+" if minutes >= 0 else "-"
        zone = f"{sign}{abs(minutes) // 60:02d}:{abs(minutes) % 60:02d}"
    return f"{base}.{frac}{zone}" if frac else f"{base}{zone}"


def _now() -> str:
    ns = time.time_ns()
    return _go_time(datetime.fromtimestamp(ns / 1e9, UTC), ns)


def _chunk(model: str, content: str, *, done: bool) -> dict[str, Any]:
    return {
        "model": model,
        "created_at": _now(),
        "message": {"role": "assistant", "content": content},
        "done": done,
    }


def _ndjson(payload: dict[str, Any]) -> bytes:
    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n"


def _pieces(content: str, size: int = 4) -> Iterable[str]:
    """Token-sized pieces, as a streaming model emits them."""
    return (content[i : i + size] for i in range(0, len(content), size))


def _stats(
    body: dict[str, Any], images: list[bytes], content: str, started: float, admitted: float
) -> dict[str, Any]:
    now = time.monotonic()
    text = sum(len(str(m.get("content") or "")) for m in body.get("messages") or [])
    eval_ns = max(1, int((now - admitted) * 1e9))
    return {
        "done_reason": "stop",
        "total_duration": max(1, int((now - started) * 1e9)),
        "load_duration": max(1, int((admitted - started) * 1e9)),
        "prompt_eval_count": max(1, text // 4) + sum(_image_tokens(i) for i in images),
        "prompt_eval_duration": eval_ns // 4,
        "eval_count": max(1, len(content) // 4),
        "eval_duration": eval_ns - eval_ns // 4,
    }


def _image_tokens(data: bytes) -> int:
    """Qwen2.5-VL's rule: one token per 28x28 pixels (256 for an image it cannot size)."""
    if data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) >= 24:
        width, height = int.from_bytes(data[16:20], "big"), int.from_bytes(data[20:24], "big")
        return max(1, -(-width // 28) * -(-height // 28))
    return 256


def _is_image(data: bytes) -> bool:
    return data.startswith(_IMAGE_MAGIC) or (data[:4] == b"RIFF" and data[8:12] == b"WEBP")


def _think_on(value: Any) -> bool:
    return value is True or (isinstance(value, str) and value in _THINK_LEVELS)


def _keep_alive_s(value: Any) -> float:
    """Seconds for a validated keep_alive (default 5m; negative: forever)."""
    if value is None:
        return 300.0
    seconds = float(value) if not isinstance(value, str) else _parse_go_duration(value)
    return float("inf") if seconds < 0 else seconds


def _parse_go_duration(text: str) -> float:
    """time.ParseDuration: '5m', '1h30m', '-1s', '0'. Raises _BadRequest like Go's errors."""
    sign, rest = (-1.0, text[1:]) if text.startswith("-") else (1.0, text.removeprefix("+"))
    if rest == "0":
        return 0.0
    if not rest:
        raise _BadRequest(f"time: invalid duration {json.dumps(text)}")
    total, pos = 0.0, 0
    while pos < len(rest):
        match = _DURATION_PART.match(rest, pos)
        if match is None:
            if re.fullmatch(r"\d+\.?\d*", rest[pos:]):
                raise _BadRequest(f"time: missing unit in duration {json.dumps(text)}")
            raise _BadRequest(f"time: invalid duration {json.dumps(text)}")
        total += float(match.group(1)) * _DURATION_UNITS[match.group(2)]
        pos = match.end()
    return sign * total


def _go_kind(value: Any) -> str:
    if isinstance(value, bool):
        return "bool"
    if isinstance(value, int | float):
        return "number"
    if isinstance(value, str):
        return "string"
    if isinstance(value, list):
        return "array"
    return "object"


def _unmarshal(field_path: str, value: Any, go_type: str) -> str:
    return (
        f"json: cannot unmarshal {_go_kind(value)} into Go struct field {field_path} "
        f"of type {go_type}"
    )


def _json_error(raw: bytes, body: Any, go_type: str) -> str:
    if body is None:
        try:
            json.loads(raw)
        except ValueError as e:
            pos = getattr(e, "pos", 0)
            text = raw.decode(errors="replace")
            if pos >= len(text.rstrip()):
                return "unexpected EOF"
            return f"invalid character {text[pos]!r} looking for beginning of value"
        return "unexpected EOF"
    return f"json: cannot unmarshal {_go_kind(body)} into Go value of type {go_type}"


def _b64decode(text: str) -> bytes:
    """Go's base64.StdEncoding as encoding/json uses it for []byte (ignores \\r and \\n)."""
    cleaned = text.replace("\r", "").replace("\n", "")
    try:
        return base64.b64decode(cleaned, validate=True)
    except (binascii.Error, ValueError):
        alphabet = re.compile(r"[A-Za-z0-9+/=]")
        bad = next((i for i, c in enumerate(cleaned) if not alphabet.fullmatch(c)), None)
        at = bad if bad is not None else max(0, len(cleaned) - len(cleaned) % 4)
        raise _BadRequest(f"illegal base64 data at input byte {at}") from None


def _validate_chat(body: dict[str, Any]) -> list[bytes]:
    """Type-check the body as Go would decode it into api.ChatRequest; return decoded images."""
    fields: tuple[tuple[str, type | tuple[type, ...], str], ...] = (
        ("model", str, "string"),
        ("stream", bool, "bool"),
        ("options", dict, "map[string]interface {}"),
        ("tools", list, "api.Tools"),
        ("messages", list, "[]api.Message"),
        ("top_logprobs", int, "int"),
    )
    for key, expected, go_type in fields:
        value = body.get(key)
        wrong = not isinstance(value, expected) or (expected is int and isinstance(value, bool))
        if value is not None and wrong:
            raise _BadRequest(_unmarshal(f"ChatRequest.{key}", value, go_type))
    think = body.get("think")
    if think is not None and not isinstance(think, bool) and think not in _THINK_LEVELS:
        raise _BadRequest(
            f"invalid think value: {json.dumps(think)} "
            '(must be "high", "medium", "low", true, or false)'
        )
    keep_alive = body.get("keep_alive")
    if keep_alive is not None:
        if isinstance(keep_alive, str):
            _parse_go_duration(keep_alive)
        elif isinstance(keep_alive, bool) or not isinstance(keep_alive, int | float):
            raise _BadRequest(f"Unsupported type: '{_go_kind(keep_alive)}'")
    top = body.get("top_logprobs")
    if top is not None and not 0 <= top <= 20:
        raise _BadRequest("top_logprobs must be between 0 and 20")
    images: list[bytes] = []
    for message in body.get("messages") or []:
        if message is None:
            continue
        if not isinstance(message, dict):
            raise _BadRequest(_unmarshal("ChatRequest.messages", message, "api.Message"))
        for key in ("role", "content", "thinking", "tool_name"):
            value = message.get(key)
            if value is not None and not isinstance(value, str):
                raise _BadRequest(_unmarshal(f"ChatRequest.messages.{key}", value, "string"))
        raw_images = message.get("images")
        if raw_images is None:
            continue
        if not isinstance(raw_images, list):
            where = "ChatRequest.messages.images"
            raise _BadRequest(_unmarshal(where, raw_images, "[]api.ImageData"))
        for image in raw_images:
            if image is None:
                images.append(b"")
            elif not isinstance(image, str):
                where = "ChatRequest.messages.images"
                raise _BadRequest(_unmarshal(where, image, "api.ImageData"))
            else:
                images.append(_b64decode(image))
    return images
