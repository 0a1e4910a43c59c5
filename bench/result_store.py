"""What the result store costs on trivial-job throughput: no store vs SQLite vs PostgreSQL.

One run, same machine, same broker, same N: `runner worker -c 2` in a subprocess runs a
no-op argv job (`true` in the sandbox, as every runner job is) while one client submits N
jobs and waits for every result.  The worker is started once per configuration
(``[results] url`` is read at start-up): ``off``, an SQLite file, a PostgreSQL database made
for the run and dropped after.  Configurations take turns batch by batch, so that a noisy
neighbour on a shared box hits all of them alike; the median batch is reported, with its ratio
to the no-store figure.  The target (issue 16): at most 10 % fewer jobs/s with a store.

Usage: python bench/result_store.py [--n 200] [--repeat 3] [--broker amqp|sqlite]
       [--postgres postgresql://postgres@127.0.0.1:5432/postgres] [--json FILE]
(prints a table; asserts nothing)
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from dataclasses import replace
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
AMQP = "amqp://guest:guest@127.0.0.1:5672/"
sys.path.insert(0, str(ROOT / "tests"))


class Worker:
    """``runner worker -c 2`` with one result store setting, in its own process group."""

    def __init__(self, broker_url: str, results_url: str, queue: str, route: str, tmp: Path):
        env = {**os.environ, "RUNNER_BROKER_URL": broker_url, "RUNNER_PLUGINS": "jobs_plugin",
               "PYTHONPATH": str(ROOT / "tests"), "RUNNER_WORKDIR": str(tmp / "work"),
               "RUNNER_RESULTS_URL": results_url}
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "worker", "--queue", queue, "--bind",
             f"{route}.#", "-c", "2"],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
            start_new_session=True,
        )
        assert self.proc.stdout is not None
        for line in self.proc.stdout:  # until it consumes
            if "consuming queue" in line:
                break
        else:
            raise RuntimeError("the worker exited before consuming")

    def stop(self) -> None:
        os.killpg(self.proc.pid, signal.SIGTERM)
        try:
            self.proc.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(self.proc.pid, signal.SIGKILL)


def batch(broker_url: str, route: str, n: int) -> float:
    """Jobs/s of n no-op jobs, first submit to last result."""
    from runner.broker import connect
    from runner.client import Client
    from runner.plugins import make_plugins
    from runner.testing import settings_for

    settings = replace(settings_for(broker_url, route), results={"url": "off"})
    with Client(connect(broker_url), make_plugins(modules=["jobs_plugin"]), settings) as client:
        client.submit("noop", route=route, wait=True).wait(60)  # warm: the slot, the connection
        start = time.perf_counter()
        handles = [client.submit("noop", route=route, wait=True) for _ in range(n)]
        for handle in handles:
            handle.wait(300)
        return n / (time.perf_counter() - start)


def put_cost(url: str, n: int = 300) -> float:
    """Median seconds of one ``put`` of a trivial job's result: the store's work per job."""
    from runner.message import JobResult, JobStatus
    from runner.results import open_store

    times = []
    with open_store(url) as store:
        for _ in range(n):
            result = JobResult(id=uuid.uuid4().hex, job="noop", status=JobStatus.SUCCEEDED,
                               attempts=1, exit_code=0, history=({"attempt": 1},))
            start = time.perf_counter()
            store.put(result)
            times.append(time.perf_counter() - start)
    return statistics.median(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n", type=int, default=200, help="jobs per batch")
    parser.add_argument("--repeat", type=int, default=3, help="batches per configuration")
    parser.add_argument("--broker", choices=("amqp", "sqlite"), default="amqp")
    parser.add_argument("--postgres", default="postgresql://postgres@127.0.0.1:5432/postgres")
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    import psycopg

    from runner.broker import connect

    database = f"runner_bench_{uuid.uuid4().hex[:8]}"
    admin = psycopg.connect(args.postgres, autocommit=True)
    admin.execute(f'CREATE DATABASE "{database}"')
    rates: dict[str, list[float]] = {"off": [], "sqlite": [], "postgres": []}
    try:
        with tempfile.TemporaryDirectory() as d:
            tmp = Path(d)
            broker_url = AMQP if args.broker == "amqp" else f"sqlite:///{tmp / 'broker.sqlite3'}"
            urls = {"off": "off", "sqlite": f"sqlite:///{tmp / 'results.sqlite3'}",
                    "postgres": args.postgres.rsplit("/", 1)[0] + f"/{database}"}
            for round_ in range(args.repeat):
                order = list(urls)[round_ % 3:] + list(urls)[:round_ % 3]  # take turns first
                for name in order:
                    route = f"bench{uuid.uuid4().hex[:8]}"
                    queue = f"bench.{route}"
                    worker = Worker(broker_url, urls[name], queue, route, tmp)
                    try:
                        rates[name].append(batch(broker_url, route, args.n))
                    finally:
                        worker.stop()
                        with connect(broker_url) as broker:
                            broker.delete_queue(queue)
                    print(f"  round {round_ + 1} {name:<9} {rates[name][-1]:7.1f} jobs/s",
                          file=sys.stderr)
            costs = {name: put_cost(url) for name, url in urls.items() if name != "off"}
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')
        admin.close()
    base = statistics.median(rates["off"])
    print(f"trivial argv jobs ('true', sandboxed), N={args.n} x {args.repeat}, 2 slots, "
          f"{args.broker} broker, {time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores")
    print(f"{'result store':<14} {'jobs/s (median)':>16} {'vs no store':>12}  batches")
    for name, values in rates.items():
        median = statistics.median(values)
        print(f"{name:<14} {median:16.1f} {median / base:11.2f}x  "
              + ", ".join(f"{v:.1f}" for v in values))
    # The store's own work per job, against one job's time in a slot (2 slots at the base rate):
    # the estimate of what it takes from throughput, steadier than batch rates on a busy box.
    per_job = 2 / base
    for name, cost in costs.items():
        print(f"{name} store: {cost * 1000:.2f} ms per result written, "
              f"{100 * cost / per_job:.1f} % of a job's {per_job * 1000:.0f} ms in a slot")
    if args.json:
        args.json.write_text(json.dumps({"n": args.n, "broker": args.broker, "rates": rates,
                                         "put_seconds": costs,
                                         "date": time.strftime("%Y-%m-%d")}, indent=2))


if __name__ == "__main__":
    main()
