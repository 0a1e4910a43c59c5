"""Retry arithmetic, all of it through tenacity.

Two uses: the job retry policy (how long until the next attempt, or none left), computed here
and carried out by the broker's delay; and in-place retrying of infrastructure calls (broker
connect) with exponential backoff and jitter.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import replace
from typing import TypeVar

import tenacity

from runner.jobs import RetryPolicy

log = logging.getLogger(__name__)
T = TypeVar("T")


def policy_for(policy: RetryPolicy, retries: int | None) -> RetryPolicy:
    """Apply a per-submission ``--retries`` (retries after the first attempt)."""
    if retries is None:
        return policy
    return replace(policy, attempts=retries + 1)


def next_delay(policy: RetryPolicy, attempt: int, requested: float | None = None) -> float | None:
    """Seconds to wait before attempt ``attempt + 1``, or ``None`` when attempts are used up.

    Args:
        policy: the job's retry policy.
        attempt: the attempt that just failed (1-based).
        requested: a delay the job asked for with ``Retry(delay=...)``; it replaces the backoff.
    """
    state = tenacity.RetryCallState(tenacity.Retrying(), None, (), {})
    state.attempt_number = attempt
    if tenacity.stop_after_attempt(policy.attempts)(state):
        return None
    if requested is not None:
        return max(0.0, requested)
    wait = tenacity.wait_exponential_jitter(
        multiplier=policy.backoff,
        max=policy.max_backoff,
        exp_base=policy.multiplier,
        jitter=policy.jitter,
    )
    return float(wait(state))


def retrying_call(
    fn: Callable[[], T],
    retry_on: tuple[type[BaseException], ...],
    what: str,
    max_wait: float = 30.0,
    give_up_after: float | None = None,
    cancel: threading.Event | None = None,
    reason: Callable[[BaseException], str] = str,
) -> T:
    """Call ``fn`` until it succeeds, backing off exponentially with jitter between tries.

    Used for broker connects.  ``give_up_after`` (seconds) ends the tries, re-raising the last
    error; ``None`` tries forever (a worker waiting for its broker to come back).  Setting
    ``cancel`` ends them too, at once (the wait between tries is on that event): a worker
    told to stop while its broker is away stops.  The first failure is logged as a warning
    with ``reason(error)``, later ones at debug level: one line says what is wrong.
    """
    stop: tenacity.stop.stop_base = (
        tenacity.stop_never if give_up_after is None else tenacity.stop_after_delay(give_up_after)
    )
    if cancel is not None:
        stop = stop | tenacity.stop_when_event_set(cancel)

    def note(state: tenacity.RetryCallState) -> None:
        exc = state.outcome.exception() if state.outcome else None
        level = logging.WARNING if state.attempt_number == 1 else logging.DEBUG
        until = "" if give_up_after is None else f" for up to {give_up_after:g}s"
        log.log(level, "%s failed (%s); trying again%s", what,
                reason(exc) if exc is not None else "?", until)

    def pause(seconds: float) -> None:
        if cancel is not None:
            cancel.wait(seconds)  # returns early when a stop is asked for
        else:
            tenacity.nap.sleep(seconds)

    retryer = tenacity.Retrying(
        stop=stop,
        wait=tenacity.wait_exponential_jitter(multiplier=0.2, max=max_wait, jitter=0.5),
        retry=tenacity.retry_if_exception_type(retry_on),
        before_sleep=note,
        sleep=pause,
        reraise=True,
    )
    return retryer(fn)
