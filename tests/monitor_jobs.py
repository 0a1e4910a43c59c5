"""Job types for the monitor tests (loaded with ``make_plugins(modules=["monitor_jobs"])``)."""

from __future__ import annotations

import time

import click

from runner import JobContext, JobType, RetryPolicy, hookimpl


def deadline(ctx: JobContext, fail_until: float) -> str:
    """Fail until a wall-clock time, then succeed: a dead letter retried later succeeds.

    The behaviour travels in the params, so the sandbox needs no shared state.
    """
    if time.time() < fail_until:
        raise RuntimeError(f"still failing until {fail_until:.3f}")
    return "finally"


def leaky(ctx: JobContext, dsn: str) -> None:
    print(f"connecting to {dsn}")
    raise RuntimeError(f"cannot connect to {dsn}")


@hookimpl
def register_jobs(register):
    register(JobType(
        name="deadline", help="Fail until --fail-until (epoch seconds), then succeed.",
        function="monitor_jobs:deadline", retry=RetryPolicy(attempts=1),
        params=[click.Option(["--fail-until"], type=float, required=True)],
    ))
    register(JobType(
        name="leaky", help="Fail, printing its secret --dsn everywhere.",
        function="monitor_jobs:leaky", retry=RetryPolicy(attempts=1), secret_params=("dsn",),
        params=[click.Option(["--dsn"], required=True)],
    ))
