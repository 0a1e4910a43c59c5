"""``runner dead list|show|retry|purge``: the dead-letter queue."""

from __future__ import annotations

import json
import math
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

import click

from runner.broker import Broker, Envelope, connect
from runner.cli_jobs import App
from runner import safejson
from runner.errors import MessageError, RunnerError
from runner.fields import MAX_EPOCH
from runner.signing import Signer, signer_from_settings
from runner.message import H_ATTEMPT, H_DEAD_ERROR, H_DEAD_REASON, H_PROTOCOL, PROTOCOL, JobMessage
from runner.untrusted import printable

pass_app = click.make_pass_decorator(App)


def describe(env: Envelope, full: bool = False) -> dict[str, Any]:
    """A dead letter as a plain record (``full`` adds params, traceback, stderr tail)."""
    # A dead letter is whatever someone published: every field is shown as plain JSON, never
    # trusted to be of the right type (one bad letter must not hide all the others).
    record: dict[str, Any] = {
        "id": _plain(env.message_id),
        "job": _plain(env.type),
        "routing_key": _plain(env.routing_key),
        "reason": _plain(env.headers.get(H_DEAD_REASON, "")),
        "error": _plain(env.headers.get(H_DEAD_ERROR, "")),
        "attempts": _plain(env.headers.get(H_ATTEMPT)),
        "submitted": _when(env.timestamp),
    }
    if full:
        try:
            record["params"] = dict(JobMessage.from_envelope(env).params)
        except RunnerError as exc:
            record["params"] = None
            record["decode_error"] = str(exc)
        raw = env.headers.get("x-runner-result")
        try:
            last = safejson.loads(raw, "x-runner-result") if isinstance(raw, str) else {}
        except MessageError:
            last = {}
        last = last if isinstance(last, dict) else {}
        for key in ("traceback", "stderr", "exit_code", "worker"):
            record[key] = _plain(last.get(key))
    return record


def _when(stamp: Any) -> str | None:
    """An AMQP timestamp as ISO 8601, or the raw value when no date can hold it."""
    if stamp is None or stamp == 0:
        return None
    if isinstance(stamp, int) and not isinstance(stamp, bool) and 0 < stamp <= MAX_EPOCH:
        return datetime.fromtimestamp(stamp, timezone.utc).isoformat()
    return f"invalid timestamp {str(stamp)[:40]}"


def _plain(value: Any) -> Any:
    """A value as JSON can show it: scalars as they are, anything else as a short string."""
    if value is None or isinstance(value, (str, bool, int)):
        return value
    if isinstance(value, float) and math.isfinite(value):
        return value
    return str(value)[:200]


def resubmit(broker: Broker, job_id: str, signer: Signer | None = None) -> Envelope:
    """Send dead-lettered job ``job_id`` back to its route as a fresh first attempt.

    Publishes first, then removes the dead letter: a failure in between duplicates, never
    loses.  Returns the dead letter as it was.  Used by ``runner dead retry`` and the monitor.
    With a ``signer`` (``[signing] key``), the fresh attempt is signed anew, so workers that
    verify signatures run it.

    Raises:
        RunnerError: there is no such dead letter.
        UnroutableError: no worker queue is bound to its route any more (it stays dead).
    """
    found = [e for e in broker.dead_letters(10**6) if e.message_id == job_id]
    if not found:
        raise RunnerError(f"no dead-lettered job {job_id}")
    env = found[0]
    kept = {k: v for k, v in env.headers.items() if not str(k).startswith("x-runner-")}
    fresh = replace(env, headers={**kept, H_PROTOCOL: PROTOCOL, H_ATTEMPT: 1})
    broker.publish(signer.sign(fresh) if signer is not None else fresh)
    broker.take_dead(job_id)
    return env


@click.group()
def dead() -> None:
    """Inspect, retry or purge dead-lettered jobs."""


@dead.command("list")
@click.option("--json", "as_json", is_flag=True)
@click.option("--limit", default=1000, show_default=True)
@pass_app
def dead_list(app: App, as_json: bool, limit: int) -> None:
    """List dead-lettered jobs, oldest first."""
    with connect(app.settings().broker_url) as broker:
        records = [describe(e) for e in broker.dead_letters(limit)]
    if as_json:
        click.echo(json.dumps(records, indent=2, default=str))
        return
    if not records:
        click.echo("no dead-lettered jobs")
    for r in records:
        line = f"{r['id']}  {r['job'] or '?':<12} {r['reason']}: {r['error'] or ''}".rstrip(": ")
        click.echo(printable(line, False))  # reason and error carry a job's text


@dead.command("show")
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def dead_show(app: App, job_id: str, as_json: bool) -> None:
    """Show one dead-lettered job with its error, traceback and stderr tail."""
    with connect(app.settings().broker_url) as broker:
        found = [e for e in broker.dead_letters(10**6) if e.message_id == job_id]
    if not found:
        raise RunnerError(f"no dead-lettered job {job_id}")
    record = describe(found[0], full=True)
    if as_json:
        click.echo(json.dumps(record, indent=2, default=str))
        return
    for key in ("id", "job", "routing_key", "reason", "error", "attempts", "submitted", "worker", "exit_code", "params"):
        value = record.get(key)
        shown = json.dumps(value, default=str) if isinstance(value, (dict, list)) else value
        click.echo(printable(f"{key}: {shown}", False))
    for key in ("traceback", "stderr"):
        if record.get(key):
            click.echo(f"--- {key} ---\n{printable(str(record[key]).rstrip())}")


@dead.command("retry")
@click.argument("job_id")
@pass_app
def dead_retry(app: App, job_id: str) -> None:
    """Send a dead-lettered job back to its route, as a fresh first attempt."""
    settings = app.settings()
    signer = signer_from_settings(settings.signing, settings.base_dir("signing"))
    with connect(settings.broker_url) as broker:
        env = resubmit(broker, job_id, signer)
    click.echo(f"{job_id} sent back on {env.routing_key}")


@dead.command("purge")
@click.option("--yes", is_flag=True, help="Do not ask for confirmation.")
@pass_app
def dead_purge(app: App, yes: bool) -> None:
    """Delete every dead-lettered job."""
    if not yes:
        click.confirm("Delete every dead-lettered job?", abort=True)
    with connect(app.settings().broker_url) as broker:
        count = broker.purge_dead()
    click.echo(f"purged {count} dead-lettered job(s)")
