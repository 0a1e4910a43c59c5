"""The job type of ``bench/chaos.py`` (loaded with ``RUNNER_PLUGINS=chaos_jobs``).

``chaos`` sleeps, then reports that it ran to completion with one UDP datagram
(``<job id> <attempt>``) to the harness: a record of every completed run that does not depend on
the worker surviving to log it or to acknowledge the job.
"""

from __future__ import annotations

import click

from runner import JobType, RetryPolicy, SandboxProfile, hookimpl


@hookimpl
def register_jobs(register):
    register(JobType(
        name="chaos", help="Sleep, then tell the chaos harness this run completed.",
        argv=lambda p, ctx: [
            "bash", "-c",
            f"sleep {float(p['seconds']):.3f}; echo {ctx.job_id} {ctx.attempt} "
            f"> /dev/udp/127.0.0.1/{int(p['port'])}",
        ],
        params=[click.Option(["--seconds"], type=float, default=0.0),
                click.Option(["--port"], type=int, required=True)],
        sandbox=SandboxProfile(network=True),  # loopback UDP to the harness
        retry=RetryPolicy(attempts=3, backoff=0, jitter=0), timeout=60,
    ))
