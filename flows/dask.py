"""The optional Dask task runner (prefect-dask) for the CPU-heavy work of the flows.

`task_runner(settings)` gives grow/rebuild a DaskTaskRunner: a local cluster of
`flows.dask_workers` processes started for the run, or the scheduler at `flows.dask_address`.
The stages stay plain functions; a task hands them `executor()`, the cluster's
concurrent.futures executor, and they submit their chunks to it: ingest's decode/hash
(corpus.ingest.Analyzer) and scoring (export.scores.score_chunk). Without Dask, the same
stages use their own process pool or run inline.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from concurrent.futures import Executor
from contextlib import contextmanager
from typing import Any

from spritesafe.config import Settings


class DaskUnavailable(RuntimeError):
    pass


def task_runner(settings: Settings) -> Any:
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError as exc:
        raise DaskUnavailable(
            "the Dask task runner needs prefect-dask: pip install -e '.[dask]'"
        ) from exc
    flows = settings.flows
    if flows.dask_address:
        return DaskTaskRunner(address=flows.dask_address)
    workers = flows.dask_workers or os.cpu_count() or 1
    # One thread per process: decoding holds the GIL, so threads would not add speed.
    return DaskTaskRunner(
        cluster_kwargs={"n_workers": workers, "threads_per_worker": 1, "processes": True}
    )


@contextmanager
def executor() -> Iterator[Executor | None]:
    """The cluster's executor when the running flow has a DaskTaskRunner, else None."""
    from prefect.context import FlowRunContext

    context = FlowRunContext.get()
    try:
        from prefect_dask.task_runners import DaskTaskRunner
    except ImportError:
        yield None
        return
    if context is None or not isinstance(context.task_runner, DaskTaskRunner):
        yield None
        return
    # The runner's client, which starts (or connects to) the cluster on first use and keeps
    # it for the flow run. Not prefect_dask.get_dask_client(): called inside a task it
    # expects to be on a Dask worker, and our tasks run in the flow's process.
    cluster: Executor = context.task_runner.client.get_executor()  # type: ignore[no-untyped-call]
    yield cluster
