"""The Celery side of the comparison: no-op and subprocess tasks on RabbitMQ, rpc:// results.

Configured from the environment so that the benchmark and its ``celery worker`` subprocess agree:
``BENCH_AMQP_URL`` and ``BENCH_CELERY_QUEUE`` (a unique name per run).
"""

from __future__ import annotations

import os
import subprocess
import sys

from celery import Celery

QUEUE = os.environ.get("BENCH_CELERY_QUEUE", "bench-celery")

app = Celery("peer_celery", broker=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"))
app.conf.update(
    result_backend="rpc://",
    task_default_queue=QUEUE,
    task_default_exchange=QUEUE,
    task_default_routing_key=QUEUE,
    # Like runner's submit: return only once RabbitMQ has confirmed the message.
    broker_transport_options={"confirm_publish": True},
    broker_connection_retry_on_startup=True,
    worker_hijack_root_logger=False,
    task_serializer="json",
    result_serializer="json",
    accept_content=["json"],
)


@app.task(name="bench.noop")
def noop() -> None:
    return None


@app.task(name="bench.true")
def run_true() -> int:
    return subprocess.run(["true"], check=True).returncode


@app.task(name="bench.python")
def run_python() -> int:
    return subprocess.run([sys.executable, "-c", "pass"], check=True).returncode


TASKS = {"noop": noop, "true": run_true, "python": run_python}
