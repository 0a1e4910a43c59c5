"""``runner monitor``, ``runner status ID`` and ``runner jobs`` (added by ``register_commands``).

Options come from flags or, through click's ``envvar=``, from ``RUNNER_MONITOR_*`` variables;
the broker URL is runner's own setting (``--broker-url``, ``RUNNER_BROKER_URL``, config file).
``status`` and ``jobs`` read the monitor's history file, or its API with ``--monitor-url``.
"""

from __future__ import annotations

import json
import logging
import time
import urllib.error
import urllib.parse
import urllib.request
from datetime import datetime
from pathlib import Path
from typing import Any

import click
import platformdirs

from runner.broker import EVENTS_QUEUE
from runner.cli_jobs import DURATION, App
from runner.errors import RunnerError
from runner_monitor.auth import Auth
from runner_monitor.history import STATES, History


def default_db() -> Path:
    return Path(platformdirs.user_data_dir("runner")) / "monitor.sqlite3"


def _settings() -> Any:
    from runner.config import load

    app = click.get_current_context().find_object(App)
    return app.settings() if app is not None else load()


DB_OPTION = click.option(
    "--db", type=click.Path(dir_okay=False, path_type=Path), envvar="RUNNER_MONITOR_DB",
    help="History file (default: monitor.sqlite3 in the user data directory).",
)
URL_OPTION = click.option(
    "--monitor-url", envvar="RUNNER_MONITOR_URL",
    help="Ask a running monitor's API instead of reading the history file.",
)
TOKEN_OPTION = click.option(
    "--token", envvar="RUNNER_MONITOR_TOKEN", help="Token for --monitor-url (read role is enough)."
)


@click.command()
@click.option("--listen", default="127.0.0.1:5555", show_default=True,
              envvar="RUNNER_MONITOR_LISTEN", help="HOST:PORT to serve on (port 0: any free).")
@click.option("--allow-remote", is_flag=True, envvar="RUNNER_MONITOR_ALLOW_REMOTE",
              help="Allow a --listen address that is not loopback (needs a token).")
@DB_OPTION
@click.option("--retention", type=DURATION, default="7d", show_default=True,
              envvar="RUNNER_MONITOR_RETENTION", help="Forget jobs and events older than this.")
@click.option("--queue", default=EVENTS_QUEUE, show_default=True, envvar="RUNNER_MONITOR_QUEUE",
              help="Durable event queue to read (one per monitor).")
@click.option("--admin-token", multiple=True, envvar="RUNNER_MONITOR_ADMIN_TOKENS",
              help="Token of the admin role: read and retry (repeatable).")
@click.option("--read-token", multiple=True, envvar="RUNNER_MONITOR_READ_TOKENS",
              help="Token of the read-only role (repeatable).")
def monitor(
    listen: str, allow_remote: bool, db: Path | None, retention: float, queue: str,
    admin_token: tuple[str, ...], read_token: tuple[str, ...],
) -> None:
    """Record job and worker events; serve a live dashboard, a JSON API and /metrics."""
    from runner import Notifier, store_url
    from runner.signing import signer_from_settings
    from runner_monitor.service import Monitor

    logging.getLogger("runner_monitor").setLevel(logging.INFO)
    settings = _settings()
    path = db or default_db()

    notify = Notifier()

    def ready(url: str) -> None:
        click.echo(f"runner monitor on {url} (events from {queue}, history in {path})")
        notify.ready(f"serving {url}")

    Monitor(
        broker_url=settings.broker_url, db=path, listen=listen, retention=retention,
        queue=queue, auth=Auth(admin_token, read_token), allow_remote=allow_remote,
        signer=signer_from_settings(settings.signing, settings.base_dir("signing")),
        on_ready=ready, results_url=store_url(settings),
    ).serve()


@click.command()
@click.argument("job_id")
@click.option("--json", "as_json", is_flag=True, help="Print the whole record as JSON.")
@DB_OPTION
@URL_OPTION
@TOKEN_OPTION
def status(
    job_id: str, as_json: bool, db: Path | None, monitor_url: str | None, token: str | None
) -> None:
    """Show one job from the monitor's history (a unique id prefix will do)."""
    record = _source(db, monitor_url, token).job(job_id)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return
    for line in describe(record):
        click.echo(line)


@click.command()
@click.option("--state", type=click.Choice(STATES), help="Only jobs in this state "
              "(failed includes dead-lettered jobs).")
