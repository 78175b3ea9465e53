"""The cyclic garbage collector, tamed for long-running services.

A service imports FastAPI, pydantic, SQLAlchemy, aio-pika, OpenTelemetry, ...: ~145,000
objects that live as long as the process. CPython's full collection walks every one of them:
85 ms on this 2-core VM with nothing else running, and measured during a drop storm 140-280 ms
in a booking replica, 70-190 ms in the gateway, up to ~950 ms in a niced consumer. A storm
fills the young generations fast (every request in flight survives a young collection), so a
full collection came about once per storm per process, stalling every request that process
held; notifications, catching up after the storms of one bench run, ran 54 of them.

After start-up we collect once and `gc.freeze()` what is left: those objects move to a
permanent generation that later collections do not walk. Cycles created afterwards are still
collected; a frozen object that becomes garbage is merely never freed (start-up objects live as
long as the process anyway). The young generation's threshold is raised so that requests in
flight have ended before a collection would promote them.

`release()` at shutdown undoes the freeze. Collections are observable:
`python_gc_pause_seconds{generation}` (a histogram).
"""

from __future__ import annotations

import gc
import logging
import time
from typing import Any

from prometheus_client import Histogram

log = logging.getLogger("dropslot.heap")

GC_PAUSE = Histogram(
    "python_gc_pause_seconds", "Time the cyclic garbage collector stopped the process", ["generation"],
    buckets=(0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0),
)
YOUNG_THRESHOLD = 10_000  # CPython's default is 700 allocations

_started: list[float] = []
_installed = False


def _observe(phase: str, info: dict[str, Any]) -> None:
    if phase == "start":
        _started.append(time.perf_counter())
    elif _started:
        GC_PAUSE.labels(str(info["generation"])).observe(time.perf_counter() - _started.pop())


def settle() -> int:
    """Call once the process has started (imports done, app built, pools open): collects once,
    freezes the survivors and raises the young threshold. Returns how many objects were frozen.
    Safe to call again (e.g. a test building several apps): each call freezes what is new."""
    global _installed
    if not _installed:
        gc.callbacks.append(_observe)
        _installed = True
    gc.collect()
    gc.freeze()
    young, older, oldest = gc.get_threshold()
    gc.set_threshold(max(YOUNG_THRESHOLD, young), older, oldest)
    frozen = gc.get_freeze_count()
    log.debug("heap settled: %d objects frozen", frozen)
    return frozen


def release() -> None:
    """At shutdown: frozen objects become collectable again (matters where apps start and stop
    inside one process, as in tests; a frozen cycle that became garbage is never freed)."""
    gc.unfreeze()
