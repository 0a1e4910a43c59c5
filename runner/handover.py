"""Long jobs on RabbitMQ: the guardian hands over deliveries before the consumer timeout.

RabbitMQ closes a channel whose delivery stays unacknowledged past ``consumer_timeout``.  After
``handover_after`` the guardian thread parks a *guard copy* of the running job in a delay queue,
acknowledges the original, renews the guard while the job runs, and revokes it once the outcome
is out (or publishes a fresh copy when a stopping worker gives the job up).  docs/fleet.md has
the design and every crash point.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from runner import control
from runner.broker import Broker, Delivery, Outgoing, Target, connect

if TYPE_CHECKING:
    from runner.worker import Worker

log = logging.getLogger(__name__)
H_GUARD = "x-runner-guard"  # on a guard copy: its id, a revocation key naming only this copy


@dataclass(eq=False)
class Watch:
    """A running job whose delivery the guardian hands over (and whose guard it renews)."""

    delivery: Delivery
    job_id: str
    due: float  # monotonic time of the next handover or renewal
    guard: str | None = None  # the guard copy in force (None: not handed over yet)
    finished: bool = False  # the slot is settling it: no more guards
    settled: bool = False  # its outcome went out
    failures: int = 0
    lock: threading.Lock = field(default_factory=threading.Lock)


class Guardian:
    """The guardian of one worker; inert when ``handover_after`` is 0 (no handover needed)."""

    def __init__(self, worker: Worker, handover_after: float) -> None:
        self.worker = worker
        self.lock = worker._lock  # the worker's condition: watches change with running jobs
        self.handover_after = handover_after
        self.guard_ttl = 2 * handover_after
        self.watches: dict[int, Watch] = {}  # id(delivery) -> watch
        self.void: list[str] = []  # guards to revoke (the guardian thread does it)
        self.stopping = False
        self._thread: threading.Thread | None = None
        self._side: Broker | None = None  # the guardian's own connection, for revocations

    def start(self) -> None:
        if self.handover_after > 0:
            self._thread = threading.Thread(target=self._loop, name="guardian", daemon=True)
            self._thread.start()

    def watch(self, delivery: Delivery, job_id: str) -> Watch | None:
        """Start watching a job that begins to run (the caller holds :attr:`lock`)."""
        if self.handover_after <= 0:
            return None
        watch = Watch(delivery, job_id, time.monotonic() + self.handover_after)
        self.watches[id(delivery)] = watch
        self.lock.notify_all()
        return watch

    def forget(self, delivery: Delivery, watch: Watch, job_id: str) -> None:
        """The job's slot is done with it (the caller holds :attr:`lock`)."""
        self.watches.pop(id(delivery), None)
        if watch.guard is not None and watch.settled:
            self.void.append(watch.guard)  # the outcome is out: void the guard
        elif watch.guard is not None:
            log.warning(
                "job %s: its outcome did not go out; guard copy %s brings it back",
                job_id, watch.guard,
            )

    def _loop(self) -> None:
        """Hand over deliveries held for ``handover_after``, renew guards, revoke void ones."""
        while True:
            with self.lock:
                while True:
                    now = time.monotonic()
                    void, self.void = self.void, []
                    due = [w for w in self.watches.values() if not w.finished and w.due <= now]
                    if void or due or self.stopping:
                        break
                    upcoming = [w.due for w in self.watches.values() if not w.finished]
                    self.lock.wait(min(upcoming) - now if upcoming else None)
                stop = self.stopping
            if void:
                self._revoke_guards(void)
            for watch in due:
                self._hand_over(watch)
            if stop and not void and not due:
                return

    def _hand_over(self, watch: Watch) -> None:
        """Park a new guard copy; the first time, acknowledge the delivery; void the old guard."""
        guard = f"{watch.job_id}.guard.{uuid.uuid4().hex[:12]}"
        env = watch.delivery.envelope.with_headers(**{H_GUARD: guard})
        with watch.lock:
            if watch.finished:
                return
            old = watch.guard
            try:
                future = self.worker.broker.hand_over(watch.delivery, Outgoing(env, Target.JOBS, self.guard_ttl))
                future.result(timeout=60)
            except TimeoutError:
                # Unknown whether it happened: count it as done, so the guard is voided at the
                # end (the worst case is one run too many, never a lost job).
                log.warning("job %s: handover did not answer in time; counting it as done", watch.job_id)
                ok = True
            except Exception as exc:
                watch.failures += 1
                retry = min(5.0, self.handover_after / 4)
                log.warning(
                    "job %s: could not %s its guard copy (%s)%s", watch.job_id,
                    "renew" if old else "hand over with", exc,
                    "" if old is None and watch.failures >= 3 else f"; trying again in {retry:.1f}s",
                )
                with self.lock:
                    self.void.append(guard)  # it may have been parked: void it
                    if old is None and watch.failures >= 3:
                        watch.due = float("inf")  # the delivery is lost: RabbitMQ requeued it
                    else:
                        watch.due = time.monotonic() + retry
                return
            else:
                ok = True
            if ok:
                with self.lock:
                    watch.guard, watch.failures = guard, 0
                    watch.due = time.monotonic() + self.handover_after
                    if old is not None:
                        self.void.append(old)
        if old is None:
            log.info(
                "job %s handed over: guard copy %s parked for %gs", watch.job_id, guard, self.guard_ttl
            )
        else:
            log.info("job %s renewed its guard copy: %s replaces %s", watch.job_id, guard, old)

    def _revoke_guards(self, guards: list[str]) -> None:
        """Revoke guard copies durably and on every live worker (this one at once)."""
        self.worker.revoke(guards, False)
        try:
            if self._side is None:
                self._side = connect(self.worker.settings.broker_url)
            control.revoke(self._side, guards, self.worker.settings.revoke_expiry, timeout=0)
            log.info("guard copies voided: %s", ", ".join(guards))
        except Exception as exc:
            log.warning(
                "could not revoke guard copies %s (%s): each may run its job once more",
                ", ".join(guards), exc,
            )
            side, self._side = self._side, None
            if side is not None:
                try:
                    side.close()
                except Exception:
                    pass

    def stop(self) -> None:
        """Let the guardian revoke what is still to revoke, then end it."""
        if self._thread is None:
            return
        with self.lock:
            self.stopping = True
            self.lock.notify_all()
        self._thread.join(60)
        if self._side is not None:
            self._side.close()