@click.option("--job", help="Only jobs of this type.")
@click.option("--route", help="Only jobs on this route.")
@click.option("--since", type=DURATION, help="Only jobs updated within this long, e.g. 1h.")
@click.option("--limit", type=click.IntRange(1, 1000), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON.")
@DB_OPTION
@URL_OPTION
@TOKEN_OPTION
def jobs(
    state: str | None, job: str | None, route: str | None, since: float | None, limit: int,
    as_json: bool, db: Path | None, monitor_url: str | None, token: str | None,
) -> None:
    """List jobs from the monitor's history, most recently updated first."""
    found = _source(db, monitor_url, token).jobs(
        state=state, job=job, route=route, limit=limit,
        since=time.time() - since if since else None,
    )
    if as_json:
        click.echo(json.dumps(found["jobs"], indent=2))
        return
    if not found["jobs"]:
        click.echo("no jobs")
    for j in found["jobs"]:
        error = f"  {j['error']}" if j.get("error") else ""
        click.echo(
            f"{j['id']}  {j['job'] or '?':<12} {j['state']:<9} attempt {j['attempt'] or '-'}  "
            f"{_time(j['updated'])}{error}"
        )


def describe(j: dict[str, Any]) -> list[str]:
    """A job record for a person."""
    allowed = f"/{j['attempts_allowed']}" if j.get("attempts_allowed") else ""
    lines = [
        f"{j['id']}  {j.get('job') or '?'}  {j['state']}"
        + (f" ({j['dead_reason']})" if j.get("dead_reason") else ""),
        f"route {j.get('route')}  queue {j.get('queue')}  worker {j.get('worker') or '-'}  "
        f"attempt {j.get('attempt') or '-'}{allowed}",
        f"submitted {_time(j.get('submitted_at'))}  finished {_time(j.get('finished_at'))}  "
        f"duration {j['duration']:.2f}s" if j.get("duration") is not None else
        f"submitted {_time(j.get('submitted_at'))}  updated {_time(j.get('updated'))}",
        f"params {json.dumps(j.get('params'))}",
    ]
    if j.get("error"):
        lines.append(f"error: {j['error']}")
    if j.get("outputs"):
        lines.append("outputs: " + ", ".join(f"{o['name']} ({o['size']} B)" for o in j["outputs"]))
    for a in j.get("attempts") or []:
        lines.append(
            f"  #{a['attempt']} {a['outcome']} on {a.get('worker') or '?'} "
            f"{_time(a.get('finished_at'))}" + (f": {a['error']}" if a.get("error") else "")
        )
    for key in ("traceback", "stderr"):
        if j.get(key):
            lines.append(f"--- {key} ---\n{j[key].rstrip()}")
    return lines


def _time(ts: float | None) -> str:
    return datetime.fromtimestamp(ts).strftime("%Y-%m-%d %H:%M:%S") if ts else "-"


# --- where the history comes from ----------------------------------------------------------------
def _source(db: Path | None, monitor_url: str | None, token: str | None) -> Any:
    if monitor_url:
        return _Remote(monitor_url, token)
    return _Local(History(db or default_db(), readonly=True))


class _Local:
    def __init__(self, history: History) -> None:
        self.history = history

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self.history.jobs(**filters)

    def job(self, job_id: str) -> dict[str, Any]:
        found = self.history.job(job_id)
        if found is None:
            matches = self.history.jobs(search=job_id, limit=2)["jobs"]
            found = self.history.job(matches[0]["id"]) if len(matches) == 1 else None
        if found is None:
            raise RunnerError(f"no job {job_id} in the monitor's history ({self.history.path})")
        return found


class _Remote:
    def __init__(self, url: str, token: str | None) -> None:
        self.url = url.rstrip("/")
        self.token = token

    def _get(self, path: str, query: dict[str, Any] | None = None) -> Any:
        q = urllib.parse.urlencode({k: v for k, v in (query or {}).items() if v is not None})
        request = urllib.request.Request(f"{self.url}{path}{'?' + q if q else ''}")
        if self.token:
            request.add_header("Authorization", f"Bearer {self.token}")
        try:
            with urllib.request.urlopen(request, timeout=15) as response:
                return json.loads(response.read())
        except urllib.error.HTTPError as exc:
            try:
                reason = json.loads(exc.read()).get("error", exc.reason)
            except ValueError:
                reason = exc.reason
            raise _HttpError(exc.code, f"monitor at {self.url}: {reason}") from exc
        except (urllib.error.URLError, OSError, ValueError) as exc:
            raise RunnerError(f"cannot reach the monitor at {self.url}: {exc}") from exc

    def jobs(self, **filters: Any) -> dict[str, Any]:
        return self._get("/api/jobs", filters)

    def job(self, job_id: str) -> dict[str, Any]:
        quoted = urllib.parse.quote(job_id, safe="")
        try:
            return self._get(f"/api/jobs/{quoted}")
        except _HttpError as exc:
            if exc.status != 404:
                raise
        matches = self.jobs(q=job_id, limit=2)["jobs"]
        if len(matches) != 1:
            raise RunnerError(f"no job {job_id} in the history of the monitor at {self.url}")
        return self._get(f"/api/jobs/{urllib.parse.quote(matches[0]['id'], safe='')}")


class _HttpError(RunnerError):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
