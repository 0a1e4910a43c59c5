"""Batches: ``runner submit resize --size 200x200 photos/*.jpg --wait`` runs one job per file.

The jobs share a group id; with ``--wait`` a progress bar on a terminal counts done, failed and
the rate, each output is written beside its input (or in ``--output-dir``), failures are
listed, not hidden, and the exit code says whether any failed.
"""

from __future__ import annotations

import json
import time
import uuid
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import click

from runner.client import Client, JobHandle, OutputRefused, WaitTimeout, save_outputs
from runner.jobs import JobType
from runner.local import EXIT_FAILED, EXIT_OK, EXIT_TIMEOUT, local_worker
from runner.untrusted import printable


def run_batch(
    app: Any, job: JobType, params: dict[str, Any], files: list[dict[str, str]],
    options: dict[str, Any], local: bool,
) -> int:
    """Submit (and with ``--wait`` or ``runner run``, wait for) one job per input file."""
    with ExitStack() as stack:
        if local:
            client, route = stack.enter_context(local_worker(app, app.settings().concurrency))
            options = {**options, "route": route, "wait": True}
        else:
            from runner.broker import connect

            settings = app.settings()
            client = stack.enter_context(Client(connect(settings.broker_url), app.plugins(), settings))
        return _batch(client, job, params, files, options)
    raise AssertionError("unreachable")


def _batch(client: Client, job: JobType, params: dict[str, Any], files: list[dict[str, str]],
           options: dict[str, Any]) -> int:
    from runner.cli_jobs import ProgressLine, stderr_is_tty

    if options.get("then"):
        return _group(client, job, params, files, options)
    group = uuid.uuid4().hex
    wait = bool(options.get("wait"))
    # All validated first, then sent in one go with the confirms pipelined (submit_many).
    submitted = client.submit_many([
        {"job": job.name, "params": params, "files": f, "route": options.get("route"), "wait": wait,
         "timeout": options.get("timeout"), "retries": options.get("retries"),
         "delay": options.get("delay") or 0.0, "priority": options.get("priority") or 0,
         "webhook": options.get("webhook"), "eta": options.get("eta"),
         "expires": options.get("expires"), "group": group}
        for f in files
    ])
    handles: list[tuple[str, JobHandle]] = [
        (next(iter(f.values())), handle) for f, handle in zip(files, submitted, strict=True)
    ]
    if not wait:
        ids = [{"input": path, "id": h.id} for path, h in handles]
        click.echo(json.dumps({"group": group, "jobs": ids}) if options.get("json")
                   else "\n".join(f"{h.id}  {path}" for path, h in handles))
        return EXIT_OK
    bar = ProgressLine() if stderr_is_tty() and not options.get("json") else None
    started, done = time.monotonic(), 0
    records: list[dict[str, Any]] = []
    failed: list[tuple[str, str]] = []
    for path, handle in handles:
        try:
            result = handle.wait(options.get("wait_timeout") or client.settings.wait_timeout,
                                 raise_on_failure=False)
        except WaitTimeout as exc:
            failed.append((path, str(exc)))
            records.append({"input": path, "id": handle.id, "status": "timeout"})
            continue
        finally:
            done += 1
        written: list[str] = []
        if result.ok:
            target = Path(options["output_dir"]) if options.get("output_dir") else Path(path).resolve().parent
            try:
                written = [str(p) for p in save_outputs(
                    result, target, client.shared_root, not client.keeps_results,
                    overwrite=bool(options.get("overwrite")),
                    inputs=[p for p, _ in handles],  # no output replaces any input of the batch
                )]
            except OutputRefused as exc:
                failed.append((path, str(exc)))
        else:
            failed.append((path, result.error or "failed"))
        records.append({"input": path, "id": handle.id, "status": result.status.value,
                        "outputs": written, "error": result.error})
        if bar:
            rate = done / max(1e-6, time.monotonic() - started)
            bar.show({"percent": 100.0 * done / len(handles), "done": done, "total": len(handles),
                      "message": f"{len(failed)} failed, {rate:.1f}/s"})
    if bar:
        bar.clear()
    elapsed = time.monotonic() - started
    if options.get("json"):
        click.echo(json.dumps({"group": group, "jobs": records}, indent=2))
    else:
        click.echo(f"{job.name}: {len(handles) - len(failed)} succeeded, {len(failed)} failed "
                   f"of {len(handles)} in {elapsed:.1f}s ({len(handles) / max(elapsed, 1e-6):.1f}/s)")
        for path, error in failed:
            click.secho(f"  failed {path}: {printable(error, False)}", fg="red", err=True)
    return EXIT_FAILED if failed else EXIT_OK


def _group(client: Client, job: JobType, params: dict[str, Any], files: list[dict[str, str]],
           options: dict[str, Any]) -> int:
    """``--then JOB``: the jobs as a group whose callback JOB runs once all of them ended."""
    from runner.cli_jobs import print_result
    from runner.errors import JobError
    from runner.results.groups import JobSpec

    then_params: dict[str, str] = {}
    for item in options.get("then_param") or ():
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise JobError(f"--then-param {item!r}: expected KEY=VALUE")
        then_params[key.replace("-", "_")] = value
    keep = ("route", "timeout", "retries", "delay", "priority", "webhook", "eta", "expires")
    submit = {k: options[k] for k in keep if options.get(k) is not None}
    handle = client.group([JobSpec(job.name, params, f, submit) for f in files]).then(
        options["then"], then_params, on_failure=options.get("then_on_failure") or "run",
        route=options.get("route"))  # --route sends the whole group there, callback included
    assert handle.callback is not None
    if not options.get("wait"):
        ids = [{"input": next(iter(f.values()), None), "id": h.id}
               for f, h in zip(files, handle.members)]
        if options.get("json"):
            click.echo(json.dumps({"group": handle.id, "jobs": ids,
                                   "callback": {"id": handle.callback.id, "job": options["then"]}}))
        else:
            click.echo(f"group {handle.id}: {len(ids)} jobs, then {options['then']} "
                       f"{handle.callback.id}")
        return EXIT_OK
    try:
        result = handle.wait(options.get("wait_timeout") or client.settings.wait_timeout,
                             raise_on_failure=False)
    except WaitTimeout as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return EXIT_TIMEOUT
    target = Path(options["output_dir"]) if options.get("output_dir") else Path.cwd()
    written = save_outputs(result, target, client.shared_root, False) if result.ok else []
    print_result(result, written, bool(options.get("json")))
    return EXIT_OK if result.ok else EXIT_FAILED
