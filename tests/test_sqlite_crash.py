"""The embedded broker under fire: workers, submitters and the monitor SIGKILLed at random.

Afterwards the broker file is intact, no job that a submitter saw confirmed is lost, and a job
ran twice only if it was in flight when something was killed.  A job's outcome is counted by
its reply, which the broker stores in the same transaction as the job's acknowledgement: one
reply, one settled job.  The replies go to an inbox this test holds open for the whole run, so
they outlive the submitter that published the job.
"""

from __future__ import annotations

import os
import random
import re
import signal
import sqlite3
import subprocess
import sys
from collections import Counter
from contextlib import closing
from pathlib import Path

import pytest
from conftest import TESTS, WorkerProcess, wait_until

from runner.broker import connect

JOBS = 2000
SUBMITTERS = 2
WORKERS = 3
WORKER_KILLS = 8
SUBMITTER_KILLS = 3
MONITOR_KILLS = 3
QUEUE = "crash"

# A submitter: publishes its share with replies to the test's inbox, noting each confirmed id;
# started again after a kill, it goes on after the last id it noted.
SUBMITTER = """
import os, sys
from runner.broker import connect
from runner.message import JobMessage
url, prefix, count, address, noted = sys.argv[1], sys.argv[2], int(sys.argv[3]), sys.argv[4], sys.argv[5]
done = len(open(noted).read().split()) if os.path.exists(noted) else 0
fd = os.open(noted, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
with connect(url) as broker:
    for n in range(done, count):
        job_id = f"{prefix}-{n:05d}"
        message = JobMessage(job="noop", params={"n": n}, route="crash", id=job_id)
        broker.publish(message.to_envelope(reply_to=address))
        os.write(fd, f"{job_id}\\n".encode())
"""


class Box:
    """The processes of the run, each restartable after a kill, and what was killed when."""

    def __init__(self, tmp_path: Path, url: str, address: str) -> None:
        self.tmp = tmp_path
        self.url = url
        self.address = address
        self.env = {
            **os.environ, "RUNNER_BROKER_URL": url, "RUNNER_PLUGINS": "jobs_plugin",
            "RUNNER_WORKDIR": str(tmp_path / "work"), "RUNNER_CONCURRENCY": "2",
            "XDG_DATA_HOME": str(tmp_path / "data"),
        }
        self.env.pop("RUNNER_LOAD_PLUGINS", None)  # every first-party plugin, as by default
        self.logs: list[WorkerProcess] = []
        self.killed: list[WorkerProcess] = []
        self.workers = [self.start_worker() for _ in range(WORKERS)]
        self.monitor = self.start_monitor()
        self.share = JOBS // SUBMITTERS
        self.submitters = [self.start_submitter(i) for i in range(SUBMITTERS)]
        self.boundary: set[str] = set()  # ids a killed submitter may have published unnoted

    def start_worker(self) -> WorkerProcess:
        wp = WorkerProcess(self.env, ["--queue", QUEUE, "--bind", "crash.#"],
                           self.tmp / f"worker{len(self.logs)}.log")
        self.logs.append(wp)
        wp.wait_for_log("consuming queue")
        return wp

    def start_monitor(self) -> WorkerProcess:
        wp = WorkerProcess(self.env, ["--listen", "127.0.0.1:0", "--db",
                                      str(self.tmp / "monitor.sqlite3")],
                           self.tmp / "monitor.log", command="monitor")
        wp.wait_for_log("recording events")
        return wp

    def noted(self, i: int) -> list[str]:
        path = self.tmp / f"submitted{i}.txt"
        return path.read_text().split() if path.exists() else []

    def start_submitter(self, i: int) -> subprocess.Popen:
        return subprocess.Popen(
            [sys.executable, "-c", SUBMITTER, self.url, f"s{i}", str(self.share), self.address,
             str(self.tmp / f"submitted{i}.txt")], cwd=str(TESTS), env=self.env,
        )

    def kill_worker(self, rng: random.Random) -> None:
        i = rng.randrange(len(self.workers))
        victim = self.workers[i]
        victim.wait_for_log(" started", timeout=60, since=len(victim.lines))  # mid-work
        victim.stop(signal.SIGKILL)
        self.killed.append(victim)
        self.workers[i] = self.start_worker()

    def kill_submitter(self, rng: random.Random) -> bool:
        live = [i for i, p in enumerate(self.submitters) if p.poll() is None]
        if not live:
            return False
        i = rng.choice(live)
        target = min(self.share, len(self.noted(i)) + rng.randrange(20, 120))
        wait_until(lambda: len(self.noted(i)) >= target or self.submitters[i].poll() is not None,
                   60, "the submitter to publish more")
        self.submitters[i].send_signal(signal.SIGKILL)
        self.submitters[i].wait(10)
        count = len(self.noted(i))
        self.boundary.add(f"s{i}-{count:05d}")  # published, maybe, but never noted
        self.submitters[i] = self.start_submitter(i)
        return True

    def kill_monitor(self) -> None:
        self.monitor.stop(signal.SIGKILL)
        self.monitor = self.start_monitor()

    def starts(self, logs: list[WorkerProcess]) -> Counter:
        return Counter(job_id for w in logs for job_id in started(w))

    def in_flight_at_kills(self) -> set[str]:
        # A killed worker ran at most its two slots' jobs: they are among its last starts (a
        # few more than two, as one slot may finish jobs while the other runs one).
        return {job_id for w in self.killed for job_id in started(w)[-6:]}


