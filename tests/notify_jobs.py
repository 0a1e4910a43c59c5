"""Job types for the notification tests (loaded with make_plugins(modules=["notify_jobs"]))."""

from __future__ import annotations

import sys

import click

from runner import JobContext, JobType, RetryPolicy, hookimpl


def login(ctx: JobContext, user: str, password: str, api_token: str, note: str) -> None:
    # A careless job: it prints and raises its secrets. The e-mail must not carry them.
    print(f"connecting as {user} with password {password} and token {api_token}", file=sys.stderr)
    raise PermissionError(f"login refused for {user}: password {password!r} (token {api_token}, {note})")


@hookimpl
def register_jobs(register):
    register(JobType(
        name="login", function="notify_jobs:login", retry=RetryPolicy(attempts=1),
        params=[
            click.Option(["--user"], required=True),
            click.Option(["--password"], required=True, hide_input=True),  # declared secret
            click.Option(["--api-token"], required=True),  # secret by its name
            click.Option(["--note"], default=""),  # secret by [jobs.login.notify] secret_params
        ],
    ))
