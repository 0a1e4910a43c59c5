"""A 200-member group survives workers SIGKILLed at random and a RabbitMQ restart.

The RabbitMQ here is a node of this test's own (``grp16@localhost`` on 127.0.0.1:5674, data
under the test's temporary directory), started and stopped by the fixture: restarting the
shared server on 5672 would break everyone else's tests.
"""

from __future__ import annotations

import os
import random
import shutil
import signal
import subprocess
from dataclasses import replace
from pathlib import Path

import pika
import pytest
from conftest import WorkerProcess, wait_until

from runner.broker import connect
from runner.client import Client
from runner.results import GroupStatus, open_store
from runner.testing import settings_for, unique_route

RABBIT = "/usr/lib/rabbitmq/bin/rabbitmq-server"
PORT, DIST_PORT = 5674, 25674
MEMBERS = 200


class OwnRabbit:
    """A RabbitMQ node of our own; :meth:`restart` keeps its data (durable queues, messages)."""

    def __init__(self, base: Path) -> None:
        self.base = base
        base.mkdir(parents=True, exist_ok=True)
        (base / "rabbitmq.conf").write_text(f"listeners.tcp.local = 127.0.0.1:{PORT}\n")
        (base / "enabled_plugins").write_text("[].\n")  # no management listener to collide
        (base / "rabbitmq-env.conf").write_text("")  # not the system node's name or settings
        self.env = {
            **os.environ, "HOME": str(base), "RABBITMQ_NODENAME": "grp16@localhost",
            "RABBITMQ_NODE_PORT": str(PORT), "RABBITMQ_DIST_PORT": str(DIST_PORT),
            "RABBITMQ_MNESIA_BASE": str(base / "mnesia"), "RABBITMQ_LOG_BASE": str(base / "log"),
            "RABBITMQ_CONFIG_FILE": str(base / "rabbitmq.conf"),
            "RABBITMQ_ENABLED_PLUGINS_FILE": str(base / "enabled_plugins"),
            "RABBITMQ_CONF_ENV_FILE": str(base / "rabbitmq-env.conf"),
            "RABBITMQ_PID_FILE": str(base / "pid"), "ERL_EPMD_ADDRESS": "127.0.0.1",
        }
        self.url = f"amqp://guest:guest@127.0.0.1:{PORT}/"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        log = (self.base / "server.out").open("ab")
        self.proc = subprocess.Popen([RABBIT], env=self.env, cwd=self.base, stdout=log,
                                     stderr=subprocess.STDOUT, start_new_session=True)
        wait_until(self._up, 120, f"RabbitMQ node grp16 on port {PORT}")

    def _up(self) -> bool:
        if self.proc is not None and self.proc.poll() is not None:
            raise AssertionError(f"RabbitMQ node exited: {(self.base / 'server.out').read_text()[-2000:]}")
        try:
            pika.BlockingConnection(pika.URLParameters(self.url + "?connection_attempts=1")).close()
        except pika.exceptions.AMQPError:
            return False
        return True

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)  # the node shuts down cleanly on SIGTERM
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(30)

    def restart(self) -> None:
        self.stop()
        self.start()


@pytest.fixture
def own_rabbit(tmp_path):
    if not os.path.exists(RABBIT):
        pytest.fail(f"{RABBIT} is required (apt-get install rabbitmq-server; .ci/setup does)")
    rabbit = OwnRabbit(Path(f"/tmp/runner-grp16-{os.getpid()}"))
    rabbit.start()
    yield rabbit
    rabbit.stop()
    shutil.rmtree(rabbit.base, ignore_errors=True)


@pytest.mark.timeout(900)
@pytest.mark.parametrize("transport", ["amqp", "sqlite"])
def test_a_200_member_group_calls_back_once_through_kills_and_a_broker_restart(
    transport, request, tmp_path, plugins
):
    rabbit = request.getfixturevalue("own_rabbit") if transport == "amqp" else None
    broker_url = rabbit.url if rabbit else f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    results_url = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    ledger = tmp_path / "ledger.txt"
    route = unique_route()
    env = {**os.environ, "RUNNER_BROKER_URL": broker_url, "RUNNER_PLUGINS": "jobs_plugin",
           "RUNNER_RESULTS_URL": results_url, "RUNNER_RESULTS_LEASE": "2s",
           "RUNNER_WORKDIR": str(tmp_path / "work"), "RUNNER_TEST_LEDGER": str(ledger),
           "RUNNER_CONCURRENCY": "2", "RUNNER_GRACE": "1s"}
    workers: list[WorkerProcess] = []

    def start_worker() -> None:
        wp = WorkerProcess(env, ["--queue", f"test.{route}", "--bind", f"{route}.#"],
                           tmp_path / f"worker{len(workers)}.log")
        workers.append(wp)
        wp.wait_for_log("consuming queue", timeout=120)

    for _ in range(3):
        start_worker()
    # Given a 200-member group with a callback, submitted by a client that then goes away
    settings = replace(settings_for(broker_url, route), results={"url": results_url})
    with Client(connect(broker_url), plugins, settings) as client:
        handle = client.map("sleeper", [{"seconds": 0.2}] * MEMBERS, route=route).then(
            "collect", {"label": "chaos"}, route=route)
    chaos = random.Random(16)
    kills, restarted = 0, False
    store = open_store(results_url)
    try:
        # When workers are SIGKILLed every ~25 member completions (replaced at once), and
        # RabbitMQ is restarted once halfway
        next_kill = 25
        while (state := store.group(handle.id)) is not None and state.pending:
            if state.done >= next_kill:
                victim = chaos.choice([w for w in workers if w.proc.poll() is None])
                victim.stop(signal.SIGKILL)
                kills += 1
                start_worker()
                next_kill += 25
            if rabbit and not restarted and state.done >= MEMBERS // 2:
                rabbit.restart()
                restarted = True
            wait_until(lambda: (s := store.group(handle.id)) is not None
                       and (s.done >= next_kill or not s.pending), 300, "members ending")
        done = wait_until(lambda: store.get(handle.callback.id), 300, "the callback's result")
    finally:
        store.close()
        for wp in workers:
            wp.stop(signal.SIGKILL)
    # Then the callback ran exactly once, with all 200 member results
    assert kills >= 4 and (restarted or rabbit is None)
    assert done.ok, done.error
    assert len(done.value["members"]) == MEMBERS
    assert [m[0] for m in done.value["members"]] == [h.id for h in handle.members]
    assert all(m[1] == "succeeded" for m in done.value["members"]), done.value["members"]
    assert ledger.read_text().split().count(handle.callback.id) == 1
    with open_store(results_url) as again:
        final = again.group(handle.id)
    assert final.status is GroupStatus.PUBLISHED and final.done == MEMBERS
    if rabbit is None:
        with connect(broker_url) as broker:
            broker.delete_queue(f"test.{route}")
