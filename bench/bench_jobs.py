"""No-op job types for the benchmarks (loaded with ``RUNNER_PLUGINS=bench_jobs``).

The worker, and the child interpreters that run function jobs, import this module, so ``bench/``
must be on ``PYTHONPATH`` (``throughput.py`` sets it).
"""

from __future__ import annotations

from runner import JobContext, JobType, RetryPolicy, hookimpl

ONCE = RetryPolicy(attempts=1)


def noop(ctx: JobContext) -> None:
    """The cheapest function job: returns at once, in its child interpreter."""


@hookimpl
def register_jobs(register):  # type: ignore[no-untyped-def]
    register(JobType(
        name="bench-noop", help="A no-op Python function (child interpreter).",
        function="bench_jobs:noop", retry=ONCE, timeout=60,
    ))
    register(JobType(
        name="bench-true", help="A no-op command: true.",
        argv=lambda p, ctx: ["true"], retry=ONCE, timeout=60,
    ))
