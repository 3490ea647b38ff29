"""The fake Ollama server (tests.ollama_server) against the real `ollama` client.

Every test talks to `FakeOllama` through `ollama.Client` / `ollama.AsyncClient` (or plain httpx
for what the client cannot send) and then checks both what the client got and what the server
saw on the wire.
"""

from __future__ import annotations

import asyncio
import base64
import json
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import ollama
import pytest

from tests.helpers import png, sprite
from tests.ollama_server import (
    DEFAULT_CONTENT,
    DEFAULT_MODEL,
    ChatRequestInfo,
    FakeModel,
    FakeOllama,
)

pytestmark = pytest.mark.timeout(60)

MODEL = "qwen2.5vl:3b"
DIGEST = "a" * 64
SCHEMA: dict[str, Any] = {
    "type": "object",
    "properties": {
        "category": {"type": "string", "enum": ["safe", "suggestive", "explicit"]},
        "scores": {"type": "object"},
        "rationale": {"type": "string"},
    },
    "required": ["category", "scores", "rationale"],
}


@pytest.fixture
def server() -> Iterator[FakeOllama]:
    with FakeOllama(models={MODEL: f"sha256:{DIGEST}"}) as fake:
        yield fake


@pytest.fixture
def client(server: FakeOllama) -> Iterator[ollama.Client]:
    with ollama.Client(host=server.url) as c:
        yield c


@pytest.fixture
def image() -> bytes:
    return png(sprite(np.random.default_rng(7)))


def user(content: str = "Classify this sprite.", *images: bytes) -> list[dict[str, Any]]:
    message: dict[str, Any] = {"role": "user", "content": content}
    if images:
        message["images"] = list(images)
    return [message]


# -- discovery endpoints ---------------------------------------------------------------------


def test_root_and_version(server: FakeOllama) -> None:
    root = httpx.get(server.url + "/")
    assert (root.status_code, root.text) == (200, "Ollama is running")
    assert httpx.get(server.url + "/api/version").json() == {"version": "0.12.0"}
    assert httpx.get(server.url + "/api/nope").status_code == 404


def test_list_carries_digest_and_details(server: FakeOllama, client: ollama.Client) -> None:
    raw = httpx.get(server.url + "/api/tags").json()
    (entry,) = raw["models"]
    assert set(entry) == {"name", "model", "modified_at", "size", "digest", "details"}
    # Ollama reports the manifest digest as bare hex in /api/tags, whatever prefix we configured.
    assert entry["digest"] == DIGEST == server.digest(MODEL)

    (model,) = client.list().models
    assert model.model == MODEL
    assert model.digest == DIGEST
    assert model.details is not None and model.details.family == "qwen25vl"
    assert model.modified_at is not None and model.modified_at.tzinfo is not None


def test_show_reports_capabilities(client: ollama.Client) -> None:
    shown = client.show(MODEL)
    assert shown.capabilities == ["completion", "vision"]
    assert shown.details is not None and shown.details.format == "gguf"
    assert shown.modelinfo is not None and "general.architecture" in shown.modelinfo
    assert client.show("qwen2.5vl:3B").capabilities == ["completion", "vision"]


def test_show_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.show("llava:13b")
    assert info.value.status_code == 404
    assert info.value.error == "model 'llava:13b' not found"


def test_text_only_model_has_no_vision() -> None:
    models = {"qwen3:4b": FakeModel(digest=DIGEST, vision=False, thinking=True)}
    with FakeOllama(models=models) as fake, ollama.Client(host=fake.url) as c:
        assert c.show("qwen3:4b").capabilities == ["completion", "thinking"]
        with pytest.raises(ollama.ResponseError) as info:
            c.chat("qwen3:4b", messages=user("hi", png(sprite(np.random.default_rng(1)))))
        assert info.value.status_code == 500
        assert "missing data required for image input" in info.value.error


def test_bad_digest_is_rejected() -> None:
    with pytest.raises(ValueError, match="digest"):
        FakeOllama(models={MODEL: "sha256:abc"})


# -- chat ------------------------------------------------------------------------------------


