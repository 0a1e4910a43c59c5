"""Helpers and pytest fixtures to run jobs through a real worker in tests.

Plugin authors enable the fixtures with ``pytest_plugins = ["runner.testing"]`` in their
``conftest.py``, then::

    def test_my_job(runner_client, runner_worker):
        result = runner_client.submit("myjob", {"n": 3}, wait=True).wait(timeout=30)
        assert result.value == 9

The broker is the embedded one in a temporary file unless ``RUNNER_TEST_BROKER_URL`` names
another (``amqp://guest:guest@127.0.0.1:5672/``); every test gets its own queue and route.
"""

from __future__ import annotations

import os
import threading
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from runner.broker import connect
from runner.client import Client
from runner.config import Settings
from runner.errors import RunnerError
from runner.plugins import Plugins, make_plugins
from runner.worker import Worker


@contextmanager
def running_worker(
    settings: Settings, plugins: Plugins, name: str | None = None, grace: float = 5.0
) -> Iterator[Worker]:
    """Run a worker in a thread for the duration of the block; stop it gracefully after."""
    broker = connect(settings.broker_url)
    worker = Worker(broker, plugins, settings, name=name)
    failure: list[BaseException] = []

    def target() -> None:
        try:
            worker.run()
        except BaseException as exc:  # surfaced to the test below
            failure.append(exc)
            worker.ready.set()

    thread = threading.Thread(target=target, name=f"worker-{worker.name}", daemon=True)
    thread.start()
    if not worker.ready.wait(30) or failure:
        raise RunnerError(f"worker did not start: {failure[0] if failure else 'timeout'}")
    try:
        yield worker
    finally:
        worker.stop(grace=grace)
        thread.join(grace + 30)
        broker.close()


def unique_route(prefix: str = "t") -> str:
    """A route (and queue) name no other test uses."""
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def settings_for(broker_url: str, route: str, **changes: Any) -> Settings:
    """Settings for a worker consuming ``route`` only."""
    base = Settings(broker_url=broker_url, queue=f"test.{route}", bindings=(f"{route}.#",))
    return replace(base, **changes)


# --- pytest fixtures --------------------------------------------------------------------------
@pytest.fixture
def runner_broker_url(tmp_path: Path) -> str:
    """``RUNNER_TEST_BROKER_URL``, or an embedded broker in a temporary file."""
    return os.environ.get("RUNNER_TEST_BROKER_URL") or f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def runner_route() -> str:
    return unique_route()


@pytest.fixture
def runner_settings(runner_broker_url: str, runner_route: str, tmp_path: Path) -> Settings:
    return settings_for(runner_broker_url, runner_route, workdir=str(tmp_path / "work"))


@pytest.fixture
def runner_plugins() -> Plugins:
    """The installed plugins (entry points), as a worker would load them."""
    return make_plugins()


@pytest.fixture
def runner_worker(runner_settings: Settings, runner_plugins: Plugins) -> Iterator[Worker]:
    """A worker thread consuming this test's route; its queue is deleted afterwards."""
    with running_worker(runner_settings, runner_plugins) as worker:
        yield worker
    with connect(runner_settings.broker_url) as broker:
        broker.delete_queue(runner_settings.queue)


@pytest.fixture
def runner_client(
    runner_settings: Settings, runner_plugins: Plugins, runner_route: str
) -> Iterator[Client]:
    """A client whose jobs go to this test's route by default."""
    settings = replace(runner_settings, routes=_AllRoutes(runner_route))
    client = Client(connect(settings.broker_url), runner_plugins, settings)
    yield client
    client.close()


class _AllRoutes(dict):  # type: ignore[type-arg]
    """A ``[routes]`` table that sends every job type to one route."""

    def __init__(self, route: str) -> None:
        super().__init__()
        self.route = route

    def get(self, key: Any, default: Any = None) -> Any:
        return self.route
