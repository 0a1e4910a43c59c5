"""``runner result ID`` and ``runner group ID``: results and groups from the result store."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from runner.cli_jobs import DURATION, App, print_result
from runner.client import JobHandle, WaitTimeout, save_outputs
from runner.errors import ConfigError, RunnerError
from runner.local import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT
from runner.results import ResultStore, describe_group, keep_seconds, open_store, store_url

pass_app = click.make_pass_decorator(App)


def _store(app: App) -> tuple[ResultStore, Any]:
    settings = app.settings()
    url = store_url(settings)
    if url is None:
        raise ConfigError('there is no result store ([results] url = "off")')
    return open_store(url), settings


def _gone(what: str, settings: Any) -> str:
    days = keep_seconds(settings) / 86400
    return (f"no {what}: unknown, not finished yet, or expired "
            f"(results are kept {days:g} days)")


@click.command("result")
@click.argument("job_id")
@click.option("--wait", is_flag=True, help="Wait until the job has a result.")
@click.option("--wait-timeout", type=DURATION, help="Give up waiting after this long.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
@click.option("--output-dir", type=click.Path(file_okay=False, path_type=Path),
              help="Write the job's output files into this directory.")
@pass_app
def result(app: App, job_id: str, wait: bool, wait_timeout: float | None, as_json: bool,
           output_dir: Path | None) -> int:
    """Show the result of a job submitted earlier (exit 0 succeeded, 1 failed, 4 timed out)."""
    store, settings = _store(app)
    with store:
        if wait:
            try:
                found = JobHandle(job_id, "", "", None, store.get).wait(
                    wait_timeout or settings.wait_timeout, raise_on_failure=False)
            except WaitTimeout as exc:
                click.secho(f"error: {exc}", fg="red", err=True)
                return EXIT_TIMEOUT
        else:
            got = store.get(job_id)
            if got is None:
                raise RunnerError(_gone(f"result for job {job_id}", settings))
            found = got
    shared = Path(settings.shared_storage) if settings.shared_storage else None
    written = save_outputs(found, output_dir, shared, consume=False) if output_dir and found.ok else []
    if as_json and not output_dir:
        record = found.to_json()
        record["outputs"] = [{"name": f.name, "size": f.size, "sha256": f.sha256}
                             for f in found.outputs]
        click.echo(json.dumps(record, indent=2))
    else:
        print_result(found, written, as_json, app.debug)
        if found.outputs and not output_dir and not as_json:
            names = ", ".join(f.name for f in found.outputs)
            click.echo(f"outputs (--output-dir DIR writes them): {names}")
    return EXIT_OK if found.ok else EXIT_FAILED


@click.command("group")
@click.argument("group_id")
@click.option("--json", "as_json", is_flag=True, help="Print the group as JSON.")
@pass_app
def group(app: App, group_id: str, as_json: bool) -> int:
    """Show how far a group has got: members done, failed, pending; its callback."""
    store, settings = _store(app)
    with store:
        state = store.group(group_id)
        if state is None:
            raise RunnerError(_gone(f"group {group_id}", settings))
        record = describe_group(state, store)
    if as_json:
        click.echo(json.dumps(record, indent=2))
        return EXIT_OK
    click.echo(f"group {group_id}: {record['succeeded']} succeeded, {record['failed']} failed, "
               f"{record['pending']} pending of {record['total']}")
    for member in record["members"]:
        if member["status"] == "failed":
            click.secho(f"  failed {member['id']} {member['job']}: {member['error']}", fg="red")
    cb = record["callback"]
    if cb is not None:
        line = f"callback {cb['id']}: {cb['status']}"
        click.echo(line + (f" ({cb['error']})" if cb["error"] else ""))
    return EXIT_OK
