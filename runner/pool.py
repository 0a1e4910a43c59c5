"""How many slots a worker offers: resized by hand (``runner control pool``) or by the autoscaler.

A worker reserves its largest size at start (``--concurrency MIN..MAX``: MAX slots, each with
its thread and, as root, its uid) and offers the broker only the current size as prefetch, so
growing and shrinking never start or stop threads: the broker simply hands out more or fewer
deliveries.  The autoscaler grows the pool by one slot a second while jobs wait in the queue
and every offered slot is busy, and shrinks it by one after ``scale_idle`` seconds with a free
slot and an empty queue, never below MIN.  It reads the queue depth over its own connection.
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Any

from runner.broker import Broker, connect

if TYPE_CHECKING:
    from runner.worker import Worker

log = logging.getLogger(__name__)
SCALE_INTERVAL = 1.0


class Pool:
    """The offered size of a worker's pool, between 1 and the slots it reserved."""

    def __init__(self, worker: Worker, size: int, floor: int = 0) -> None:
        self.worker = worker
        self.max = worker.concurrency
        self.floor = max(1, floor)
        self.size = max(1, min(self.max, size))
        self._thread: threading.Thread | None = None
        self._stop = threading.Event()

    def resize(self, size: int) -> dict[str, int]:
        """Offer ``size`` slots (clamped to 1..max); returns the new size and the maximum."""
        size = max(1, min(self.max, int(size)))
        if size != self.size:
            self.size = size
            self.worker.broker.set_prefetch(size)
            log.info("pool resized to %d of %d slots", size, self.max)
        return {"slots": self.size, "max": self.max}

    # --- autoscaling ---------------------------------------------------------------------------
    def start_autoscaler(self, broker_url: str, idle: float) -> None:
        self._thread = threading.Thread(
            target=self._loop, args=(broker_url, idle), name="autoscaler", daemon=True
        )
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(10)

    def _loop(self, broker_url: str, idle: float) -> None:
        side: Broker | None = None
        idle_since: float | None = None
        while not self._stop.wait(SCALE_INTERVAL):
            try:
                if side is None:
                    side = connect(broker_url)
                depth = side.queue_depth(self.worker.queue)
            except Exception as exc:  # the broker is away: try again next tick
                log.debug("autoscaler: no queue depth (%s)", exc)
                _close(side)
                side = None
                continue
            busy = self.worker.busy()
            if depth > 0 and busy >= self.size and self.size < self.max:
                self.resize(self.size + 1)
                idle_since = None
            elif busy < self.size and depth == 0 and self.size > self.floor:
                idle_since = idle_since or time.monotonic()
                if time.monotonic() - idle_since >= idle:
                    self.resize(self.size - 1)
                    idle_since = time.monotonic()
            else:
                idle_since = None
        _close(side)


def _close(broker: Any) -> None:
    if broker is not None:
        try:
            broker.close()
        except Exception:  # already gone
            pass
