"""One box on the default broker: every first-party plugin loaded, each part its own process.

A ``runner worker``, ``runner monitor`` and ``runner beat`` share one SQLite broker file with
three submitter processes and the short-lived CLI commands (``runner control``, ``runner
revoke``, ``runner dead``), as a user who never installed RabbitMQ runs them.  Processes that
come and go while others hold the file are what the embedded broker must survive (issue 12:
one process dropping its own SQLite locks made the worker blind to everyone else's writes).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest
from conftest import TESTS, WorkerProcess, wait_until

JOBS = 500
SUBMITTERS = 3
PINGS = 10

# A submitter process: its share of the jobs, each waited on; prints the outcomes as JSON.
SUBMITTER = """
import json, sys
from runner.client import Client
count, tag = int(sys.argv[1]), sys.argv[2]
with Client.from_settings() as client:
    handles = [client.submit("noop", {"n": i}, wait=True) for i in range(count)]
    results = [h.wait(120, raise_on_failure=False) for h in handles]
print(json.dumps({"ok": [r.id for r in results if r.ok],
                  "failed": [[r.id, r.error] for r in results if not r.ok]}))
"""


@pytest.fixture
def box(tmp_path: Path) -> dict[str, str]:
    """The environment of every process on the box: one broker file, all plugins, a schedule."""
    config = tmp_path / "runner.toml"
    config.write_text('[schedule.tick]\njob = "noop"\nevery = "1s"\n')
    env = {
        **os.environ,
        "RUNNER_BROKER_URL": f"sqlite:///{tmp_path / 'broker.sqlite3'}",
        "RUNNER_PLUGINS": "jobs_plugin",  # the test job types, on top of every entry point
        "RUNNER_CONFIG": str(config),
        "RUNNER_WORKDIR": str(tmp_path / "work"),
        "RUNNER_CONCURRENCY": "4",
        "RUNNER_TEST_LEDGER": str(tmp_path / "ledger.txt"),
        "XDG_DATA_HOME": str(tmp_path / "data"),  # spools, history: not the user's own
    }
    env.pop("RUNNER_LOAD_PLUGINS", None)  # the default: every installed plugin
    return env


def cli(env: dict[str, str], *args: str, timeout: float = 60) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", *args], env=env, cwd=str(TESTS),
        capture_output=True, text=True, timeout=timeout, check=False,
    )


def test_a_whole_box_on_one_broker_file(box, tmp_path):
    # Given a worker and a monitor, each its own process on the default broker
    daemons: list[WorkerProcess] = []
    try:
        worker = WorkerProcess(box, [], tmp_path / "worker.log")
        monitor = WorkerProcess(
            box, ["--listen", "127.0.0.1:0", "--db", str(tmp_path / "monitor.sqlite3")],
            tmp_path / "monitor.log", command="monitor",
        )
        daemons += [worker, monitor]
        worker.wait_for_log("consuming queue")
        monitor.wait_for_log("recording events")

        # When a user runs `runner submit … --wait` three times, from another terminal
        submits = [cli(box, "submit", "noop", "--n", str(i), "--wait", "--wait-timeout", "15")
                   for i in range(3)]
        # Then each job runs and the command returns its result
        assert [s.returncode for s in submits] == [0, 0, 0], [s.stderr for s in submits]
        assert all("succeeded" in s.stdout for s in submits)

        # When `runner control ping` is asked ten times in a row, each a process of its own
        pings = [cli(box, "control", "ping") for _ in range(PINGS)]
        # Then the worker answers every time
        assert [p.returncode for p in pings] == [0] * PINGS, [p.stderr for p in pings]
        assert all('"pong"' in p.stdout for p in pings)

        # Given a beat firing a job every second as well
        beat = WorkerProcess(box, [], tmp_path / "beat.log", command="beat")
        daemons.append(beat)
        beat.wait_for_log("fired slot")
        # When three submitter processes send 500 jobs between them and wait for each
        shares = [JOBS // SUBMITTERS + (i < JOBS % SUBMITTERS) for i in range(SUBMITTERS)]
        submitters = [
            subprocess.Popen([sys.executable, "-c", SUBMITTER, str(n), str(i)], env=box,
                             cwd=str(TESTS), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                             text=True)
            for i, n in enumerate(shares)
        ]
        outcomes = []
        for proc in submitters:
            out, err = proc.communicate(timeout=180)
            assert proc.returncode == 0, err
            outcomes.append(json.loads(out))
        # Then every job succeeded, and each ran exactly once
        assert [o["failed"] for o in outcomes] == [[]] * SUBMITTERS
        ids = {job_id for o in outcomes for job_id in o["ok"]}
        assert len(ids) == JOBS
        ran = Counter(line.split()[0] for line in (tmp_path / "ledger.txt").read_text().splitlines())
        assert {job_id: ran[job_id] for job_id in ids} == dict.fromkeys(ids, 1)
        starts = Counter(m.group(1) for line in worker.lines
                         if (m := re.search(r"job (\w+) noop attempt \d+ started", line)))
        assert max(starts[job_id] for job_id in ids) == 1

        # And the beat's jobs ran once per slot
        fired = [m.group(1) for line in beat.lines if (m := re.search(r"as job (\S+)", line))]
        assert fired and all(ran[job_id] <= 1 for job_id in fired)

        # And the monitor, in its own process, saw every one of them succeed
        from runner_monitor.history import History

        history = History(tmp_path / "monitor.sqlite3", readonly=True)
        wait_until(
            lambda: ids <= {j["id"] for j in history.jobs(state="succeeded", job="noop",
                                                          limit=1000)["jobs"]},
            30, "the monitor to record every job",
        )
        history.close()

        # When a running job is revoked with --terminate
        long = cli(box, "submit", "sleeper", "--seconds", "60").stdout.strip()
        worker.wait_for_log(f"job {long} sleeper attempt 1 started")
        revoked = cli(box, "revoke", long, "--terminate", "--timeout", "2")
        # Then the live worker hears it and stops the job, which is dropped, never rerun
        assert revoked.returncode == 0, revoked.stderr
        assert f"1 live worker(s) told; terminated: {long}" in revoked.stdout
        worker.wait_for_log(f"job {long} sleeper revoked: dropped")

        # When a job fails for good
        doomed = cli(box, "submit", "boom", "--message", "bad input").stdout.strip()
        worker.wait_for_log(f"job {doomed} boom dead after 2 attempts")
        # Then `runner dead` lists it with its error, and sends it back on request
        listed = json.loads(cli(box, "dead", "list", "--json").stdout)
        assert [(d["id"], d["job"]) for d in listed] == [(doomed, "boom")]
        assert "boom: bad input" in cli(box, "dead", "show", doomed).stdout
        seen = len(worker.lines)
        assert cli(box, "dead", "retry", doomed).returncode == 0
        worker.wait_for_log(f"job {doomed} boom attempt 1 started", since=seen)
        # And the revoked job never ran to its end
        assert long not in (tmp_path / "ledger.txt").read_text()
    finally:
        for daemon in daemons:
            daemon.stop()


def test_dead_list_shows_a_dead_letter_whose_timestamp_is_not_a_time(box, tmp_path):
    # Given a dead letter whose timestamp is in milliseconds (a foreign publisher's), as found on
    # a shared RabbitMQ: `runner dead list` crashed with "year 3556290 is out of range"
    from runner.broker import Envelope, Outgoing, Target, connect

    with connect(box["RUNNER_BROKER_URL"]) as broker:
        broker.declare_queue("odd", ["odd.#"])
        odd = Envelope(body=b"{}", message_id="odd-1", type="boom", routing_key="odd.boom",
                       timestamp=1_700_000_000_000)
        broker.publish(odd)

        def dead_letter(delivery) -> None:
            broker.settle(delivery, [Outgoing(odd, Target.DEAD)]).result(10)
            broker.stop_consuming()

        broker.consume("odd", 1, dead_letter)
    # When the dead letters are listed and shown
    listed = cli(box, "dead", "list", "--json")
    shown = cli(box, "dead", "show", "odd-1", "--json")
    # Then the command works, and says the time it was given is not one
    assert listed.returncode == 0, listed.stderr
    assert [(d["id"], d["submitted"]) for d in json.loads(listed.stdout)] == [
        ("odd-1", "invalid timestamp 1700000000000")]
    assert shown.returncode == 0 and json.loads(shown.stdout)["id"] == "odd-1"
