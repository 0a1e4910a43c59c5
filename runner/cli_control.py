"""``runner control …`` and ``runner revoke``: talk to the live workers (runner.control)."""

from __future__ import annotations

import json
import re
from typing import Any

import click

from runner.cli_jobs import DURATION, App

pass_app = click.make_pass_decorator(App)
EXIT_REFUSED = 1  # every worker that replied refused the command
EXIT_NO_REPLY = 4
JOB_ID = re.compile(r"[0-9a-f]{32}")  # what submit prints, beat derives and the client makes


def _options(fn: Any) -> Any:
    fn = click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")(fn)
    fn = click.option("--timeout", type=DURATION, default=1.0, show_default=True,
                      help="How long to collect replies.")(fn)
    return click.option("--worker", "workers", multiple=True,
                        help="Only this worker (by name; repeatable). Default: every worker.")(fn)


def _run(app: App, command: str, args: dict[str, Any], workers: tuple[str, ...],
         timeout: float, as_json: bool) -> None:
    from runner import control
    from runner.broker import connect

    with connect(app.settings().broker_url) as broker:
        replies = control.send(broker, command, args, workers or None, timeout)
    _print(replies, as_json)


def _print(replies: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(replies, indent=2))
    else:
        for reply in replies:
            if reply.get("ok"):
                click.echo(f"{reply.get('worker')}: {json.dumps(reply.get('result'))}")
            else:
                click.secho(f"{reply.get('worker')}: error: {reply.get('error')}", fg="red")
    if not replies:
        click.secho("no worker replied", fg="red", err=True)
        raise click.exceptions.Exit(EXIT_NO_REPLY)
    if not any(reply.get("ok") for reply in replies):
        raise click.exceptions.Exit(EXIT_REFUSED)


@click.group()
def control() -> None:
    """Ask or tell the live workers something; every addressed worker replies."""


def _simple(name: str, help_text: str) -> None:
    @_options
    @pass_app
    def command(app: App, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
        _run(app, name, {}, workers, timeout, as_json)

    command.__doc__ = help_text
    control.command(name)(command)


_simple("ping", "Check which workers are alive.")
_simple("stats", "Host, pid, uptime, slots, running jobs, queue and bindings of each worker.")
_simple("active", "The jobs each worker is running: id, job type, runtime.")
_simple("registered", "The job types each worker knows.")
_simple("queues", "The queue and bindings each worker consumes.")


@control.command()
@click.option("--grace", type=DURATION, help="Seconds running jobs may finish (default: setting grace).")
@_options
@pass_app
def shutdown(app: App, grace: float | None, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Stop workers gracefully (as SIGTERM does)."""
    _run(app, "shutdown", {"grace": grace}, workers, timeout, as_json)


@control.command("rate-limit")
@click.argument("job")
@click.argument("rate")
@_options
@pass_app
def rate_limit(app: App, job: str, rate: str, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Limit starts of JOB on each worker to RATE (10/s, 100/m, 5/h; 'off' removes the limit)."""
    from runner.ratelimit import parse_rate

    if rate != "off":
        parse_rate(rate, "RATE")  # refused here, not by every worker
    _run(app, "rate_limit", {"job": job, "rate": None if rate == "off" else rate}, workers, timeout, as_json)


@control.command("add-binding")
@click.argument("pattern")
@_options
@pass_app
def add_binding(app: App, pattern: str, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Bind the workers' queues to one more routing PATTERN (e.g. 'heavy.#')."""
    _run(app, "add_binding", {"pattern": pattern}, workers, timeout, as_json)


@control.command("remove-binding")
@click.argument("pattern")
@_options
@pass_app
def remove_binding(app: App, pattern: str, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Remove one routing PATTERN from the workers' queues."""
    _run(app, "remove_binding", {"pattern": pattern}, workers, timeout, as_json)


@click.command()
@click.argument("job_ids", nargs=-1, required=True)
@click.option("--terminate", is_flag=True, help="Also stop the job if it is running now.")
@click.option("--timeout", type=DURATION, default=1.0, show_default=True, help="How long to collect replies.")
@click.option("--json", "as_json", is_flag=True, help="Print the replies as JSON.")
@pass_app
def revoke(app: App, job_ids: tuple[str, ...], terminate: bool, timeout: float, as_json: bool) -> None:
    """Make sure jobs never start, wherever they are (queued, delayed, not yet delivered)."""
    for job_id in job_ids:
        if not JOB_ID.fullmatch(job_id):
            raise click.BadParameter(
                f"{job_id!r} is not a job id (32 hex digits, as runner submit prints)",
                param_hint="JOB_ID",
            )
    from runner import control
    from runner.broker import connect

    settings = app.settings()
    with connect(settings.broker_url) as broker:
        replies = control.revoke(broker, job_ids, settings.revoke_expiry, terminate, timeout)
    if as_json:
        click.echo(json.dumps(replies, indent=2))
        return
    stopped = sorted({j for r in replies for j in (r.get("result") or {}).get("terminated", [])})
    click.echo(f"revoked {len(job_ids)} job(s); {len(replies)} live worker(s) told"
               + (f"; terminated: {', '.join(stopped)}" if stopped else ""))


@control.group()
def pool() -> None:
    """Offer more or fewer job slots (up to the slots a worker reserved at start)."""


@pool.command("grow")
@click.argument("n", type=click.IntRange(1, 1024), default=1)
@_options
@pass_app
def pool_grow(app: App, n: int, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Offer N more slots on each worker."""
    _run(app, "pool_grow", {"n": n}, workers, timeout, as_json)


@pool.command("shrink")
@click.argument("n", type=click.IntRange(1, 1024), default=1)
@_options
@pass_app
def pool_shrink(app: App, n: int, workers: tuple[str, ...], timeout: float, as_json: bool) -> None:
    """Offer N fewer slots on each worker (never fewer than one); running jobs finish."""
    _run(app, "pool_shrink", {"n": n}, workers, timeout, as_json)
