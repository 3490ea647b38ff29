"""Labelling throughput of `labelers.ollama.OllamaLabeler` against fake Ollama hosts.

Targets (from the issue): against the test server with a set per-request latency L and
server-side parallelism P, the labeler sustains >= 95% of the server's capacity (P / L) with 1
host and scales ~linearly to 4 hosts; the pipeline's own overhead per image <= 2 ms.

    .venv/bin/python -m bench.label_bench [--hosts 1,2,4] [--latency 0.05] [--parallelism 4]
        [--seconds 4] [--servers process|thread]

Setup (not timed): H `tests.ollama_server.FakeOllama` hosts (same model name and digest,
`latency_s` L, `parallelism` P, a fixed valid answer), by default all in one separate process
so that they do not share this process's GIL with the client: a real Ollama is another process
too, usually on another machine. `--servers thread` runs them in this process instead.
Sprites: random 16x16 pixel-art RGBA sprites passed through `labelers.views.llm_view` (what
the label stage sends: canonical, enlarged to about `image_size`), reused round-robin.

Timed, per H: `asyncio.run(labeler.label(jobs))` for N = H x P / L x `--seconds` jobs with
`per_host_concurrency` = 2 x P unless `--concurrency` says otherwise (after a short untimed warm-up
run); achieved images/s against the capacity H x P / L. Overhead: the same with L = 0, one
host and one request at a time; the time per image minus the server's own handling time
(request read -> response written, as the fake server records it) is what the pipeline
(client, ollama/httpx, HTTP over loopback, answer parsing) adds per image. Figures are printed
and written to bench/out/label_bench.json. The exit status is 1 when a run does not return a
valid answer for every job exactly once, or a server saw other than one chat request per job.
"""

from __future__ import annotations

import argparse
import asyncio
import io
import json
import multiprocessing
import os
import statistics
import sys
import time
from collections import Counter
from collections.abc import Callable
from multiprocessing.connection import Connection
from pathlib import Path
from typing import Any, Protocol

import jsonschema
import numpy as np
from numpy.typing import NDArray
from PIL import Image

from bench.common import machine, report_machine, write_figures
from labelers.ollama import Job, OllamaLabeler, Outcome
from labelers.rubric import Rubric, load_rubric
from labelers.views import llm_view
from spritesafe.config import OllamaSettings, Settings
from tests.ollama_server import ChatRequestInfo, FakeOllama, fake_digest

OUT_DIR = Path(__file__).resolve().parent / "out"
MODEL = "qwen2.5vl:3b"
DIGEST = "sha256:" + fake_digest(f"label-bench:{MODEL}")
ANSWER = json.dumps(
    {
        "category": "safe",
        "scores": {"safe": 0.91, "suggestive": 0.07, "explicit": 0.02},
        "rationale": "A small pixel-art sprite of an ordinary object; nothing suggestive.",
    }
)
TARGET_CAPACITY_SHARE = 0.95
TARGET_SCALING = 0.90  # our reading of "~linear": each host adds >= 90% of one host's rate
TARGET_OVERHEAD_MS = 2.0


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m bench.label_bench", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--hosts", default="1,2,4", help="host counts to run, comma-separated")
    parser.add_argument("--latency", type=float, default=0.05, help="server seconds per request")
    parser.add_argument("--parallelism", type=int, default=4, help="server slots per host (P)")
    parser.add_argument(
        "--seconds", type=float, default=4.0, help="N = hosts x P / latency x this, per run"
    )
    parser.add_argument(
        "--concurrency",
        type=int,
        default=0,
        help="labeler per_host_concurrency (0: 2 x P, so the server's queue never runs dry)",
    )
    parser.add_argument("--n", type=int, default=0, help="jobs per run per host (0: --seconds)")
    parser.add_argument(
        "--overhead-n", type=int, default=1_000, help="jobs of the zero-latency overhead run"
    )
    parser.add_argument(
        "--servers",
        choices=("process", "thread"),
        default="process",
        help="fake hosts in one separate process (default) or in threads of this process",
    )
    parser.add_argument("--sprites", type=int, default=64, help="distinct sprites, reused")
    parser.add_argument("--seed", type=int, default=20240601)
    parser.add_argument("--out", type=Path, default=OUT_DIR / "label_bench.json")
    args = parser.parse_args(argv)
    try:
        args.host_counts = sorted({int(h) for h in args.hosts.split(",") if h.strip()})
    except ValueError:
        parser.error("--hosts must be integers, comma-separated")
    if not args.host_counts or min(args.host_counts) < 1:
        parser.error("--hosts must be >= 1")
    if args.latency <= 0:
        parser.error("--latency must be > 0 (the overhead run uses 0 on its own)")
    if args.parallelism < 1 or args.seconds <= 0 or args.n < 0 or args.sprites < 1:
        parser.error("--parallelism, --seconds and --sprites must be >= 1 (> 0), --n >= 0")
    if args.concurrency < 0:
        parser.error("--concurrency must be >= 0")
    # A client that keeps only P requests out leaves the server idle while it handles each
    # reply; like any pipelined client it needs more outstanding than the server's slots.
    args.concurrency = args.concurrency or 2 * args.parallelism
    if args.overhead_n < 1:
        parser.error("--overhead-n must be >= 1")
    return args


