"""Remote control: every live worker answers every command (real RabbitMQ, and SQLite)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from contextlib import ExitStack

import pytest

from runner import control
from runner.broker import connect
from runner.client import Client
from runner.testing import running_worker

from conftest import TESTS


@pytest.fixture(params=["amqp", "sqlite"])
def broker_url(request, tmp_path):
    if request.param == "amqp":
        return request.getfixturevalue("amqp_url")
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def two_workers(broker_url, plugins, route, tmp_path):
    """Two named workers consuming this test's route."""
    from runner.testing import settings_for

    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"), concurrency=2)
    with ExitStack() as stack:
        names = [f"w1-{route}", f"w2-{route}"]
        workers = [stack.enter_context(running_worker(settings, plugins, name=n)) for n in names]
        yield workers
    with connect(broker_url) as broker:
        broker.delete_queue(settings.queue)


def ours(replies, workers):
    """The replies of this test's workers (other tests' workers may share the broker)."""
    names = {w.name for w in workers}
    return {r["worker"]: r for r in replies if r["worker"] in names}


@pytest.mark.parametrize("command", ["ping", "stats", "active", "registered", "queues"])
def test_every_worker_answers(two_workers, broker_url, command):
    with connect(broker_url) as broker:
        replies = ours(control.send(broker, command, timeout=1.5), two_workers)
    assert set(replies) == {w.name for w in two_workers}
    assert all(r["ok"] for r in replies.values())
    if command == "ping":
        assert {r["result"] for r in replies.values()} == {"pong"}
    if command == "stats":
        stats = replies[two_workers[0].name]["result"]
        assert stats["pid"] == os.getpid() and stats["slots"] == 2 and stats["uptime"] > 0
        assert stats["bindings"] == list(two_workers[0].bindings) and stats["running"] == []
    if command == "registered":
        assert "echo" in replies[two_workers[1].name]["result"]


def test_both_workers_resize_their_pools(two_workers, broker_url):
    names = [w.name for w in two_workers]
    with connect(broker_url) as broker:
        shrunk = ours(control.send(broker, "pool_shrink", {"n": 1}, names, timeout=1.5), two_workers)
        grown = ours(control.send(broker, "pool_grow", {"n": 1}, names, timeout=1.5), two_workers)
    assert {n: r["result"] for n, r in shrunk.items()} == {n: {"slots": 1, "max": 2} for n in names}
    assert {n: r["result"] for n, r in grown.items()} == {n: {"slots": 2, "max": 2} for n in names}
    assert [w.pool.size for w in two_workers] == [2, 2]


def test_active_lists_running_jobs_with_their_runtime(two_workers, broker_url, plugins, route):
    settings = two_workers[0].settings
    with Client(connect(broker_url), plugins, settings) as client:
        handle = client.submit("sleeper", {"seconds": 2}, route=route, wait=True)
        with connect(broker_url) as broker:
            running = []
            while not running:  # until one of the workers has started it
                replies = ours(control.send(broker, "active", timeout=0.5), two_workers)
                running = [job for r in replies.values() for job in r["result"]]
        assert running[0]["id"] == handle.id and running[0]["job"] == "sleeper"
        assert running[0]["runtime"] >= 0
        assert handle.wait(30).ok


def test_commands_for_one_worker_reach_only_it(two_workers, broker_url):
    target = two_workers[1].name
    with connect(broker_url) as broker:
        replies = control.send(broker, "ping", destination=[target], timeout=1.0)
    assert [r["worker"] for r in replies] == [target]


def test_bindings_added_and_removed_at_run_time(two_workers, broker_url, plugins, route):
    extra = f"x{route}.#"
    with connect(broker_url) as broker:
        # When a binding is added to the workers' queue
        replies = ours(control.send(broker, "add_binding", {"pattern": extra}, timeout=1.5), two_workers)
        assert all(extra in r["result"] for r in replies.values()) and len(replies) == 2
    # Then jobs on the new route reach them
    with Client(connect(broker_url), plugins, two_workers[0].settings) as client:
        assert client.submit("echo", {"text": "hi"}, route=f"x{route}", wait=True).wait(30).ok
        with connect(broker_url) as broker:
            control.send(broker, "remove_binding", {"pattern": extra}, timeout=1.0)
        # And once removed, that route is unroutable again
        with pytest.raises(Exception, match="no worker queue is bound|unroutable|route"):
            client.submit("echo", {"text": "hi"}, route=f"x{route}")


def test_shutdown_stops_only_the_named_worker(two_workers, broker_url):
    first, second = two_workers
    with connect(broker_url) as broker:
        replies = control.send(broker, "shutdown", destination=[first.name], timeout=1.0)
        assert [r["worker"] for r in replies] == [first.name]
        assert first.stopped.wait(30)
        assert [r["worker"] for r in control.send(broker, "ping", timeout=1.0)
                if r["worker"] in (first.name, second.name)] == [second.name]


def test_cli_control_ping_json(two_workers, broker_url, tmp_path):
    env = {**os.environ, "RUNNER_BROKER_URL": broker_url, "RUNNER_PLUGINS": "jobs_plugin"}
    proc = subprocess.run(
        [sys.executable, "-m", "runner.cli", "control", "stats", "--json", "--timeout", "1.5"],
        env=env, cwd=TESTS, capture_output=True, text=True, timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    names = {r["worker"] for r in json.loads(proc.stdout)}
    assert {w.name for w in two_workers} <= names


def test_rate_limit_of_an_unknown_job_type_is_refused(two_workers, broker_url):
    env = {**os.environ, "RUNNER_BROKER_URL": broker_url, "RUNNER_PLUGINS": "jobs_plugin"}
    only_ours = [a for w in two_workers for a in ("--worker", w.name)]

    def cli(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run(
            [sys.executable, "-m", "runner.cli", "control", *args, *only_ours, "--timeout", "1.5"],
            env=env, cwd=TESTS, capture_output=True, text=True, timeout=60,
        )

    # When a limit is set for a job type no worker has, every worker refuses it, and the
    # command fails
    refused = cli("rate-limit", "nosuch", "5/s")
    assert refused.returncode == 1, refused.stdout + refused.stderr
    assert refused.stdout.count("error: no job type 'nosuch' on this worker") == 2
    assert all(w.limiter.limits() == {} for w in two_workers)
    # And a known one is still accepted
    accepted = cli("rate-limit", "echo", "5/s")
    assert accepted.returncode == 0, accepted.stdout + accepted.stderr
    assert all(w.limiter.limits() == {"echo": "300/m"} for w in two_workers)