def test_chat_round_trip(server: FakeOllama, client: ollama.Client, image: bytes) -> None:
    reply = client.chat(
        MODEL,
        messages=[{"role": "system", "content": "You label sprites."}, *user("Label", image)],
        format=SCHEMA,
        options={"temperature": 0, "seed": 1},
        keep_alive="5m",
    )
    assert json.loads(reply.message.content or "") == DEFAULT_CONTENT
    assert reply.message.role == "assistant"
    assert (reply.done, reply.done_reason, reply.model) == (True, "stop", MODEL)
    assert reply.total_duration and reply.load_duration and reply.eval_duration
    assert reply.prompt_eval_count and reply.eval_count

    (seen,) = server.chat_requests
    body = seen.body
    assert body["stream"] is False
    assert "think" not in body
    assert body["format"] == SCHEMA
    assert body["options"] == {"temperature": 0, "seed": 1}
    assert body["keep_alive"] == "5m"
    assert body["tools"] == []  # the client always sends the (empty) tool list
    assert [m["role"] for m in body["messages"]] == ["system", "user"]
    sent = body["messages"][1]["images"]
    assert not sent[0].startswith("data:")
    assert base64.b64decode(sent[0], validate=True) == image
    assert seen.images == [image]
    assert seen.status == 200 and seen.fault is None
    assert seen.headers["content-type"] == "application/json"
    assert server.chat_count == 1 and server.counts["/api/chat"] == 1


def test_responder_sees_model_images_and_body(server: FakeOllama, image: bytes) -> None:
    seen: list[ChatRequestInfo] = []

    def responder(info: ChatRequestInfo) -> str:
        seen.append(info)
        return json.dumps({"category": "explicit", "n": len(info.images), "seq": info.seq})

    server.responder = responder
    with ollama.Client(host=server.url) as c:
        c.chat("qwen2.5vl:3B", messages=user("first", image))
        reply = c.chat(MODEL, messages=user("second", image, image), format="json")
    assert json.loads(reply.message.content or "") == {"category": "explicit", "n": 2, "seq": 1}
    first, second = seen
    assert (first.model, first.resolved_model) == ("qwen2.5vl:3B", MODEL)
    assert second.images == [image, image]
    assert (second.prompt, second.format, second.stream) == ("second", "json", False)
    assert second.options == {} and second.keep_alive is None


def test_streaming_chat_assembles_chunks(server: FakeOllama, client: ollama.Client) -> None:
    chunks = list(client.chat(MODEL, messages=user(), stream=True, format=SCHEMA))
    assert len(chunks) > 2
    assert all(not c.done for c in chunks[:-1])
    last = chunks[-1]
    assert (last.done, last.done_reason, last.message.content) == (True, "stop", "")
    assert last.eval_count and last.total_duration
    text = "".join(c.message.content or "" for c in chunks)
    assert json.loads(text) == DEFAULT_CONTENT
    assert server.chat_requests[-1].body["stream"] is True

    async def stream() -> str:
        parts = await ollama.AsyncClient(host=server.url).chat(MODEL, messages=user(), stream=True)
        return "".join([p.message.content or "" async for p in parts])

    assert json.loads(asyncio.run(stream())) == DEFAULT_CONTENT


def test_streaming_wire_format(server: FakeOllama) -> None:
    body = {"model": MODEL, "messages": user()}  # no "stream": the API default is to stream
    with httpx.stream("POST", server.url + "/api/chat", json=body) as response:
        assert response.headers["content-type"] == "application/x-ndjson"
        assert response.headers["transfer-encoding"] == "chunked"
        lines = [json.loads(line) for line in response.iter_lines() if line]
    assert [line["done"] for line in lines] == [False] * (len(lines) - 1) + [True]
    assert {"model", "created_at", "message", "done"} <= set(lines[0])


def test_chat_unknown_model_is_404(client: ollama.Client) -> None:
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("llava:13b", messages=user())
    assert info.value.status_code == 404
    assert info.value.error == 'model "llava:13b" not found, try pulling it first'


