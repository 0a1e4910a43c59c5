"""One bad message never takes a worker down (issue 18, items 1-4 and 8), on both transports."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import replace

import pytest

from badmsg import body, envelope, publish_raw, timestamp_field
from conftest import wait_until
from runner.broker import DEAD_QUEUE, connect
from runner.client import Client
from runner.errors import BrokerError, JobError
from runner.signing import Signer, generate
from runner.testing import running_worker, settings_for


@pytest.fixture(params=["amqp", "sqlite"])
def broker_url(request, amqp_url, tmp_path) -> str:
    return amqp_url if request.param == "amqp" else f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture(params=[False, True], ids=["unsigned", "signed"])
def signer(request, tmp_path) -> Signer | None:
    if not request.param:
        return None
    private, _public = generate(tmp_path / "keys", "api-1")
    return Signer.from_file(private)


@pytest.fixture
def worker_settings(broker_url, route, tmp_path, signer, cleanup_queues):
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"), concurrency=2)
    if broker_url.startswith("amqp"):
        cleanup_queues.append(settings.queue)
    if signer is not None:
        settings = replace(settings, signing={"trusted": {"api-1": str(tmp_path / "keys" / "api-1.pub")}})
    return settings


def _send(broker, env, signer):
    broker.publish(signer.sign(env) if signer is not None else env)


def _dead_reason(broker, message_id: str) -> str:
    letter = wait_until(lambda: broker.take_dead(message_id), 30, f"dead letter {message_id}")
    return str(letter.headers.get("x-runner-dead-reason"))


BAD_PARAMS = {
    "a list for a scalar": ({"seconds": [1]}, {}, "expected a plain value"),
    "an object for a scalar": ({"seconds": {"x": 1}}, {}, "expected a plain value"),
    "1e999": ({"seconds": "@n"}, {"@n": "1e999"}, "out of range"),
    "a 5,000-digit number": ({"seconds": "@n"}, {"@n": "7" * 5000}, "digits"),
    "deep nesting": ({"seconds": "@n"}, {"@n": "[" * 5000 + "]" * 5000}, "nested deeper"),
    "NaN": ({"seconds": "@n"}, {"@n": "NaN"}, "not a JSON number"),
}


@pytest.mark.parametrize("case", BAD_PARAMS, ids=list(BAD_PARAMS))
def test_bad_params_are_dead_lettered_and_the_jobs_behind_them_run(case, worker_settings, plugins, signer, route):
    params, raw, reason = BAD_PARAMS[case]
    with running_worker(worker_settings, plugins) as worker, connect(worker_settings.broker_url) as broker:
        # Given two bad messages, as many as the worker has slots, with a good job behind them
        bad = [envelope(body("sleeper", params, route), route, "sleeper", raw=raw) for _ in range(2)]
        for env in bad:
            _send(broker, env, signer)
        with Client(connect(worker_settings.broker_url), plugins, worker_settings, signer=signer) as client:
            good = client.submit("echo", {"text": "after"}, route=route, wait=True)
            # Then the good job runs, each bad one is dead-lettered with the reason
            assert good.wait(30).value["text"] == "after"
        for env in bad:
            assert reason in _dead_reason(broker, env.message_id)
        assert not worker.stopped.is_set()
    # and the worker stopped (the block's exit) without anything left unsettled
    assert worker.stopped.is_set() and not worker.forced


HEADERS = {
    "x-runner-deliveries as a string": ({"x-runner-deliveries": "abc"}, "x-runner-deliveries"),
    "x-runner-deliveries negative": ({"x-runner-deliveries": -3}, "x-runner-deliveries"),
    "x-runner-deliveries as a table": ({"x-runner-deliveries": {"n": 1}}, "x-runner-deliveries"),
    "attempt as a string": ({"x-runner-attempt": "2"}, "attempt"),
    "history not JSON": ({"x-runner-history": "[{"}, "history"),
    "history deeply nested": ({"x-runner-history": "[" * 3000 + "]" * 3000}, "history"),
}


@pytest.mark.parametrize("case", HEADERS, ids=list(HEADERS))
def test_a_bad_header_is_dead_lettered_before_anything_acts_on_it(case, worker_settings, plugins, signer, route):
    headers, reason = HEADERS[case]
    with running_worker(worker_settings, plugins) as worker, connect(worker_settings.broker_url) as broker:
        env = envelope(body("noop", {"n": 1}, route), route, headers=headers)
        _send(broker, env, signer)
        with Client(connect(worker_settings.broker_url), plugins, worker_settings, signer=signer) as client:
            assert client.submit("noop", {"n": 2}, route=route, wait=True).wait(30).ok
        assert reason in _dead_reason(broker, env.message_id)
        assert not worker.stopped.is_set()
    assert not worker.forced


def test_a_header_timestamp_no_date_can_hold_does_not_loop_the_worker(amqp_url, settings_factory, plugins, route):
    # pika itself used to fail to decode it, drop the connection and get the message again
    settings = replace(settings_factory(route), concurrency=2)
    with running_worker(settings, plugins) as worker, connect(amqp_url) as broker:
        env = envelope(body("noop", {"n": 1}, route), route, headers={"x-runner-attempt": timestamp_field(2**62)})
        publish_raw(amqp_url, env)
        with Client(connect(amqp_url), plugins, settings) as client:
            assert client.submit("noop", {"n": 2}, route=route, wait=True).wait(30).ok
        assert "attempt header" in _dead_reason(broker, env.message_id)
        assert not worker.stopped.is_set()


def test_nan_timeout_is_refused(worker_settings, plugins, signer, route):
    with running_worker(worker_settings, plugins), connect(worker_settings.broker_url) as broker:
        env = envelope(body("noop", {}, route, options={"timeout": "@t"}), route, raw={"@t": "NaN"})
        _send(broker, env, signer)
        assert "NaN" in _dead_reason(broker, env.message_id)
    with Client(connect(worker_settings.broker_url), plugins, worker_settings) as client:
        with pytest.raises(JobError, match="timeout"):
            client.submit("noop", {}, route=route, timeout=float("nan"))


def test_a_worker_process_survives_a_string_deliveries_header_and_stops_on_sigterm(client, worker_process, route, amqp_url, cleanup_queues):
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    w = worker_process(queue, [f"{route}.#"], "--concurrency", "2")
    # Given bad messages of issue 18 items 1 and 2, and good jobs behind them
    bad = [
        envelope(body("noop", {}, route), route, headers={"x-runner-deliveries": "abc"}),
        envelope(body("sleeper", {"seconds": [1]}, route), route, "sleeper"),
        envelope(body("sleeper", {"seconds": {"x": 1}}, route), route, "sleeper"),
    ]
    with connect(amqp_url) as broker:
        for env in bad:
            broker.publish(env)
        handles = [client.submit("noop", {"n": i}, route=route, wait=True) for i in range(3)]
        # Then the good jobs run, and every bad one is a dead letter with its reason
        assert all(h.wait(30).ok for h in handles)
        reasons = [_dead_reason(broker, env.message_id) for env in bad]
    assert "x-runner-deliveries" in reasons[0] and all("plain value" in r for r in reasons[1:])
    # and the worker is alive, and stops promptly on SIGTERM
    assert w.proc.poll() is None
    assert w.stop(signal.SIGTERM) == 0


def test_dead_list_shows_a_letter_with_an_impossible_timestamp(amqp_url, tmp_path):
    # Given a dead letter stamped 2**62 (property and header)
    env = replace(envelope(body("noop", {}, "nowhere"), "nowhere", headers={"when": timestamp_field(2**62)}),
                  timestamp=2**62, routing_key=DEAD_QUEUE)
    import pika
    conn = pika.BlockingConnection(pika.URLParameters(amqp_url))
    try:
        props = pika.BasicProperties(message_id=env.message_id, type="noop", timestamp=2**62,
                                     headers={**env.headers, "x-runner-dead-reason": "test"})
        conn.channel().basic_publish("", DEAD_QUEUE, env.body, props)
    finally:
        conn.close()
    try:
        run_env = {**os.environ, "RUNNER_BROKER_URL": amqp_url}

        def listing(*extra: str) -> subprocess.CompletedProcess:
            # The shared runner.dead may be scanned by another run at this moment, which hides
            # a letter for a while: list again until it shows (or the deadline passes)
            deadline = time.monotonic() + 30
            while True:
                proc = subprocess.run([sys.executable, "-m", "runner.cli", "dead", "list", *extra,
                                       "--limit", "100000"], env=run_env, capture_output=True,
                                      text=True, timeout=60)
                if proc.returncode != 0 or env.message_id in proc.stdout or time.monotonic() > deadline:
                    return proc

        # When the operator lists the dead letters, as text and as JSON
        text = listing()
        as_json = listing("--json")
        # Then both work and show it
        assert text.returncode == 0, text.stderr
        assert env.message_id in text.stdout
        assert as_json.returncode == 0, as_json.stderr
        mine = [r for r in json.loads(as_json.stdout) if r["id"] == env.message_id]
        assert mine and mine[0]["submitted"] == f"invalid timestamp {2**62}"
    finally:
        with connect(amqp_url) as broker:
            broker.take_dead(env.message_id)


def _close_connection_of(broker) -> None:
    """Have RabbitMQ close this client's connection, as a network drop or a restart would."""
    port = broker._conn._impl._transport._sock.getsockname()[1]  # noqa: SLF001 - find it server-side
    listing = subprocess.run(["rabbitmqctl", "-q", "list_connections", "pid", "peer_port"],
                             capture_output=True, text=True, check=True, timeout=60).stdout
    names = [line.split("\t")[0] for line in listing.splitlines() if line.endswith(f"\t{port}")]
    assert names, f"no connection from port {port}"
    subprocess.run(["rabbitmqctl", "close_connection", names[0], "test: connection drop"],
                   capture_output=True, check=True, timeout=60)


def test_waits_after_a_connection_drop_raise_broker_error_then_new_jobs_work(amqp_url, plugins, settings_factory, route):
    settings = settings_factory(route)
    with connect(amqp_url) as admin:
        admin.declare_queue(settings.queue, settings.bindings)  # the job is accepted, nobody runs it
    with Client(connect(amqp_url), plugins, settings) as client:
        handle = client.submit("noop", {}, route=route, wait=True)
        _close_connection_of(client.broker)
        # The reply to a job sent on the lost connection cannot come: every wait says so
        for _ in range(3):
            with pytest.raises(BrokerError, match="lost the connection"):
                handle.wait(5)
        # and the client reconnects for the next job
        with running_worker(replace(settings, concurrency=1), plugins):
            assert client.submit("noop", {}, route=route, wait=True).wait(30).ok
