"""The Dramatiq side of the comparison: no-op and subprocess actors on RabbitMQ.

Dramatiq has no result backend for RabbitMQ alone, so each actor counts its completion by
appending one byte to ``BENCH_COUNTER`` (one ``O_APPEND`` write: atomic, about 10 µs); the
benchmark watches the file's size.  ``BENCH_AMQP_URL`` and ``BENCH_DRAMATIQ_QUEUE`` configure it.
"""

from __future__ import annotations

import os
import subprocess
import sys

import dramatiq
from dramatiq.brokers.rabbitmq import RabbitmqBroker

QUEUE = os.environ.get("BENCH_DRAMATIQ_QUEUE", "bench-dramatiq")
COUNTER = os.environ.get("BENCH_COUNTER", "/tmp/bench-dramatiq.count")

# Like runner's submit: return only once RabbitMQ has confirmed the message.
broker = RabbitmqBroker(
    url=os.environ.get("BENCH_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/"),
    confirm_delivery=True,
)
dramatiq.set_broker(broker)


def _done() -> None:
    fd = os.open(COUNTER, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    try:
        os.write(fd, b"x")
    finally:
        os.close(fd)


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_noop", max_retries=0)
def noop() -> None:
    _done()


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_true", max_retries=0)
def run_true() -> None:
    subprocess.run(["true"], check=True)
    _done()


@dramatiq.actor(queue_name=QUEUE, actor_name="bench_python", max_retries=0)
def run_python() -> None:
    subprocess.run([sys.executable, "-c", "pass"], check=True)
    _done()


ACTORS = {"noop": noop, "true": run_true, "python": run_python}
