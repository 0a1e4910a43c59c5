"""Periodic job specifications (``[schedule.NAME]``) and when each one is due.

The core is pure: :func:`plan` is a function of *now*, the last slot handled and the spec, so
the beat loop (:mod:`runner.beat`) only sleeps, locks and submits around it.

Slots are aware datetimes.  Cron slots come from cronsim evaluated in the schedule's time zone
(DST: a time that does not exist on a spring-forward day fires once at the end of the gap, a
time that occurs twice on a fall-back day fires once, at its first occurrence).  ``every``
slots are multiples of the interval since the Unix epoch, so every beat process agrees on them.
"""

from __future__ import annotations

import datetime as dt
import enum
import math
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from cronsim import CronSim, CronSimError

from runner.config import parse_duration
from runner.errors import ConfigError

UTC = dt.timezone.utc
SLOT_NAMESPACE = uuid.UUID("5b0c6f2e-8f6e-4d0a-9d57-2f1f3c1c7b0e")  # job ids of fired slots
MAX_GRACE = 60.0  # seconds a slot may be late and still count as on time (never over half a period)
_KEYS = {"job", "cron", "every", "params", "route", "timezone", "missed"}


class Missed(str, enum.Enum):
    """What a beat does with slots that passed while no beat was running."""

    SKIP = "skip"  # forget them; wait for the next slot
    ONCE = "once"  # fire once, for the most recent missed slot


@dataclass(frozen=True)
class ScheduleSpec:
    """One ``[schedule.NAME]`` table."""

    name: str
    job: str
    cron: str | None = None
    every: float | None = None
    params: Mapping[str, Any] = field(default_factory=dict)
    route: str | None = None
    timezone: str = "UTC"
    missed: Missed = Missed.SKIP

    @property
    def zone(self) -> dt.tzinfo:
        return ZoneInfo(self.timezone)

    def next_after(self, moment: dt.datetime) -> dt.datetime:
        """The first slot strictly after ``moment`` (an aware datetime), in UTC.

        UTC because aware datetimes in a repeated hour do not compare across zones.
        """
        if self.every is not None:
            n = math.floor(moment.timestamp() / self.every) + 1
            return dt.datetime.fromtimestamp(n * self.every, UTC)
        assert self.cron is not None
        return next(CronSim(self.cron, moment.astimezone(self.zone))).astimezone(UTC)

    def latest(self, moment: dt.datetime) -> dt.datetime:
        """The last slot at or before ``moment``, in UTC."""
        if self.every is not None:
            n = math.floor(moment.timestamp() / self.every)
            return dt.datetime.fromtimestamp(n * self.every, UTC)
        assert self.cron is not None
        # cronsim's reverse search is strict only on whole minutes: nudge to make it inclusive
        start = (moment + dt.timedelta(microseconds=1)).astimezone(self.zone)
        return next(CronSim(self.cron, start, reverse=True)).astimezone(UTC)

    def upcoming(self, moment: dt.datetime, count: int) -> list[dt.datetime]:
        """The next ``count`` slots after ``moment``, in the schedule's time zone."""
        out: list[dt.datetime] = []
        for _ in range(count):
            moment = self.next_after(moment).astimezone(self.zone)
            out.append(moment)
        return out

    def grace(self, slot: dt.datetime) -> float:
        """Seconds after ``slot`` during which firing it is on time, not a missed run."""
        return min(MAX_GRACE, (self.next_after(slot) - slot).total_seconds() / 2)


@dataclass(frozen=True)
class Plan:
    """What to do at one moment: fire ``fire`` (if any), then record ``handled`` as done."""

    fire: dt.datetime | None
    handled: dt.datetime | None


def plan(spec: ScheduleSpec, now: dt.datetime, last: dt.datetime | None) -> Plan:
    """Decide whether ``spec`` fires at ``now``, given the last slot already handled.

    A slot late by less than :meth:`ScheduleSpec.grace` fires.  Older slots that were never
    handled were missed: with ``missed = "once"`` the most recent of them fires, with
    ``"skip"`` none does.  Without a record (``last is None``) nothing counts as missed.
    """
    latest = spec.latest(now)
    if last is not None and latest <= last:
        return Plan(None, None)
    on_time = (now - latest).total_seconds() <= spec.grace(latest)
    if on_time or (last is not None and spec.missed is Missed.ONCE):
        return Plan(latest, latest)
    return Plan(None, latest)


def slot_job_id(schedule: str, slot: dt.datetime) -> str:
    """The job id of one slot of one schedule: the same in every beat process."""
    return uuid.uuid5(SLOT_NAMESPACE, f"{schedule}:{slot_iso(slot)}").hex


def slot_iso(slot: dt.datetime) -> str:
    """A slot as ISO 8601 UTC, to the second (``2026-03-29T01:00:00Z``)."""
    return slot.astimezone(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


def parse_slot(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text.replace("Z", "+00:00")).astimezone(UTC)


def parse_schedules(table: Mapping[str, Any]) -> list[ScheduleSpec]:
    """The ``[schedule]`` setting -> specs, sorted by name.

    Raises:
        ConfigError: one line naming the schedule and what is wrong with it.
    """
    return [_parse_one(str(name), raw) for name, raw in sorted(table.items())]


def _parse_one(name: str, raw: Any) -> ScheduleSpec:
    where = f"[schedule.{name}]"
    if not isinstance(raw, Mapping):
        raise ConfigError(f"{where}: expected a table with job and cron or every")
    unknown = sorted(set(raw) - _KEYS)
    if unknown:
        raise ConfigError(f"{where}: unknown key {unknown[0]!r} (known: {', '.join(sorted(_KEYS))})")
    job = raw.get("job")
    if not isinstance(job, str) or not job:
        raise ConfigError(f"{where}: job = \"<job type>\" is required")
    cron, every = raw.get("cron"), raw.get("every")
    if (cron is None) == (every is None):
        raise ConfigError(f"{where}: give exactly one of cron = \"0 3 * * *\" or every = \"5m\"")
    zone = str(raw.get("timezone", "UTC"))
    try:
        ZoneInfo(zone)
    except (ZoneInfoNotFoundError, ValueError):
        raise ConfigError(f"{where}: unknown time zone {zone!r} (e.g. Europe/Berlin, UTC)") from None
    if cron is not None:
        try:
            CronSim(str(cron), dt.datetime.now(UTC))
        except CronSimError as exc:
            raise ConfigError(f"{where}: cron {cron!r} is not valid: {exc}") from None
    seconds = None if every is None else parse_duration(every, f"{where} every")
    if seconds is not None and seconds < 1:
        raise ConfigError(f"{where}: every must be at least 1s")
    try:
        missed = Missed(str(raw.get("missed", "skip")))
    except ValueError:
        raise ConfigError(f"{where}: missed must be \"skip\" or \"once\"") from None
    params = raw.get("params", {})
    if not isinstance(params, Mapping):
        raise ConfigError(f"{where}: params must be a table")
    route = raw.get("route")
    return ScheduleSpec(
        name=name, job=job, cron=None if cron is None else str(cron), every=seconds,
        params=dict(params), route=None if route is None else str(route), timezone=zone,
        missed=missed,
    )