# -- fake hosts ------------------------------------------------------------------------------


def fixed_answer(info: ChatRequestInfo) -> str:
    return ANSWER


class LocalHosts:
    """H fake hosts in this process (threads)."""

    def __init__(self, hosts: int, latency_s: float, parallelism: int) -> None:
        self.servers: list[FakeOllama] = []
        try:
            for _ in range(hosts):
                server = FakeOllama(
                    {MODEL: DIGEST},
                    responder=fixed_answer,
                    latency_s=latency_s,
                    parallelism=parallelism,
                )
                self.servers.append(server.start())
        except BaseException:
            self.stop()
            raise
        self.urls = [s.url for s in self.servers]

    def reset(self) -> None:
        for server in self.servers:
            server.reset()

    def stats(self) -> dict[str, Any]:
        """Per host: chat requests, max in flight, and (arrived, finished, status) of each."""
        chats = [s.chat_requests for s in self.servers]
        return {
            "chat_count": [len(c) for c in chats],
            "max_in_flight": [s.max_in_flight for s in self.servers],
            "timings": [(r.arrived, r.finished, r.status) for c in chats for r in c if r.finished],
        }

    def stop(self) -> None:
        for server in self.servers:
            server.stop()


def _serve(conn: Connection, hosts: int, latency_s: float, parallelism: int) -> None:
    """Child process: run LocalHosts and answer 'reset', 'stats' and 'stop' over the pipe."""
    group = LocalHosts(hosts, latency_s, parallelism)
    conn.send(group.urls)
    while True:
        command = conn.recv()
        if command == "reset":
            group.reset()
            conn.send(None)
        elif command == "stats":
            conn.send(group.stats())
        else:
            group.stop()
            conn.send(None)
            return


class Hosts(Protocol):
    urls: list[str]

    def reset(self) -> None: ...
    def stats(self) -> dict[str, Any]: ...
    def stop(self) -> None: ...


class ProcessHosts:
    """The same H fake hosts, in one separate process (time.monotonic is system-wide)."""

    def __init__(self, hosts: int, latency_s: float, parallelism: int) -> None:
        ctx = multiprocessing.get_context("spawn")
        self.conn, child = ctx.Pipe()
        self.process = ctx.Process(
            target=_serve, args=(child, hosts, latency_s, parallelism), daemon=True
        )
        self.process.start()
        child.close()
        if not self.conn.poll(60):
            self.process.kill()
            raise RuntimeError("fake Ollama process did not start")
        self.urls: list[str] = self.conn.recv()

    def _call(self, command: str) -> Any:
        self.conn.send(command)
        return self.conn.recv()

    def reset(self) -> None:
        self._call("reset")

    def stats(self) -> dict[str, Any]:
        result: dict[str, Any] = self._call("stats")
        return result

    def stop(self) -> None:
        try:
            self._call("stop")
        finally:
            self.process.join(10)
            if self.process.is_alive():
                self.process.kill()


def start_hosts(kind: str, hosts: int, latency_s: float, parallelism: int) -> Hosts:
    if kind == "thread":
        return LocalHosts(hosts, latency_s, parallelism)
    return ProcessHosts(hosts, latency_s, parallelism)


