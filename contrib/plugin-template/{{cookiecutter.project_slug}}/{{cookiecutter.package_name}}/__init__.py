"""{{ cookiecutter.description }}

The plugin: declares the ``{{ cookiecutter.job_name }}`` job type.  Loading it imports only click and
runner; the job's own code (:mod:`{{ cookiecutter.package_name }}.jobs`) is imported by the worker's
child interpreter, in the sandbox, when a job runs.
"""

from __future__ import annotations

from collections.abc import Callable

import click

from runner import JobType, RetryPolicy, SandboxProfile, hookimpl

JOB = JobType(
    name="{{ cookiecutter.job_name }}",
    help="Count the words of a UTF-8 text file; write the most common ones to top.txt.",
    params=(
        click.Argument(["text"], type=click.Path(exists=True, dir_okay=False)),
        click.Option(["--top"], type=click.IntRange(1, 1000), default=10, show_default=True,
                     help="How many of the most common words to report."),
    ),
    inputs=("text",),  # the file travels with the job; the function gets its path
    function="{{ cookiecutter.package_name }}.jobs:count_words",
    timeout=60.0,
    retry=RetryPolicy(attempts=2, backoff=1.0),
    sandbox=SandboxProfile(network=False, memory=512 << 20),
)


@hookimpl
def register_jobs(register: Callable[[JobType], None]) -> None:
    """Register the job types of this plugin."""
    register(JOB)
