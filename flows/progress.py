"""Stage progress while a flow runs in this process, for whoever listens (the CLI's bars).

Tasks wrap their stage in `stage(name)` and feed its progress callback to the `tick` it
yields; with no listener (a deployment on a worker) that costs nothing. Listeners are
process-wide, not context variables, because Prefect may run a task in another thread.

    with listening(my_listener):
        grow(...)
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass


@dataclass(frozen=True)
class Event:
    stage: str
    state: str  # "running", "done" or "failed"
    done: int | None = None
    total: int | None = None


Listener = Callable[[Event], None]
Tick = Callable[[int, int | None], None]  # (done, total or None when unknown)

_listeners: list[Listener] = []
_lock = threading.Lock()


@contextmanager
def listening(listener: Listener) -> Iterator[None]:
    with _lock:
        _listeners.append(listener)
    try:
        yield
    finally:
        with _lock:
            _listeners.remove(listener)


def _emit(event: Event) -> None:
    with _lock:
        listeners = list(_listeners)
    for listener in listeners:
        listener(event)


@contextmanager
def stage(name: str) -> Iterator[Tick]:
    """Announce `name` as running, yield its tick, then announce it done (or failed)."""
    _emit(Event(name, "running"))

    def tick(done: int, total: int | None = None) -> None:
        _emit(Event(name, "running", done, total))

    try:
        yield tick
    except BaseException:
        _emit(Event(name, "failed"))
        raise
    _emit(Event(name, "done"))
