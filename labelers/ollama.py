"""The vision-LLM labeler: the official `ollama` client (async) against one or more hosts.

Work is a queue of (image, sample) jobs; every host runs `per_host_concurrency` workers that
pull from it, so concurrency is bounded per host and a host that fails mid-run simply stops
taking work: its job goes back on the queue for the others. A host that fails
`breaker_failures` times in a row is left alone for `breaker_cooldown_s` (circuit breaker).
A reply that is not valid JSON for the rubric's schema is asked again once (another seed),
then recorded as an error with the raw text: never guessed into a label.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import httpx
import ollama

from labelers.effective import LLM
from labelers.rubric import AnswerError, Question, Rubric
from spritesafe.config import OllamaSettings

HOW_TO_START = (
    "Start Ollama (https://ollama.com: `ollama serve`) and pull a vision model, e.g. "
    "`ollama pull qwen2.5vl:3b`; point SPRITESAFE_OLLAMA_HOSTS at it (comma-separated for "
    "several). Without one, `--labeler teacher` labels offline with the open_nsfw model."
)


class NoHostError(RuntimeError):
    """No configured host can serve the model; says what was tried and what to do."""

    def __init__(self, model: str, tried: dict[str, str]) -> None:
        lines = "\n".join(f"  {url}: {why}" for url, why in tried.items())
        super().__init__(f"no Ollama host can serve {model!r}:\n{lines}\n{HOW_TO_START}")
        self.tried = tried


@dataclass(frozen=True)
class CallCost:
    """One request to a host and what it cost, by Ollama's own counters (None: no answer)."""

    host: str
    ok: bool
    duration_ms: float
    prompt_tokens: int | None = None
    eval_tokens: int | None = None


@dataclass
class Job:
    image_id: int
    # The image, or how to make it: made on a worker thread when a host first takes the job,
    # so rendering overlaps the requests in flight instead of coming before them all.
    png: bytes | Callable[[], bytes]
    sample: int = 0
    host_failures: int = 0  # host or server errors so far
    bad_replies: int = 0  # unparseable or invalid answers so far
    last_error: tuple[str, str, str] = ("", "", "")  # kind, detail, raw
    calls: list[CallCost] = field(default_factory=list)  # every request made for it
    temperature: float | None = None  # None: 0 for one sample, else sample_temperature


@dataclass(frozen=True)
class Outcome:
    image_id: int
    sample: int
    answer: Any  # the question's parsed answer (a rubric's: an Answer); None: an error
    error_kind: str | None
    detail: str
    raw: str
    latency_ms: float
    host: str
    calls: tuple[CallCost, ...] = ()


def png_size(png: bytes) -> tuple[int, int]:
    """Width and height from a PNG's header (0, 0 if it is not a PNG)."""
    if png[:8] != b"\x89PNG\r\n\x1a\n" or len(png) < 24:
        return 0, 0
    return int.from_bytes(png[16:20], "big"), int.from_bytes(png[20:24], "big")


@dataclass
class Host:
    url: str
    client: ollama.AsyncClient
    failures: int = 0  # consecutive
    open_until: float = 0.0
    served: int = 0
    errors: Counter[str] = field(default_factory=Counter)


class _HostFailure(Exception):
    def __init__(self, kind: str, detail: str) -> None:
        super().__init__(detail)
        self.kind = kind
        self.detail = detail


def _model_digest(listing: Any, model: str) -> str | None:
    wanted = {model, model if ":" in model else f"{model}:latest"}
    for entry in listing.models:
        if entry.model in wanted:
            return str(entry.digest)
    return None