# -- runs ------------------------------------------------------------------------------------


def sprite_png(rng: np.random.Generator, size: int = 16, colors: int = 5) -> bytes:
    """A random pixel-art-like RGBA sprite (a few colours, transparent background) as PNG."""
    palette = rng.integers(0, 256, (colors, 4), dtype=np.uint8)
    palette[:, 3] = 255
    palette[0] = 0
    pixels: NDArray[np.uint8] = palette[rng.integers(0, colors, (size, size))]
    buffer = io.BytesIO()
    Image.fromarray(pixels, "RGBA").save(buffer, "PNG")
    return buffer.getvalue()


def make_views(count: int, seed: int) -> tuple[list[bytes], float]:
    """`count` distinct LLM views of random 16x16 sprites; and llm_view's ms per image."""
    rng = np.random.default_rng(seed)
    raw = [sprite_png(rng) for _ in range(count)]
    settings = Settings()
    started = time.perf_counter()
    views = [llm_view(data, settings) for data in raw]
    ms = (time.perf_counter() - started) * 1000 / count
    return views, ms


def make_jobs(views: list[bytes], n: int) -> list[Job]:
    return [Job(i, views[i % len(views)]) for i in range(n)]


def check_outcomes(outcomes: list[Outcome], n: int, stats: dict[str, Any]) -> list[str]:
    problems = []
    answered = [o for o in outcomes if o.answer is not None]
    if len(answered) != n or len({o.image_id for o in answered}) != n:
        kinds = Counter(o.error_kind for o in outcomes if o.answer is None)
        problems.append(
            f"{len(answered):,} of {n:,} jobs answered ({len(outcomes):,} outcomes,"
            f" {len({o.image_id for o in outcomes}):,} distinct; errors {dict(kinds)})"
        )
    chats = sum(stats["chat_count"])
    if chats != n:
        problems.append(f"servers saw {chats:,} chat requests for {n:,} jobs")
    return problems


def run_once(
    hosts: Hosts, rubric: Rubric, concurrency: int, views: list[bytes], n: int, warmup: int
) -> dict[str, Any]:
    """Connect, warm up (untimed), then time one label() call of n jobs."""
    settings = OllamaSettings(
        hosts=hosts.urls,
        model=MODEL,
        per_host_concurrency=concurrency,
        timeout_s=30.0,
        backoff_s=0.01,
    )
    labeler = OllamaLabeler(settings, rubric)
    asyncio.run(labeler.connect())
    problems = []
    if len(labeler.hosts) != len(hosts.urls):
        problems.append(f"connected to {len(labeler.hosts)} of {len(hosts.urls)} hosts")
    if warmup:
        asyncio.run(labeler.label(make_jobs(views, warmup)))
    served_before = [h.served for h in labeler.hosts]
    hosts.reset()
    jobs = make_jobs(views, n)
    cpu_started = time.process_time()
    mono_started = time.monotonic()  # the servers' clock (system-wide, also across processes)
    started = time.perf_counter()
    outcomes = asyncio.run(labeler.label(jobs))
    seconds = time.perf_counter() - started
    cpu_s = time.process_time() - cpu_started
    stats = hosts.stats()
    problems += check_outcomes(outcomes, n, stats)
    server_ms = [(finished - arrived) * 1000 for arrived, finished, _ in stats["timings"]]
    first_arrival = min((arrived for arrived, _, _ in stats["timings"]), default=mono_started)
    latency_ms = [o.latency_ms for o in outcomes]
    return {
        "n": n,
        "seconds": round(seconds, 4),
        "images_per_s": round(n / seconds, 2),
        "client_cpu_s": round(cpu_s, 3),
        "client_cpu_ms_per_image": round(cpu_s * 1000 / n, 3),
        "server_ms_mean": round(statistics.fmean(server_ms), 3) if server_ms else None,
        # label() start -> first chat request at a server: new clients, connections
        "startup_ms": round((first_arrival - mono_started) * 1000, 1),
        "outcome_latency_ms_mean": round(statistics.fmean(latency_ms), 3) if latency_ms else None,
        "outcome_latency_ms_p99": (
            round(float(np.percentile(latency_ms, 99)), 3) if latency_ms else None
        ),
        "served_per_host": [
            h.served - b for h, b in zip(labeler.hosts, served_before, strict=True)
        ],
        "chat_requests_per_host": stats["chat_count"],
        "max_in_flight_per_host": stats["max_in_flight"],
        "failures": problems,
    }


