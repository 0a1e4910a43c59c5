"""Per job type rate limits (``10/s``, ``100/m``, ``5/h``), enforced by each worker.

A limit spaces the starts of a job type evenly: at ``60/m`` one start a second, never a burst.
A worker that receives a job before its turn does not hold it (no sleeping slot, no unacked
message that RabbitMQ's consumer timeout would take back): it **reserves** the next free start
time and sends the job back through the broker's delay, stamped with that time in the header
``x-runner-rate-slot`` (``<attempt>:<epoch ms>``).  When the copy comes back at its time it
runs without taking a second turn.  Limits are per worker, not global: N workers allow N
times the rate (a global limit would need a shared counter on every start).
"""

from __future__ import annotations

import re
import threading
import time

from runner.errors import ConfigError

H_RATE_SLOT = "x-runner-rate-slot"
_RATE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*/\s*(s|sec|m|min|h|hour)\s*$")
_PER = {"s": 1, "sec": 1, "m": 60, "min": 60, "h": 3600, "hour": 3600}
EARLY = 0.05  # seconds a start may come before its slot (the broker's timer granularity)


def parse_rate(text: str, where: str = "rate_limit") -> float:
    """``"10/s"``, ``"100/m"``, ``"5/h"`` -> starts per second (``"0/m"`` is refused)."""
    match = _RATE.match(str(text))
    if not match or float(match.group(1)) <= 0:
        raise ConfigError(f"{where}: {text!r} is not a rate like 10/s, 100/m or 5/h")
    return float(match.group(1)) / _PER[match.group(2)]


class RateLimiter:
    """The start schedule of each limited job type on one worker; thread-safe."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._rates: dict[str, float] = {}  # job type -> starts per second
        self._next: dict[str, float] = {}  # job type -> the next free start time

    def set(self, job: str, rate: str | None) -> dict[str, str]:
        """Limit ``job`` to ``rate`` (``None`` or ``""``: no limit); return every limit."""
        with self._lock:
            if rate:
                self._rates[job] = parse_rate(rate, f"rate limit of {job}")
            else:
                self._rates.pop(job, None)
                self._next.pop(job, None)
            return self.limits()

    def limits(self) -> dict[str, str]:
        return {job: f"{per_s * 60:g}/m" for job, per_s in sorted(self._rates.items())}

    def admit(self, job: str, attempt: int, stamp: object, now: float | None = None) -> tuple[float, str]:
        """How long the job must wait (0: start now) and the stamp to carry while it waits.

        ``stamp`` is the job's ``x-runner-rate-slot`` header: a turn it already holds.
        """
        now = time.time() if now is None else now
        slot = _slot(stamp, attempt)
        if slot is not None:  # its turn was reserved: wait for it, then go without a new one
            wait = slot - now
            return (wait if wait > EARLY else 0.0), str(stamp)
        with self._lock:
            rate = self._rates.get(job)
            if rate is None:
                return 0.0, ""
            start = max(now, self._next.get(job, now))
            self._next[job] = start + 1 / rate
        wait = start - now
        return (wait if wait > EARLY else 0.0), f"{attempt}:{int(start * 1000)}"


def _slot(stamp: object, attempt: int) -> float | None:
    """The reserved start time in a stamp, if it was reserved for this attempt."""
    if not isinstance(stamp, str) or ":" not in stamp:
        return None
    for_attempt, _, ms = stamp.partition(":")
    try:
        return int(ms) / 1000 if int(for_attempt) == attempt else None
    except ValueError:
        return None
