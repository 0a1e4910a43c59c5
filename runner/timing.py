"""Points in time given by people: ``--eta 2026-12-01T08:00Z``, ``--expires 10m``.

An instant is ISO 8601 (``2026-12-01T08:00Z``, ``2026-12-01 09:00+01:00``); one without an
offset is local time on the machine that reads it.  A relative time is a duration
(:func:`runner.config.parse_duration`) counted from *now*.
"""

from __future__ import annotations

import datetime as dt
import time
from typing import Any

from runner.config import parse_duration
from runner.errors import ConfigError, JobError


def parse_instant(value: Any, where: str = "time") -> float:
    """An ISO 8601 date-time (or a ``datetime``) -> epoch seconds."""
    if isinstance(value, dt.datetime):
        moment = value
    else:
        try:
            moment = dt.datetime.fromisoformat(str(value).strip())
        except ValueError:
            raise ConfigError(
                f"{where}: {value!r} is not an ISO 8601 time like 2026-12-01T08:00Z"
            ) from None
    if moment.tzinfo is None:
        moment = moment.astimezone()  # local time of this machine
    return moment.timestamp()


def parse_when(value: Any, where: str = "time", now: float | None = None) -> float:
    """A duration from now (``90s``, ``10m``, a number of seconds) or an ISO 8601 instant
    (``2026-12-01T08:00Z``) -> epoch seconds."""
    now = time.time() if now is None else now
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        return now + float(value)
    if isinstance(value, dt.timedelta):
        return now + value.total_seconds()
    try:
        return now + parse_duration(value, where)
    except ConfigError:
        pass
    try:
        return parse_instant(value, where)
    except ConfigError:
        raise ConfigError(
            f"{where}: {value!r} is neither a duration like 10m nor an ISO 8601 time"
        ) from None


def iso(epoch: float) -> str:
    """Epoch seconds as an ISO 8601 UTC time, to the second."""
    stamp = dt.datetime.fromtimestamp(epoch, dt.timezone.utc)
    return stamp.isoformat(timespec="seconds").replace("+00:00", "Z")


def schedule(delay: float, eta: Any, expires: Any) -> tuple[float, float | None]:
    """A submission's delay (``eta`` turned into one) and expiry (epoch seconds), checked.

    Raises:
        JobError: both a delay and an eta, a time that cannot be read, or an expiry that is
            not after the earliest start.
    """
    now = time.time()
    try:
        if eta is not None:
            if delay:
                raise JobError("give either a delay or an eta, not both")
            delay = max(0.0, parse_instant(eta, "eta") - now)
        expires_at = None if expires is None else parse_when(expires, "expires", now)
    except ConfigError as exc:
        raise JobError(str(exc)) from exc
    if expires_at is not None and expires_at <= now + delay:
        raise JobError("the job would expire before it may start (expires is not after eta/delay)")
    return delay, expires_at
