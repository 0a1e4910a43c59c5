"""What ``runner submit <job>`` and ``runner run <job>`` do once their options are parsed.

``submit`` publishes to the shared queues; ``run`` executes the job through the full pipeline
(broker, sandbox, retries) on a worker inside this process, on a private one-off queue so no
other job is taken, then exits with the job's status.
"""

from __future__ import annotations

import logging
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

from runner.client import Client, OutputRefused, WaitTimeout, save_outputs
from runner.errors import JobFailed
from runner.jobs import JobType

EXIT_OK, EXIT_FAILED, EXIT_TIMEOUT = 0, 1, 4


def _output_dir(options: dict[str, Any], files: dict[str, str]) -> Path:
    if options.get("output_dir"):
        return Path(options["output_dir"])
    for path in files.values():
        return Path(path).resolve().parent
    return Path.cwd()


def _submit_and_report(client: Client, job: JobType, params: dict[str, Any],
                       files: dict[str, str], options: dict[str, Any], wait: bool,
                       debug: bool = False) -> int:
    import click

    from runner.cli_jobs import ProgressLine, print_result, stderr_is_tty

    handle = client.submit(
        job.name, params, files, route=options.get("route"), wait=wait,
        timeout=options.get("timeout"), retries=options.get("retries"),
        delay=options.get("delay") or 0.0, priority=options.get("priority") or 0,
        webhook=options.get("webhook"), eta=options.get("eta"), expires=options.get("expires"),
    )
    if not wait:
        if options.get("json"):
            import json

            click.echo(json.dumps({"id": handle.id, "job": job.name, "route": handle.route}))
        else:
            click.echo(handle.id)
        return EXIT_OK
    bar = ProgressLine() if stderr_is_tty() and not options.get("json") else None
    try:
        result = handle.wait(options.get("wait_timeout") or client.settings.wait_timeout,
                             raise_on_failure=False, on_progress=bar.show if bar else None)
    except WaitTimeout as exc:
        if bar:
            bar.clear()
        click.secho(f"error: {exc}", fg="red", err=True)
        return EXIT_TIMEOUT
    if bar:
        bar.clear()
    try:
        written = save_outputs(
            result, _output_dir(options, files), client.shared_root, not client.keeps_results,
            overwrite=bool(options.get("overwrite")), inputs=list(files.values()),
        ) if result.ok else []
    except OutputRefused as exc:
        click.secho(f"error: {exc}", fg="red", err=True)
        return EXIT_FAILED
    print_result(result, written, bool(options.get("json")), debug, quiet=bool(options.get("quiet")))
    return EXIT_OK if result.ok else EXIT_FAILED


def submit_remote(app: Any, job: JobType, params: dict[str, Any], files: dict[str, str],
                  options: dict[str, Any]) -> int:
    settings = app.settings()
    from runner.broker import connect

    with Client(connect(settings.broker_url), app.plugins(), settings) as client:
        return _submit_and_report(
            client, job, params, files, options, bool(options.get("wait")), app.debug
        )


@contextmanager
def local_worker(app: Any, concurrency: int = 1) -> Iterator[tuple[Client, str]]:
    """A worker in this process on a private one-off queue; yields a client and its route."""
    from runner.broker import connect
    from runner.worker import Worker

    route = f"run-{uuid.uuid4().hex[:12]}"
    # A private one-off queue, gone when the command ends: unsigned jobs are the user's own.
    settings = replace(app.settings(), queue=f"runner.run.{route}", bindings=(f"{route}.#",),
                       concurrency=concurrency, allow_unsigned=True)
    if not app.debug:
        # The one-job worker's start-up notes (signing off, sandbox layers) are for daemons.
        logging.getLogger("runner.worker").setLevel(logging.ERROR)
    worker_broker = connect(settings.broker_url)
    worker = Worker(worker_broker, app.plugins(), settings)
    thread = threading.Thread(target=worker.run, name="worker", daemon=True)
    thread.start()
    try:
        if not worker.ready.wait(30):
            raise JobFailed("-", "the local worker did not start")
        with Client(connect(settings.broker_url), app.plugins(), settings) as client:
            yield client, route
    finally:
        worker.stop(grace=0)
        thread.join(30)
        cleanup = connect(settings.broker_url)
        cleanup.delete_queue(settings.queue)
        cleanup.close()
        worker_broker.close()


def run_local(app: Any, job: JobType, params: dict[str, Any], files: dict[str, str],
              options: dict[str, Any]) -> int:
    with local_worker(app) as (client, route):
        return _submit_and_report(
            client, job, params, files, {**options, "route": route}, True, app.debug
        )
