"""Shared fixtures: the real RabbitMQ, test job types, workers in threads and processes."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import tempfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pika
import pytest

from runner.broker import connect
from runner.plugins import Plugins, make_plugins
from runner.testing import settings_for, unique_route

TESTS = Path(__file__).parent
ROOT = TESTS.parent
AMQP_URL = os.environ.get("RUNNER_TEST_AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/")
# Spools, event leftovers and default files of this run stay with it, not in the user's data.
os.environ["XDG_DATA_HOME"] = tempfile.mkdtemp(prefix="runner-test-data-")
POSTGRES_URL = os.environ.get("RUNNER_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres")
# Job processes (child interpreters) import the test job types from here.
os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(TESTS), os.environ.get("PYTHONPATH", "")) if p
)
sys.path.insert(0, str(TESTS))


@pytest.fixture(scope="session")
def amqp_url() -> str:
    """The real RabbitMQ. Its absence is a failure, never a skip."""
    try:
        pika.BlockingConnection(pika.URLParameters(AMQP_URL)).close()
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"RabbitMQ is required at {AMQP_URL} and is not reachable: {exc}")
    return AMQP_URL


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A database of its own on the real PostgreSQL for this test run, dropped after.

    Its absence is a failure, never a skip (``.ci/setup`` starts it).
    """
    import uuid

    try:
        import psycopg
    except ImportError:
        pytest.fail("psycopg is required for the PostgreSQL result store: pip install -e '.[test]'")
    try:
        admin = psycopg.connect(POSTGRES_URL, autocommit=True, connect_timeout=5)
    except Exception as exc:  # noqa: BLE001
        pytest.fail(f"PostgreSQL is required at {POSTGRES_URL} and is not reachable: {exc}")
    name = f"runner_test_{os.getpid()}_{uuid.uuid4().hex[:8]}"
    admin.execute(f'CREATE DATABASE "{name}"')
    base, _, _ = POSTGRES_URL.rpartition("/")
    try:
        yield f"{base}/{name}"
    finally:
        admin.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        admin.close()


@pytest.fixture(scope="session")
def plugins() -> Plugins:
    return make_plugins(modules=["jobs_plugin"])


@pytest.fixture
def route() -> str:
    return unique_route()


@pytest.fixture
def cleanup_queues(amqp_url: str) -> Iterator[list[str]]:
    """Queues named here are deleted after the test."""
    names: list[str] = []
    yield names
    with connect(amqp_url) as broker:
        for name in names:
            broker.delete_queue(name)


@pytest.fixture
def client(amqp_url, plugins, settings_factory):
    """A client on the real RabbitMQ with the test job types."""
    from runner.client import Client

    c = Client(connect(amqp_url), plugins, settings_factory("client"))
    yield c
    c.close()


def wait_until(predicate, timeout: float, what: str):
    """Wait for a condition that another process brings about, with a deadline."""
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)  # re-check interval of an external condition, not a synchronisation guess
    raise AssertionError(f"timed out waiting for {what}")


@pytest.fixture
def settings_factory(amqp_url, tmp_path, cleanup_queues):
    def make(route: str, **changes):
        settings = settings_for(amqp_url, route, workdir=str(tmp_path / "work"), **changes)
        cleanup_queues.append(settings.queue)
        return settings

    return make


class WorkerProcess:
    """``runner worker`` (or another long-running ``runner`` command) in a subprocess; its log
    lines are collected as they arrive."""

    def __init__(
        self, env: dict[str, str], args: list[str], log: Path, command: str = "worker"
    ) -> None:
        self.log = log
        self.lines: list[str] = []
        self.changed = threading.Condition()
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", command, *args],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(TESTS),
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as fh:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                fh.write(line)
                fh.flush()
                with self.changed:
                    self.lines.append(line)
                    self.changed.notify_all()
        with self.changed:
            self.changed.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30, since: int = 0) -> str:
        """Wait until a log line (from line ``since`` on) contains ``text``; return that line."""
        def found() -> str | None:
            hit = [line for line in self.lines[since:] if text in line]
            return hit[0] if hit else None

        with self.changed:
            ok = self.changed.wait_for(
                lambda: found() is not None or self.proc.poll() is not None, timeout
            )
            line = found()
        if line is None:
            state = "exited" if self.proc.poll() is not None else "running"
            raise AssertionError(f"{text!r} not logged ({state}):\n{''.join(self.lines)}")
        assert ok
        return line

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(60)


@pytest.fixture
def worker_process(amqp_url, tmp_path):
    started: list[WorkerProcess] = []

    def start(queue: str, bindings: list[str], *extra: str, env: dict | None = None) -> WorkerProcess:
        full_env = {
            **os.environ,
            "RUNNER_BROKER_URL": amqp_url,
            "RUNNER_PLUGINS": "jobs_plugin",
            "RUNNER_WORKDIR": str(tmp_path / "work"),
            **(env or {}),
        }
        args = ["--queue", queue, *[a for b in bindings for a in ("--bind", b)], *extra]
        wp = WorkerProcess(full_env, args, tmp_path / f"worker{len(started)}.log")
        started.append(wp)
        wp.wait_for_log("consuming queue")
        return wp

    yield start
    for wp in started:
        wp.stop(signal.SIGKILL)