def test_chat_validates_like_ollama(server: FakeOllama, client: ollama.Client) -> None:
    # The client passes a non-file, non-base64 string through; Ollama's JSON decoding rejects it.
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=[{"role": "user", "content": "x", "images": ["@@@"]}])
    assert info.value.status_code == 400
    assert info.value.error.startswith("illegal base64 data at input byte")

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=user(), think=True)
    assert (info.value.status_code, info.value.error) == (
        400,
        f'"{MODEL}" does not support thinking',
    )

    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=[{"role": "user", "content": "x", "images": [b"raw pixels"]}])
    assert (info.value.status_code, info.value.error) == (
        500,
        "failed to process inputs: image: unknown format",
    )

    url = server.url + "/api/chat"
    assert httpx.post(url, content=b"").json() == {"error": "missing request body"}
    bad = httpx.post(url, json={"model": MODEL, "messages": "hi", "stream": False})
    assert bad.status_code == 400 and "cannot unmarshal string" in bad.json()["error"]
    bad = httpx.post(url, json={"model": MODEL, "messages": user(), "keep_alive": "5"})
    assert bad.json() == {"error": 'time: missing unit in duration "5"'}
    assert httpx.post(url, json={"messages": user()}).json() == {"error": "model is required"}
    # No messages: Ollama just loads the model.
    loaded = httpx.post(url, json={"model": MODEL}).json()
    assert (loaded["done"], loaded["done_reason"]) == (True, "load")
    assert [m.model for m in client.ps().models] == [MODEL]
    assert server.chat_count == 8  # every request is recorded, valid or not


# -- faults ----------------------------------------------------------------------------------


def test_fail_next(server: FakeOllama, client: ollama.Client) -> None:
    server.fail_next(1, status=503, error="server overloaded")
    server.fail_next(1)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=user())
    assert (info.value.status_code, info.value.error) == (503, "server overloaded")
    with pytest.raises(ollama.ResponseError) as info:
        client.chat(MODEL, messages=user(), stream=True).__next__()
    assert info.value.status_code == 500
    assert client.chat(MODEL, messages=user()).message.content == json.dumps(DEFAULT_CONTENT)
    assert [r.status for r in server.chat_requests] == [503, 500, 200]
    assert [r.fault for r in server.chat_requests] == ["fail", "fail", None]


def test_drop_next(server: FakeOllama, client: ollama.Client) -> None:
    server.drop_next(1)
    server.drop_next(1, reset=True)
    # The ollama client only translates connect errors and HTTP statuses; a connection that
    # dies mid-request surfaces as the raw httpx error.
    with pytest.raises(httpx.RemoteProtocolError, match="without sending a response"):
        client.chat(MODEL, messages=user())
    with pytest.raises(httpx.ReadError):
        client.chat(MODEL, messages=user())
    assert client.chat(MODEL, messages=user()).done
    assert [r.status for r in server.chat_requests] == [None, None, 200]

    async def dropped() -> None:
        server.drop_next(1)
        await ollama.AsyncClient(host=server.url).chat(MODEL, messages=user())

    with pytest.raises(httpx.RemoteProtocolError):
        asyncio.run(dropped())


def test_garbage_and_invalid_next(server: FakeOllama, client: ollama.Client) -> None:
    server.garbage_next(1)
    server.invalid_next(1)
    server.garbage_next(1, content='{"category": "safe", "scores": {"sa')
    garbage = client.chat(MODEL, messages=user(), format=SCHEMA).message.content or ""
    with pytest.raises(json.JSONDecodeError):
        json.loads(garbage)
    invalid = json.loads(client.chat(MODEL, messages=user(), format=SCHEMA).message.content or "")
    assert "category" not in invalid
    streamed = client.chat(MODEL, messages=user(), stream=True)
    assert (
        "".join(c.message.content or "" for c in streamed) == '{"category": "safe", "scores": {"sa'
    )
    assert server.pending_faults == []
    assert json.loads(client.chat(MODEL, messages=user()).message.content or "") == DEFAULT_CONTENT


def test_faults_are_not_used_up_by_invalid_requests(
    server: FakeOllama, client: ollama.Client
) -> None:
    server.fail_next(1, status=500)
    with pytest.raises(ollama.ResponseError) as info:
        client.chat("missing:model", messages=user())
    assert info.value.status_code == 404
    assert len(server.pending_faults) == 1
    with pytest.raises(ollama.ResponseError):
        client.chat(MODEL, messages=user())


def test_hang_next_until_client_gives_up(server: FakeOllama) -> None:
    server.parallelism = 1
    server.hang_next(1)
    with (
        ollama.Client(host=server.url, timeout=0.3) as impatient,
        pytest.raises(httpx.ReadTimeout),
    ):
        impatient.chat(MODEL, messages=user())
    # The server notices the client left and frees the slot, as Ollama cancels the request.
    start = time.monotonic()
    with ollama.Client(host=server.url) as c:
        assert c.chat(MODEL, messages=user()).done
    assert time.monotonic() - start < 1.0
    assert server.chat_requests[0].status is None


# -- latency, parallelism, queue ------------------------------------------------------------


