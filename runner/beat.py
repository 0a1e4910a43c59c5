"""``runner beat``: submit periodic jobs, one beat process at a time.

Any number of beat processes may run; they elect a leader through the broker
(:meth:`~runner.broker.Broker.acquire_leader`) and only the leader fires.  Before it submits a
slot, the leader records it as handled in a durable record in the broker
(:data:`STATE_RECORD`), and it re-reads that record before every firing, so a new leader (after
a crash, a restart or a take-over) never fires a slot that was fired already.  Each slot's job
id is derived from the schedule name and the slot (:func:`runner.schedule.slot_job_id`).
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass

from runner.broker import Broker
from runner.schedule import UTC, ScheduleSpec, parse_slot, plan, slot_iso, slot_job_id

log = logging.getLogger(__name__)
LEADER_LOCK = "runner.beat.leader"
STATE_RECORD = "runner.beat.state"
LEASE = 10.0  # seconds a sqlite leader keeps the lock without renewing it
RENEW = 2.0  # seconds between two calls to acquire_leader, by the leader and the standbys

Clock = Callable[[], dt.datetime]


def utc_now() -> dt.datetime:
    return dt.datetime.now(UTC)


@dataclass(frozen=True)
class Fired:
    """One slot submitted."""

    schedule: str
    slot: dt.datetime
    job_id: str


class Beat:
    """The beat loop over a set of schedules.

    Args:
        broker: holds the leader lock and the state record (the submitting client's broker).
        submit: submits one job: ``submit(spec, job_id)``; raises on failure.
        specs: the schedules.
        clock: the time now, an aware datetime (tests inject their own).
    """

    def __init__(
        self,
        broker: Broker,
        submit: Callable[[ScheduleSpec, str], None],
        specs: Sequence[ScheduleSpec],
        clock: Clock = utc_now,
        lock: str = LEADER_LOCK,
        record: str = STATE_RECORD,
    ) -> None:
        self.broker = broker
        self.submit = submit
        self.specs = list(specs)
        self.clock = clock
        self.lock = lock
        self.record = record
        self.stopping = threading.Event()
        self.leading = False

    def stop(self) -> None:
        """Make :meth:`run` return soon; safe from a signal handler."""
        self.stopping.set()

    def state(self) -> dict[str, dt.datetime]:
        """The last slot handled per schedule, as the broker records it."""
        body = self.broker.load_record(self.record)
        if not body:
            return {}
        try:
            raw = json.loads(body)
            return {str(k): parse_slot(str(v)) for k, v in raw.items()}
        except (ValueError, AttributeError):
            log.warning("ignoring an unreadable beat state record %s", self.record)
            return {}

    def lead(self) -> bool:
        """Take or keep the leadership; log changes."""
        leading = self.broker.acquire_leader(self.lock, LEASE)
        if leading != self.leading:
            log.info("beat %s", "leads: firing schedules" if leading else "stands by: another beat leads")
        self.leading = leading
        return leading

    def tick(self) -> list[Fired]:
        """Fire what is due now (the caller holds the leadership)."""
        now = self.clock()
        names = {spec.name for spec in self.specs}
        state = {k: v for k, v in self.state().items() if k in names}  # drop removed schedules
        fired: list[Fired] = []
        for spec in self.specs:
            decision = plan(spec, now, state.get(spec.name))
            if decision.handled is None:
                continue
            # Recorded before submitting: a crash in between loses the slot rather than
            # letting the next leader fire it a second time.
            state[spec.name] = decision.handled
            self.broker.store_record(
                self.record, json.dumps({k: slot_iso(v) for k, v in state.items()}).encode()
            )
            if decision.fire is None:
                log.info("schedule %s: skipped missed slot %s", spec.name, slot_iso(decision.handled))
                continue
            job_id = slot_job_id(spec.name, decision.fire)
            try:
                self.submit(spec, job_id)
            except Exception as exc:  # one broken schedule must not stop the others
                log.error("schedule %s: slot %s not submitted: %s", spec.name, slot_iso(decision.fire), exc)
                continue
            log.info("schedule %s: fired slot %s as job %s (%s)", spec.name, slot_iso(decision.fire), job_id, spec.job)
            fired.append(Fired(spec.name, decision.fire, job_id))
        return fired

    def seconds_to_next(self) -> float:
        now = self.clock()
        if not self.specs:
            return RENEW
        nearest = min(spec.next_after(now) for spec in self.specs)
        return max(0.0, (nearest - now).total_seconds())

    def run(self, once: bool = False) -> None:
        """Fire schedules until :meth:`stop` (or one round with ``once``)."""
        try:
            while not self.stopping.is_set():
                if self.lead():
                    self.tick()
                if once:
                    return
                wait = min(RENEW, self.seconds_to_next()) if self.leading else RENEW
                self.stopping.wait(wait + 0.001)  # wake just after the slot, not just before
        finally:
            if self.leading:
                self.broker.release_leader(self.lock)


def upcoming(specs: Sequence[ScheduleSpec], count: int = 3, now: dt.datetime | None = None) -> list[dict[str, object]]:
    """Each schedule with its next ``count`` run times, local and UTC (for ``--list``)."""
    now = now or utc_now()
    out: list[dict[str, object]] = []
    for spec in specs:
        runs = spec.upcoming(now, count)
        out.append({
            "name": spec.name, "job": spec.job, "cron": spec.cron,
            "every": spec.every, "timezone": spec.timezone, "missed": spec.missed.value,
            "next": [{"local": r.isoformat(), "utc": slot_iso(r)} for r in runs],
        })
    return out
