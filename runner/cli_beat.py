"""``runner beat``: submit the periodic jobs of ``[schedule.NAME]``, or list their next runs."""

from __future__ import annotations

import json
import logging
import signal
from typing import Any

import click

from runner.cli_jobs import App
from runner.systemd import Notifier

pass_app = click.make_pass_decorator(App)


@click.command()
@click.option("--list", "as_list", is_flag=True, help="Print each schedule's next 3 runs and exit.")
@click.option("--json", "as_json", is_flag=True, help="With --list: print JSON.")
@click.option("--once", is_flag=True, help="Fire what is due now (if this beat leads), then exit.")
@pass_app
def beat(app: App, as_list: bool, as_json: bool, once: bool) -> None:
    """Submit periodic jobs from [schedule.NAME]; any number may run, one leads."""
    from runner.beat import Beat, upcoming
    from runner.client import Client
    from runner.schedule import ScheduleSpec, parse_schedules

    settings = app.settings()
    specs = parse_schedules(settings.schedule)
    if as_list:
        _print(upcoming(specs), as_json)
        return
    if not app.debug:
        logging.getLogger("runner.beat").setLevel(logging.INFO)  # a daemon: log each firing
    client = Client.from_settings(settings)

    def submit(spec: ScheduleSpec, job_id: str) -> None:
        client.submit(spec.job, spec.params, route=spec.route, job_id=job_id)

    runner_beat = Beat(client.broker, submit, specs)
    notify = Notifier()

    def stop(*_: Any) -> None:
        notify.stopping()
        runner_beat.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    if not once:
        notify.ready(f"{len(specs)} schedule(s); one beat process leads")
        notify.keep_alive(lambda: not runner_beat.stopping.is_set())
    with client:
        runner_beat.run(once=once)


def _print(rows: list[dict[str, Any]], as_json: bool) -> None:
    if as_json:
        click.echo(json.dumps(rows, indent=2))
        return
    if not rows:
        click.echo("no schedules: add [schedule.NAME] tables to the configuration")
    for row in rows:
        when = f"cron {row['cron']!r}" if row["cron"] else f"every {row['every']:g}s"
        click.echo(f"{row['name']}: {row['job']}, {when}, {row['timezone']}, missed={row['missed']}")
        for run in row["next"]:
            click.echo(f"  {run['local']}  ({run['utc']})")
