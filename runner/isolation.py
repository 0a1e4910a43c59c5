"""Jobs suspected of crashing a worker run alone, so that a crash is blamed on the right job.

A worker that dies (SIGKILL, out of memory, a job that brings it down) leaves every job it held
unsettled, and the broker counts one more delivery for each (``x-runner-deliveries``).  Counted
that way alone, an innocent job that shared a worker with a crasher is killed with it again and
again and dead-lettered as "may crash workers".  The rule (docs/fleet.md, "Crash loops"):

* a job delivered again after an unsettled delivery is a *suspect*;
* a suspect runs only on a worker that runs nothing else: a worker that receives one starts
  nothing new, waits (up to :data:`WAIT_ALONE` seconds) for the jobs it is running to end, then
  runs the suspect alone; each delivery that arrives meanwhile (another suspect too) goes back
  through the broker's delay, after :data:`DEFER_DELAY` seconds, its count unchanged;
* so every crash after the first is one that happened while the suspect ran alone (or waited
  for the last jobs of a worker that took nothing new): a job is dead-lettered only after
  ``max_redeliveries`` such deliveries, and its neighbours of the first crash, run alone in
  their turn, finish.
"""

from __future__ import annotations

from runner.broker import Delivery, Envelope
from runner.errors import MessageError
from runner.message import H_DELIVERIES

DEFER_DELAY = 1.0  # seconds a deferred job waits in the broker before it is offered again
WAIT_ALONE = 60.0  # seconds a suspect waits for its worker's running jobs before it is deferred
RUN, WAIT, DEFER = "run", "wait", "defer"


def deliveries(env: Envelope) -> int:
    """Unsettled deliveries counted so far.

    Raises:
        MessageError: the header is there but not a non-negative integer.
    """
    value = env.headers.get(H_DELIVERIES, 0)
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise MessageError(f"header {H_DELIVERIES}: expected a count, got {type(value).__name__}")
    return value


def is_suspect(delivery: Delivery) -> bool:
    """Was the job handed out before without being settled (a worker died holding it)?"""
    try:
        return delivery.redelivered or deliveries(delivery.envelope) > 0
    except MessageError:
        return True


class Isolation:
    """Which suspect, if any, runs alone on this worker; the worker calls it under its lock."""

    def __init__(self) -> None:
        self.alone: str | None = None  # the id of the suspect running alone

    def admit(self, job_id: str, suspect: bool, running: int) -> str:
        """:data:`RUN` the job now, :data:`WAIT` for the ``running`` others to end, or :data:`DEFER` it."""
        if self.alone is not None:
            return DEFER
        if suspect:
            self.alone = job_id
            return WAIT if running else RUN
        return RUN

    def release(self, job_id: str) -> None:
        if self.alone == job_id:
            self.alone = None