class OllamaLabeler:
    name = LLM

    def __init__(self, settings: OllamaSettings, rubric: Rubric) -> None:
        self.settings = settings
        self.rubric = rubric
        self.model = settings.model
        self.digest: str | None = None
        self.hosts: list[Host] = []
        self.skipped_hosts: dict[str, str] = {}  # url -> why it is not used

    async def connect(self) -> str:
        """Find the hosts that have the model; returns its digest (all hosts must agree)."""
        tried: dict[str, str] = {}
        candidates: list[tuple[Host, str]] = []
        for url in self.settings.hosts:
            client = ollama.AsyncClient(host=url, timeout=self.settings.timeout_s)
            try:
                digest = _model_digest(await client.list(), self.model)
            except (ConnectionError, httpx.HTTPError, ollama.ResponseError) as exc:
                tried[url] = f"no answer ({type(exc).__name__}: {exc})"
                continue
            if digest is None:
                tried[url] = f"answers, but has no model {self.model!r} (ollama pull {self.model})"
                continue
            candidates.append((Host(url, client), digest))
        if not candidates:
            raise NoHostError(self.model, tried)
        digests = Counter(d for _, d in candidates)
        self.digest = digests.most_common(1)[0][0]
        for host, digest in candidates:
            if digest == self.digest:
                self.hosts.append(host)
            else:
                tried[host.url] = f"has another build of {self.model} ({digest})"
        self.skipped_hosts = tried
        return self.digest

    async def label(
        self,
        jobs: Sequence[Job],
        on_outcome: Callable[[Outcome], None] | None = None,
        question: Question | None = None,
    ) -> list[Outcome]:
        """Ask `question` (default: the rubric's) about every job's image."""
        asked = question or self.rubric
        if not self.hosts:
            await self.connect()
        for host in self.hosts:  # httpx clients belong to one event loop: new loop, new client
            host.client = ollama.AsyncClient(host=host.url, timeout=self.settings.timeout_s)
        queue: asyncio.Queue[Job] = asyncio.Queue()
        for job in jobs:
            queue.put_nowait(job)
        outcomes: list[Outcome] = []
        remaining = len(jobs)
        done = asyncio.Event()
        if remaining == 0:
            return outcomes

        def finish(outcome: Outcome) -> None:
            nonlocal remaining
            outcomes.append(outcome)
            if on_outcome is not None:
                on_outcome(outcome)
            remaining -= 1
            if remaining == 0:
                done.set()

        async def worker(host: Host) -> None:
            while not done.is_set():
                wait = host.open_until - time.monotonic()
                if wait > 0:  # breaker open: let the other hosts take the work
                    await asyncio.sleep(min(wait, 0.5))
                    continue
                try:
                    job = await asyncio.wait_for(queue.get(), timeout=0.5)
                except TimeoutError:
                    continue
                result = await self._attempt(host, job, asked)
                if isinstance(result, Outcome):
                    finish(result)
                else:
                    queue.put_nowait(result)  # try again, on whichever host takes it

        workers = [
            asyncio.create_task(worker(host))
            for host in self.hosts
            for _ in range(self.settings.per_host_concurrency)
        ]
        try:
            await done.wait()
        finally:
            for task in workers:
                task.cancel()
            await asyncio.gather(*workers, return_exceptions=True)
        return outcomes

    async def _attempt(self, host: Host, job: Job, question: Question) -> Outcome | Job:
        cfg = self.settings
        started = time.perf_counter()
        seed = cfg.seed + job.sample + 1000 * job.bad_replies
        temperature = job.temperature
        if temperature is None:
            temperature = 0.0 if cfg.samples == 1 else cfg.sample_temperature
        if not isinstance(job.png, bytes):
            try:
                job.png = await asyncio.to_thread(job.png)
            except Exception as bad:  # an image that no longer renders: recorded, not fatal
                job.last_error = ("unreadable_image", f"{type(bad).__name__}: {bad}", "")
                return self._error(job, host, started)
        try:
            raw, cost = await self._chat(host, question, job.png, seed, temperature)
        except _HostFailure as failure:
            elapsed = (time.perf_counter() - started) * 1000
            job.calls.append(CallCost(host.url, False, elapsed))
            host.errors[failure.kind] += 1
            host.failures += 1
            if host.failures >= cfg.breaker_failures:
                host.open_until = time.monotonic() + cfg.breaker_cooldown_s
            job.host_failures += 1
            job.last_error = (failure.kind, f"{host.url}: {failure.detail}", "")
            if job.host_failures > cfg.retries:
                return self._error(job, host, started)
            await asyncio.sleep(cfg.backoff_s * 2 ** (job.host_failures - 1))
            return job
        job.calls.append(cost)
        host.failures = 0
        host.served += 1
        try:
            answer = question.parse(raw)
        except AnswerError as bad:
            job.bad_replies += 1
            job.last_error = (bad.kind, str(bad), raw)
            if job.bad_replies > 1:
                return self._error(job, host, started)
            return job
        latency = (time.perf_counter() - started) * 1000
        calls = tuple(job.calls)
        return Outcome(job.image_id, job.sample, answer, None, "", raw, latency, host.url, calls)

    def _error(self, job: Job, host: Host, started: float) -> Outcome:
        kind, detail, raw = job.last_error
        latency = (time.perf_counter() - started) * 1000
        calls = tuple(job.calls)
        return Outcome(job.image_id, job.sample, None, kind, detail, raw, latency, host.url, calls)

    async def _chat(
        self, host: Host, question: Question, png: bytes, seed: int, temperature: float
    ) -> tuple[str, CallCost]:
        messages: list[dict[str, Any]] = [
            {"role": "system", "content": question.policy},
            {"role": "user", "content": question.instructions, "images": [png]},
        ]
        try:
            response = await host.client.chat(
                model=self.model,
                messages=messages,
                format=question.schema,
                options={"temperature": temperature, "seed": seed},
                keep_alive=self.settings.keep_alive,
                stream=False,
            )
        except ollama.ResponseError as exc:
            raise _HostFailure(f"http_{exc.status_code}", str(exc.error)) from None
        except httpx.TimeoutException as exc:
            raise _HostFailure("timeout", repr(exc)) from None
        except (ConnectionError, httpx.HTTPError) as exc:
            raise _HostFailure("connection", f"{type(exc).__name__}: {exc}") from None
        cost = CallCost(
            host.url,
            True,
            (response.total_duration or 0) / 1e6,
            response.prompt_eval_count,
            response.eval_count,
        )
        return str(response.message.content or ""), cost