def test_parallelism_caps_in_flight(server: FakeOllama) -> None:
    latency = 0.3
    server.latency_s = latency
    server.parallelism = 2

    async def burst() -> list[ollama.ChatResponse]:
        c = ollama.AsyncClient(host=server.url)
        return list(await asyncio.gather(*(c.chat(MODEL, messages=user()) for _ in range(6))))

    start = time.monotonic()
    replies = asyncio.run(burst())
    wall = time.monotonic() - start
    assert all(r.done for r in replies)
    assert server.max_in_flight == 2
    assert 3 * latency * 0.95 <= wall < 3 * latency + 0.6
    # load_duration includes the time spent queued, as in Ollama.
    loads = sorted((r.load_duration or 0) / 1e9 for r in replies)
    assert loads[0] < 0.1 and loads[-1] > 2 * latency * 0.9
    arrivals = [r.arrived for r in server.chat_requests]
    assert max(arrivals) - min(arrivals) < latency  # all six arrived together, then queued
    assert server.in_flight == 0 and server.waiting == 0


def test_max_queue_answers_503(server: FakeOllama) -> None:
    server.latency_s = 0.3
    server.parallelism = 1
    server.max_queue = 1

    async def burst() -> list[Any]:
        c = ollama.AsyncClient(host=server.url)

        async def one(delay: float) -> Any:
            await asyncio.sleep(delay)
            return await c.chat(MODEL, messages=user())

        return list(
            await asyncio.gather(*(one(0.05 * i) for i in range(3)), return_exceptions=True)
        )

    results = asyncio.run(burst())
    errors = [r for r in results if isinstance(r, ollama.ResponseError)]
    assert len(errors) == 1 and errors[0].status_code == 503
    assert "maximum pending requests exceeded" in errors[0].error
    assert server.max_in_flight == 1


def test_knobs_change_at_runtime(server: FakeOllama, client: ollama.Client) -> None:
    server.latency_s = 0.2
    start = time.monotonic()
    client.chat(MODEL, messages=user())
    assert time.monotonic() - start >= 0.2
    server.latency_s = 0
    start = time.monotonic()
    client.chat(MODEL, messages=user())
    assert time.monotonic() - start < 0.2
    with pytest.raises(ValueError):
        server.parallelism = 0


# -- the host going away ---------------------------------------------------------------------


def test_down_and_up(server: FakeOllama, client: ollama.Client) -> None:
    assert client.chat(MODEL, messages=user()).done  # leaves a pooled keep-alive connection
    port = server.port
    server.down()
    assert not server.is_up
    with pytest.raises(ConnectionError, match="Failed to connect to Ollama"):
        client.chat(MODEL, messages=user())
    with pytest.raises(ConnectionError):
        client.list()

    async def async_chat() -> ollama.ChatResponse:
        return await ollama.AsyncClient(host=server.url).chat(MODEL, messages=user())

    with pytest.raises(ConnectionError):
        asyncio.run(async_chat())

    server.up()
    assert server.port == port
    assert client.chat(MODEL, messages=user()).done
    assert asyncio.run(async_chat()).done


def test_down_drops_requests_in_flight(server: FakeOllama) -> None:
    server.latency_s = 5.0
    errors: list[BaseException] = []

    def call() -> None:
        try:
            ollama.Client(host=server.url).chat(MODEL, messages=user())
        except BaseException as e:
            errors.append(e)

    caller = threading.Thread(target=call)
    caller.start()
    deadline = time.monotonic() + 2
    while server.in_flight == 0 and time.monotonic() < deadline:
        time.sleep(0.01)
    start = time.monotonic()
    server.down()
    caller.join(2)
    assert time.monotonic() - start < 1.0
    assert len(errors) == 1 and isinstance(errors[0], httpx.RemoteProtocolError)
    assert server.in_flight == 0


def test_start_stop_many_times_leaves_no_threads(image: bytes) -> None:
    before = set(threading.enumerate())
    for _ in range(5):
        with FakeOllama() as fake, ollama.Client(host=fake.url) as c:
            assert c.chat(DEFAULT_MODEL, messages=user("x", image)).done
            assert fake.counts["/api/chat"] == 1
    leftover = [t for t in threading.enumerate() if t not in before and t.is_alive()]
    assert leftover == []

    fake = FakeOllama().start()
    port = fake.port
    fake.stop()
    fake.stop()  # idempotent
    fake.start()
    try:
        assert fake.port == port
        assert httpx.get(fake.url).text == "Ollama is running"
    finally:
        fake.stop()
