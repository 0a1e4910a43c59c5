"""A broker that is down or refuses us: the reason in words at once, no retries of what cannot
succeed, and a waiting worker that still stops when told (real RabbitMQ for the refusals)."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from conftest import TESTS, WorkerProcess

PHOTO = Path(__file__).parent.parent / "fixtures" / "images" / "rocket.jpg"


@pytest.fixture
def closed_url() -> Iterator[str]:
    """An AMQP URL whose port is held by a socket that never listens: connections are refused."""
    with socket.socket() as held:
        held.bind(("127.0.0.1", 0))
        yield f"amqp://guest:guest@127.0.0.1:{held.getsockname()[1]}/"


def submit(url: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "RUNNER_BROKER_URL": url, "RUNNER_PLUGINS": "jobs_plugin"}
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "submit", "echo", "--text", "hi"],
        env=env, cwd=TESTS, capture_output=True, text=True, timeout=120,
    )


def test_a_broker_that_is_down_is_named_with_the_reason(closed_url):
    proc = submit(closed_url)
    assert proc.returncode == 3, proc.stderr
    lines = proc.stderr.strip().splitlines()
    # The first line already says why (the client then keeps trying for a while), and the
    # last one is the error: never an empty reason or a bare exception name
    assert "failed (connection refused); trying again" in lines[0], lines
    assert lines[-1].endswith(": connection refused") and lines[-1].startswith("error: cannot connect")
    assert len(lines) == 2, lines
    assert "guest:guest" not in proc.stderr


@pytest.mark.parametrize(("change", "reason"), [
    (lambda url: url.replace("guest:guest@", "guest:not-the-password@"), "refused the credentials"),
    (lambda url: url.rstrip("/") + "/no-such-vhost", "refused access to the vhost"),
])
def test_permanent_refusals_fail_at_once_without_retrying(amqp_url, change, reason):
    proc = submit(change(amqp_url))
    assert proc.returncode == 3, proc.stderr
    assert reason in proc.stderr
    assert "trying again" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr


@pytest.mark.parametrize("sig", [signal.SIGTERM, signal.SIGINT])
def test_a_worker_waiting_for_its_broker_stops_when_told(closed_url, tmp_path, sig):
    # Given a worker whose broker is unreachable, retrying
    env = {**os.environ, "RUNNER_BROKER_URL": closed_url, "RUNNER_PLUGINS": "jobs_plugin",
           "RUNNER_WORKDIR": str(tmp_path / "work")}
    worker = WorkerProcess(env, ["--queue", "unreachable", "--allow-unsigned"], tmp_path / "w.log")
    worker.wait_for_log("failed (connection refused)")
    # When it is told to stop, Then it stops, cleanly
    assert worker.stop(sig) == 0
    worker.wait_for_log("worker stopped before it was consuming")
