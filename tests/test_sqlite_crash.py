"""The embedded broker under fire: workers SIGKILLed at random lose no job."""

from __future__ import annotations

import os
import random
import re
import signal
import sys
from collections import Counter

from conftest import WorkerProcess

from runner.broker import connect
from runner.client import Client
from runner.testing import settings_for

JOBS = 1000
KILLS = 6


def test_random_sigkills_lose_no_job(tmp_path, plugins):
    # Given three worker processes sharing one embedded broker file (short leases, so the jobs
    # of a killed worker come back quickly)
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}?lease=4&poll_interval=0.05"
    route = "crash"
    env = {
        **os.environ, "RUNNER_BROKER_URL": url, "RUNNER_PLUGINS": "jobs_plugin",
        "RUNNER_WORKDIR": str(tmp_path / "work"), "RUNNER_CONCURRENCY": "2",
    }
    args = ["--queue", "crash", "--bind", "crash.#"]
    logs: list = []

    def start() -> WorkerProcess:
        wp = WorkerProcess(env, args, tmp_path / f"worker{len(logs)}.log")
        logs.append(wp)
        wp.wait_for_log("consuming queue")
        return wp

    workers = [start() for _ in range(3)]
    settings = settings_for(url, route)
    client = Client(connect(url), plugins, settings)
    handles = [client.submit("noop", {"n": i}, route=route, wait=True) for i in range(JOBS)]
    rng = random.Random(7)
    # When workers are SIGKILLed at random moments (after it has started some job) and restarted
    watcher = connect(url)
    for _ in range(KILLS):
        victim = workers[rng.randrange(len(workers))]
        victim.wait_for_log(" started", timeout=60, since=len(victim.lines))
        assert watcher.queue_depth("crash") > 0, "the run ended before the kills did"
        victim.stop(signal.SIGKILL)
        workers[workers.index(victim)] = start()
    watcher.close()
    # Then every job completes
    results = [h.wait(120) for h in handles]
    assert all(r.ok for r in results)
    assert {r.id for r in results} == {h.id for h in handles}
    # And a job ran more than once only if it was in flight when a worker died
    starts = Counter(
        m.group(1) for w in logs for line in w.lines
        if (m := re.search(r"job (\w+) noop attempt \d+ started", line))
    )
    repeated = [job for job, n in starts.items() if n > 1]
    assert len(repeated) <= KILLS * 2, repeated
    for w in workers:
        w.stop()
    client.close()
    print(f"{JOBS} jobs, {KILLS} kills, {len(repeated)} re-run", file=sys.stderr)