def per_call_us(fn: Callable[[], object], calls: int = 2_000) -> float:
    fn()
    started = time.perf_counter()
    for _ in range(calls):
        fn()
    return (time.perf_counter() - started) * 1e6 / calls


def parse_diagnostics(rubric: Rubric) -> dict[str, float]:
    """Microseconds per answer: `Rubric.parse`, and its schema check two ways."""
    data = json.loads(ANSWER)
    built_once = jsonschema.Draft202012Validator(rubric.schema)
    return {
        "rubric_parse_us": round(per_call_us(lambda: rubric.parse(ANSWER)), 1),
        "jsonschema_validate_us": round(
            per_call_us(lambda: jsonschema.validate(data, rubric.schema)), 1
        ),
        "validator_built_once_us": round(per_call_us(lambda: built_once.validate(data)), 1),
    }


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    failures: list[str] = []
    cpus = os.cpu_count() or 1
    figures: dict[str, Any] = {
        "bench": "label",
        "latency_s": args.latency,
        "parallelism": args.parallelism,
        "per_host_concurrency": args.concurrency,
        "servers": args.servers,
        **machine(),
    }
    rubric = load_rubric()
    rubric.parse(ANSWER)  # the fixed answer must be valid for the rubric, or nothing is measured
    views, view_ms = make_views(args.sprites, args.seed)
    figures["views"] = {
        "distinct": len(views),
        "mean_bytes": round(statistics.fmean(len(v) for v in views)),
        "llm_view_ms_per_image": round(view_ms, 3),
    }
    where = (
        "in one separate process (its own GIL; it and this client share the CPUs)"
        if args.servers == "process"
        else "in threads of this process (they share the client's GIL and CPU)"
    )
    print(
        f"setup: {len(views)} distinct 16x16 sprites as LLM views"
        f" ({figures['views']['mean_bytes']:,} bytes PNG each, not timed); fake Ollama hosts"
        f" {where}; {cpus} CPU(s) on this machine"
    )
    print(
        f"server per host: latency {args.latency * 1000:g} ms, parallelism P = {args.parallelism};"
        f" labeler per_host_concurrency = {args.concurrency}"
        f"{' (= 2 x P)' if args.concurrency == 2 * args.parallelism else ''}"
    )

    p, lat = args.parallelism, args.latency
    runs: dict[str, Any] = {}
    for h in args.host_counts:
        n = args.n * h if args.n else max(1, round(h * p / lat * args.seconds))
        capacity = h * p / lat
        hosts = start_hosts(args.servers, h, lat, p)
        try:
            run = run_once(hosts, rubric, args.concurrency, views, n, warmup=2 * h * p)
        finally:
            hosts.stop()
        run["hosts"] = h
        run["capacity_per_s"] = round(capacity, 2)
        run["share_of_capacity"] = round(run["images_per_s"] / capacity, 4)
        runs[str(h)] = run
        failures += [f"{h} host(s): {p}" for p in run["failures"]]
        print(
            f"{h} host(s): {n:,} images in {run['seconds']:.2f} s = {run['images_per_s']:,.1f}"
            f" images/s; capacity {capacity:,.0f}/s; {run['share_of_capacity']:.1%} of capacity;"
            f" per image: latency {run['outcome_latency_ms_mean']:.1f} ms (p99"
            f" {run['outcome_latency_ms_p99']:.1f}), server {run['server_ms_mean']:.1f} ms,"
            f" client CPU {run['client_cpu_ms_per_image']:.2f} ms; first request after"
            f" {run['startup_ms']:.0f} ms; served per host {run['served_per_host']},"
            f" max in flight {run['max_in_flight_per_host']}"
        )
    figures["runs"] = runs

    base = runs.get("1")
    scaling: dict[str, float] = {}
    if base is not None:
        for key, run in runs.items():
            if key != "1":
                scaling[key] = round(run["images_per_s"] / (run["hosts"] * base["images_per_s"]), 4)
                print(
                    f"scaling {key} hosts: {run['images_per_s']:,.1f} / ({key} x"
                    f" {base['images_per_s']:,.1f}) = {scaling[key]:.1%} of linear"
                )
    figures["scaling_vs_linear"] = scaling

    # Overhead: zero model latency, one host, one request at a time.
    hosts = start_hosts(args.servers, 1, 0.0, 1)
    try:
        over = run_once(hosts, rubric, 1, views, args.overhead_n, warmup=20)
    finally:
        hosts.stop()
    failures += [f"overhead run: {p}" for p in over["failures"]]
    per_image_ms = over["seconds"] * 1000 / over["n"]
    overhead_ms = per_image_ms - (over["server_ms_mean"] or 0.0)
    over["wall_ms_per_image"] = round(per_image_ms, 3)
    over["overhead_ms_per_image"] = round(overhead_ms, 3)
    figures["overhead"] = over
    print(
        f"zero latency, 1 host, 1 at a time: {over['n']:,} images in {over['seconds']:.2f} s ="
        f" {per_image_ms:.3f} ms per image end to end (client + HTTP + parsing + server stub);"
        f" server stub's own handling {over['server_ms_mean']:.3f} ms; pipeline overhead"
        f" {overhead_ms:.3f} ms per image; client CPU {over['client_cpu_ms_per_image']:.3f}"
        f" ms per image{'' if args.servers == 'process' else ' (includes the servers)'}"
    )
    diag = parse_diagnostics(rubric)
    figures["diagnostics"] = diag
    print(
        f"diagnostics: Rubric.parse {diag['rubric_parse_us']:,.0f} us per answer; for comparison"
        f" jsonschema.validate (re-checks the schema itself on every call, not used)"
        f" {diag['jsonschema_validate_us']:,.0f} us; a validator built once would take"
        f" {diag['validator_built_once_us']:,.0f} us"
    )
    print(
        f"diagnostics: llm_view (stage-side, before the labeler, not counted above)"
        f" {view_ms:.2f} ms per image"
    )
    if args.servers == "process":
        print(
            f"note: {cpus} CPU(s): the fake hosts (one process, threads) and this client share"
            " them; at H hosts the server process handles H x P / L requests/s too"
        )
    else:
        print(
            "note: the fake hosts are threads of this process: their Python work holds the GIL"
            " the client's event loop needs, so these figures understate the labeler"
        )

    report_machine(figures, children=args.servers == "process")
    targets: dict[str, Any] = {}
    if base is not None:
        share = base["share_of_capacity"]
        passed = share >= TARGET_CAPACITY_SHARE
        targets["capacity_1_host"] = {"min": TARGET_CAPACITY_SHARE, "value": share, "pass": passed}
        print(
            f"target: >= {TARGET_CAPACITY_SHARE:.0%} of capacity at 1 host:"
            f" {'PASS' if passed else 'FAIL'} ({share:.1%})"
        )
    top = str(max(args.host_counts))
    if top in scaling:
        passed = scaling[top] >= TARGET_SCALING
        targets["scaling"] = {
            "hosts": int(top),
            "min": TARGET_SCALING,
            "value": scaling[top],
            "pass": passed,
        }
        print(
            f"target: ~linear to {top} hosts (>= {TARGET_SCALING:.0%} of {top} x the 1-host"
            f" rate): {'PASS' if passed else 'FAIL'} ({scaling[top]:.1%}; "
            f"{runs[top]['share_of_capacity']:.1%} of capacity)"
        )
    passed = overhead_ms <= TARGET_OVERHEAD_MS
    targets["overhead_ms"] = {"max": TARGET_OVERHEAD_MS, "value": round(overhead_ms, 3)}
    targets["overhead_ms"]["pass"] = passed
    print(
        f"target: overhead <= {TARGET_OVERHEAD_MS:g} ms per image: {'PASS' if passed else 'FAIL'}"
        f" ({overhead_ms:.3f} ms)"
    )
    figures["targets"] = targets

    return write_figures(figures, args.out, failures)


if __name__ == "__main__":
    sys.exit(main())