def started(worker: WorkerProcess) -> list[str]:
    return [m.group(1) for line in worker.lines
            if (m := re.search(r"job (\S+) noop attempt \d+ started", line))]


@pytest.mark.timeout(300)
def test_sigkills_anywhere_lose_no_job_and_keep_the_file_intact(tmp_path):
    # Given three workers, a monitor and two submitters on one embedded broker file (short
    # leases, so that a killed worker's jobs come back quickly), replies kept by this test
    path = tmp_path / "broker.sqlite3"
    url = f"sqlite:///{path}?lease=5&poll_interval=0.05"
    keeper = connect(url)
    keeper.declare_queue(QUEUE, ["crash.#"])
    inbox = keeper.reply_inbox()
    box = Box(tmp_path, url, inbox.address)
    rng = random.Random(12)
    try:
        # When workers, submitters and the monitor are SIGKILLed at random moments, and restarted
        # (the submitters first: they publish 2,000 jobs in seconds, the workers take longer)
        for _ in range(SUBMITTER_KILLS):
            assert box.kill_submitter(rng), "the submitters finished before they were killed"
        actions = ["worker"] * WORKER_KILLS + ["monitor"] * MONITOR_KILLS
        rng.shuffle(actions)
        for action in actions:
            if action == "worker":
                box.kill_worker(rng)
            else:
                box.kill_monitor()
        for i, proc in enumerate(box.submitters):
            assert proc.wait(120) == 0, f"submitter {i} failed"
        confirmed = {job_id for i in range(SUBMITTERS) for job_id in box.noted(i)}
        assert len(confirmed) == JOBS

        # Then every confirmed job is settled (its reply stored with its acknowledgement)
        def replies() -> Counter:
            with closing(sqlite3.connect(f"file:{path}?mode=ro", uri=True)) as db:
                rows = db.execute("SELECT correlation_id, COUNT(*) FROM replies WHERE address = ? "
                                  "GROUP BY correlation_id", (inbox.address,)).fetchall()
            return Counter(dict(rows))

        wait_until(lambda: confirmed <= set(replies()), 150, "every confirmed job to finish")
        wait_until(lambda: keeper.queue_depth(QUEUE) == 0, 30, "the queue to drain")
    finally:
        for wp in [*box.workers, box.monitor]:
            wp.stop(signal.SIGKILL)
        for proc in box.submitters:
            proc.kill()
    settled = replies()
    keeper.close()
    # And settled once each, except a job a killed submitter may have published without noting
    twice = {job_id for job_id, n in settled.items() if n > 1}
    assert twice <= box.boundary, twice
    # And a job ran more than once only if it was in flight in a worker that was killed
    ran = box.starts(box.logs)
    in_flight_at_kill = box.in_flight_at_kills()
    rerun = {job_id for job_id, n in ran.items() if n > 1}
    assert rerun <= in_flight_at_kill | box.boundary, rerun - in_flight_at_kill
    assert len(rerun - box.boundary) <= WORKER_KILLS * 2  # at most a worker's two slots each
    # And both SQLite files are intact
    for name in ("broker.sqlite3", "monitor.sqlite3"):
        with closing(sqlite3.connect(tmp_path / name)) as db:
            assert db.execute("PRAGMA integrity_check").fetchall() == [("ok",)], name
    print(f"{JOBS} jobs; killed {WORKER_KILLS} workers, {SUBMITTER_KILLS} submitters, "
          f"{MONITOR_KILLS} monitors; {len(rerun)} re-run", file=sys.stderr)
