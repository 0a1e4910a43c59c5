"""Trivial-job throughput: runner on the embedded sqlite broker vs on RabbitMQ vs Huey's SqliteHuey.

One run, same machine, same N, two worker slots each:

* runner/sqlite and runner/amqp: `runner worker -c 2` in a subprocess, a no-op ARGV job
  (`true`, a sandboxed subprocess per job, as every runner job is), results waited on by one client;
* huey/sqlite in-process: SqliteHuey, a consumer with 2 worker threads, a task that returns at once;
* huey/sqlite + subprocess: the same task running `subprocess.run(["true"])`, to compare like with like;
* the embedded broker alone: a consumer process that settles each message with a reply (no job,
  no sandbox) for a client waiting on replies, as SqliteHuey's in-process row does with no job;
  the gap between this row and the first is what the sandbox and the job's process cost.

Usage: python bench/brokers.py [N]        (prints a table; asserts nothing)
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
N = int(sys.argv[1]) if len(sys.argv) > 1 else 300


def runner_rate(url: str, workdir: Path) -> float:
    from runner.broker import connect
    from runner.client import Client
    from runner.plugins import make_plugins
    from runner.testing import settings_for

    sys.path.insert(0, str(ROOT / "tests"))
    env = {
        **os.environ, "RUNNER_BROKER_URL": url, "RUNNER_PLUGINS": "jobs_plugin",
        "PYTHONPATH": str(ROOT / "tests"), "RUNNER_WORKDIR": str(workdir),
    }
    queue = f"bench.{os.getpid()}"
    worker = subprocess.Popen(
        [sys.executable, "-m", "runner.cli", "worker", "--queue", queue, "--bind", "bench.#", "-c", "2"],
        env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
    )
    try:
        assert worker.stdout is not None
        for line in worker.stdout:  # wait until it consumes
            if "consuming queue" in line:
                break
        plugins = make_plugins(modules=["jobs_plugin"])
        with Client(connect(url), plugins, settings_for(url, "bench")) as client:
            client.submit("noop", route="bench", wait=True).wait(60)  # warm-up
            start = time.perf_counter()
            handles = [client.submit("noop", route="bench", wait=True) for _ in range(N)]
            for h in handles:
                h.wait(300)
            elapsed = time.perf_counter() - start
        return N / elapsed
    finally:
        worker.send_signal(signal.SIGTERM)
        worker.wait(60)
        with connect(url) as broker:
            broker.delete_queue(queue)


BROKER_CONSUMER = """
import sys
from runner.broker import Envelope, Outgoing, Target, connect
broker = connect(sys.argv[1])
def on_delivery(d):
    reply = Envelope(body=b"{}", message_id=d.envelope.message_id, type="result",
                     routing_key=d.envelope.reply_to, correlation_id=d.envelope.message_id)
    broker.settle(d, [Outgoing(reply, Target.REPLY)])
print("consuming", flush=True)
broker.consume("bench", 2, on_delivery)
"""


def broker_rate(url: str) -> float:
    """Messages/s through the embedded broker alone: publish, consume, settle with a reply."""
    from runner.broker import Envelope, connect

    with connect(url) as broker:
        broker.declare_queue("bench", ["bench.#"])
        consumer = subprocess.Popen([sys.executable, "-c", BROKER_CONSUMER, url],
                                    stdout=subprocess.PIPE, text=True)
        try:
            assert consumer.stdout is not None and consumer.stdout.readline().startswith("consuming")
            inbox = broker.reply_inbox()
            start = time.perf_counter()
            for i in range(N):
                broker.publish(Envelope(body=b"{}", message_id=str(i), type="noop",
                                        routing_key="bench.noop", reply_to=inbox.address))
            for i in range(N):
                assert inbox.get(str(i), 60) is not None
            return N / (time.perf_counter() - start)
        finally:
            consumer.kill()
            consumer.wait(60)


HUEY_APP = """
import subprocess
from huey import SqliteHuey
huey = SqliteHuey(filename={db!r})

@huey.task()
def noop():
    return 1

@huey.task()
def noop_subprocess():
    subprocess.run(["true"], check=True)
    return 1
"""


def huey_rate(tmp: Path, task: str) -> float:
    app = tmp / f"hueyapp_{task}.py"
    app.write_text(textwrap.dedent(HUEY_APP.format(db=str(tmp / f"huey_{task}.db"))))
    env = {**os.environ, "PYTHONPATH": str(tmp)}
    consumer = subprocess.Popen(
        [sys.executable, "-m", "huey.bin.huey_consumer", f"hueyapp_{task}.huey", "-w", "2", "-k", "thread", "-q"],
        env=env, cwd=tmp, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    sys.path.insert(0, str(tmp))
    try:
        mod = __import__(f"hueyapp_{task}")
        fn = getattr(mod, task)
        fn()(blocking=True, timeout=60)  # warm-up
        start = time.perf_counter()
        results = [fn() for _ in range(N)]
        for r in results:
            r(blocking=True, timeout=300)
        return N / (time.perf_counter() - start)
    finally:
        consumer.send_signal(signal.SIGINT)
        consumer.wait(60)


def main() -> None:
    rows = []
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        rows.append(("runner, sqlite broker", "sandboxed subprocess", runner_rate(f"sqlite:///{tmp / 'b.sqlite3'}", tmp / "w1")))
        rows.append(("runner, RabbitMQ", "sandboxed subprocess", runner_rate(AMQP, tmp / "w2")))
        rows.append(("huey, SqliteHuey", "in-process function", huey_rate(tmp, "noop")))
        rows.append(("huey, SqliteHuey", "subprocess.run(['true'])", huey_rate(tmp, "noop_subprocess")))
        rows.append(("runner's sqlite broker", "none (settle + reply)", broker_rate(f"sqlite:///{tmp / 'raw.sqlite3'}")))
    base = rows[0][2]
    print(f"trivial jobs, N={N}, 2 slots, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    print(f"{'system':<24} {'job':<26} {'jobs/s':>8} {'vs runner/sqlite':>17}")
    for name, job, rate in rows:
        print(f"{name:<24} {job:<26} {rate:8.1f} {rate / base:16.2f}x")


if __name__ == "__main__":
    main()
