"""Signed webhooks: delivered, verifiable, spooled while the receiver is down, off the job path."""

from __future__ import annotations

import base64
import json
import logging
import re
import signal
import socket
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from runner_webhook.config import webhook_settings
from runner_webhook.spool import Spool
from standardwebhooks import Webhook
from standardwebhooks.webhooks import WebhookVerificationError

from runner import ConfigError
from runner.broker import connect
from runner.client import Client
from runner.message import JobMessage, JobOptions
from runner.plugins import make_plugins
from runner.testing import running_worker

DOCS = Path(__file__).parent.parent / "docs" / "webhooks.md"
SECRET = b"test-secret-0123456789abcdef"


def doc_verifier():
    """The receiver's verification function exactly as docs/webhooks.md shows it."""
    code = re.search(r"```python\n(import hashlib.*?)```", DOCS.read_text(), re.DOTALL).group(1)
    namespace: dict = {}
    exec(code, namespace)  # noqa: S102 - our own documentation
    return namespace["verify_runner_signature"]


class Receiver:
    """A webhook receiver on loopback: records requests; can answer, fail or hang."""

    def __init__(self, port: int = 0, mode: str = "ok") -> None:
        self.mode = mode
        self.release = threading.Event()  # ends a hang
        self.requests: list[dict] = []
        self.changed = threading.Condition()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = self.rfile.read(int(self.headers["Content-Length"]))
                if receiver.mode == "hang":
                    receiver.release.wait(60)
                with receiver.changed:
                    receiver.requests.append({"headers": dict(self.headers.items()), "body": body})
                    receiver.changed.notify_all()
                self.send_response(500 if receiver.mode == "fail" else 204)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", port), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}/hook"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def wait_for(self, count: int, timeout: float = 30) -> list[dict]:
        with self.changed:
            assert self.changed.wait_for(lambda: len(self.requests) >= count, timeout), (
                f"{len(self.requests)} of {count} webhooks arrived"
            )
            return list(self.requests)

    def close(self) -> None:
        self.release.set()
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def receivers():
    started: list[Receiver] = []

    def start(port: int = 0, mode: str = "ok") -> Receiver:
        started.append(Receiver(port, mode))
        return started[-1]

    yield start
    for r in started:
        r.close()


@pytest.fixture
def free_port():
    """A loopback port nothing listens on (until a test starts a receiver there)."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture
def webhook_table(tmp_path):
    secret = tmp_path / "webhook.secret"
    secret.write_bytes(SECRET + b"\n")
    return {"secret_file": str(secret), "spool_dir": str(tmp_path / "spool"),
            "wait": "0.1s", "max_wait": "0.3s", "timeout": "20s"}


@pytest.fixture
def webhook_env(amqp_url, settings_factory, route, webhook_table):
    """Start a worker (test jobs + webhook plugin) and a client; returns the client."""
    with ExitStack() as stack:

        def start(jobs=None, **changes):
            settings = settings_factory(route, jobs={"webhook": webhook_table, **(jobs or {})},
                                        grace=0, **changes)
            plugins = make_plugins(load=["webhook"], modules=["jobs_plugin"], settings=settings)
            stack.enter_context(running_worker(settings, plugins))
            return stack.enter_context(Client(connect(amqp_url), plugins, settings))

        yield start


def spool_entries(table) -> list[dict]:
    """What the spool holds now; a file the sender removes while we look is gone, not an error."""
    root = Path(table["spool_dir"])
    entries = []
    for path in sorted(root.glob("*.json")) if root.exists() else []:
        try:
            entries.append(json.loads(path.read_text()))
        except FileNotFoundError:
            continue
    return entries


def wait_until(predicate, timeout: float = 30, what: str = "condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.05)
    raise AssertionError(f"{what} not reached within {timeout}s")


def test_a_success_is_posted_once_with_a_verifiable_signature(webhook_env, route, receivers, webhook_table):
    # Given a receiver and a worker with a webhook secret
    receiver = receivers()
    client = webhook_env()
    # When a job with --webhook succeeds
    result = client.submit("echo", {"text": "hi"}, route=route, wait=True,
                           webhook=receiver.url).wait(30)
    (hit,) = receiver.wait_for(1)
    # Then a receiver verifies it with an off-the-shelf Standard Webhooks library, given the
    # secret in the whsec_ form docs/webhooks.md tells how to make
    receiver_key = Webhook("whsec_" + base64.b64encode(SECRET).decode())
    assert json.loads(hit["body"]) == receiver_key.verify(hit["body"], hit["headers"])
    lowered = {k.lower(): v for k, v in hit["headers"].items()}  # HTTP names are case-blind
    assert lowered["webhook-id"] == lowered["runner-delivery"]
    with pytest.raises(WebhookVerificationError):
        receiver_key.verify(hit["body"].replace(b"hi", b"ho"), hit["headers"])
    with pytest.raises(WebhookVerificationError):
        Webhook(b"another-secret-0123456789").verify(hit["body"], hit["headers"])
    # And, for one more release, with the deprecated scheme's documented code
    verify = doc_verifier()
    header = hit["headers"]["Runner-Signature"]
    assert re.fullmatch(r"t=\d+,v1=[0-9a-f]{64}", header)
    assert verify(SECRET, header, hit["body"])
    assert not verify(SECRET, header, hit["body"].replace(b"hi", b"ho"))
    assert not verify(b"another-secret-0123456789", header, hit["body"])
    # And the body is the result, outputs without their data
    body = json.loads(hit["body"])
    assert (body["id"], body["status"], body["event"], body["value"]) == (
        result.id, "succeeded", "job.succeeded", {"text": "hi", "attempt": 1})
    assert body["outputs"] == [{"name": "echo.txt", "size": 2, "sha256": result.outputs[0].sha256}]
    assert hit["headers"]["Runner-Event"] == "job.succeeded" and hit["headers"]["Runner-Delivery"]
    # And it was delivered once: the spool is empty and nothing else arrives
    wait_until(lambda: not spool_entries(webhook_table), what="empty spool")
    assert len(receiver.requests) == 1


def test_a_final_failure_is_posted_once_after_the_last_attempt(webhook_env, route, receivers):
    receiver = receivers()
    client = webhook_env()
    result = client.submit("boom", {"message": "bad"}, route=route, wait=True,
                           webhook=receiver.url).wait(30, raise_on_failure=False)
    (hit,) = receiver.wait_for(1)
    body = json.loads(hit["body"])
    assert body["status"] == "failed" and body["attempts"] == 2 == result.attempts
    assert body["event"] == "job.failed" and body["dead_reason"] == "attempts exhausted"
    assert "ValueError: boom: bad" in body["error"] and "jobs_plugin.py" in body["traceback"]
    assert len(receiver.requests) == 1
    client.broker.take_dead(result.id)


def test_a_job_that_cannot_run_is_posted_as_failed(webhook_env, route, receivers):
    receiver = receivers()
    client = webhook_env()
    msg = JobMessage(job="echo", params={"text": "x", "colour": "red"}, route=route,
                     options=JobOptions(webhook=receiver.url))
    client.broker.publish(msg.to_envelope())
    body = json.loads(receiver.wait_for(1)[0]["body"])
    assert body["id"] == msg.id and body["attempts"] == 0
    assert "no parameter 'colour'" in body["error"] == body["dead_reason"]
    client.broker.take_dead(msg.id)


def test_a_job_type_webhook_from_the_config(webhook_env, route, receivers):
    receiver = receivers()
    client = webhook_env(jobs={"echo": {"webhook": receiver.url}})
    result = client.submit("echo", {"text": "cfg"}, route=route, wait=True).wait(30)
    assert json.loads(receiver.wait_for(1)[0]["body"])["id"] == result.id


def test_receiver_down_then_up_gets_it_later(webhook_env, route, receivers, free_port, webhook_table):
    # Given a receiver that is down
    url = f"http://127.0.0.1:{free_port}/hook"
    client = webhook_env()
    result = client.submit("echo", {"text": "later"}, route=route, wait=True, webhook=url).wait(30)
    # When the delivery has failed a few times
    wait_until(lambda: any(e["tries"] >= 2 for e in spool_entries(webhook_table)), what="failed tries")
    assert "cannot connect" in spool_entries(webhook_table)[0]["last_error"]
    # And the receiver comes up
    receiver = receivers(port=free_port)
    # Then it gets the delivery, once
    (hit,) = receiver.wait_for(1)
    assert json.loads(hit["body"])["id"] == result.id
    wait_until(lambda: not spool_entries(webhook_table), what="empty spool")
    assert len(receiver.requests) == 1


def test_a_delivery_survives_a_killed_worker(amqp_url, worker_process, route, cleanup_queues,
                                             receivers, free_port, webhook_table, tmp_path, plugins):
    # Given `runner worker` processes configured for webhooks, and a receiver that is down
    config = tmp_path / "runner.toml"
    config.write_text("[jobs.webhook]\n" + "".join(f"{k} = {json.dumps(v)}\n" for k, v in webhook_table.items()))
    queue = f"test.{route}"
    cleanup_queues.append(queue)
    env = {"RUNNER_CONFIG": str(config), "RUNNER_LOAD_PLUGINS": "webhook"}
    first = worker_process(queue, [f"{route}.#"], env=env)
    url = f"http://127.0.0.1:{free_port}/hook"
    with Client(connect(amqp_url), plugins, first_settings(amqp_url)) as client:
        result = client.submit("echo", {"text": "x"}, route=route, wait=True, webhook=url).wait(30)
    wait_until(lambda: any(e["tries"] >= 1 for e in spool_entries(webhook_table)), what="a failed try")
    # When that worker is killed, the receiver comes up, and another worker starts
    first.stop(signal.SIGKILL)
    receiver = receivers(port=free_port)
    worker_process(queue, [f"{route}.#"], env=env)
    # Then the new worker delivers what the dead one owed
    (hit,) = receiver.wait_for(1)
    assert json.loads(hit["body"])["id"] == result.id


def first_settings(amqp_url):
    from runner.config import Settings

    return Settings(broker_url=amqp_url)


def test_a_hanging_receiver_never_holds_a_job_slot(webhook_env, route, receivers):
    # Given a receiver that does not answer, and a worker with one slot
    receiver = receivers(mode="hang")
    client = webhook_env(concurrency=1)
    # When three jobs asking for webhooks run one after the other
    started = time.monotonic()
    handles = [client.submit("echo", {"text": str(i)}, route=route, wait=True,
                             webhook=receiver.url) for i in range(3)]
    ids = [h.wait(30).id for h in handles]
    # Then they all finished long before the receiver's 20 s timeout
    assert time.monotonic() - started < 10
    # And once the receiver answers, each webhook arrives
    receiver.release.set()
    assert sorted(json.loads(r["body"])["id"] for r in receiver.wait_for(3)) == sorted(ids)


def test_a_webhook_to_a_host_not_allowed_is_not_sent(webhook_env, route, receivers, webhook_table, caplog):
    receiver = receivers()
    webhook_table["allowed_hosts"] = ["hooks.example.com"]
    client = webhook_env()
    with caplog.at_level(logging.WARNING, logger="runner_webhook"):
        result = client.submit("echo", {"text": "x"}, route=route, wait=True,
                               webhook=receiver.url).wait(30)
        wait_until(lambda: any("not in [jobs.webhook] allowed_hosts" in r.getMessage()
                               for r in caplog.records), what="a log line")
    assert result.id in caplog.text and not spool_entries(webhook_table) and not receiver.requests


def test_the_spool_is_bounded_and_says_what_it_drops(tmp_path, caplog):
    spool = Spool(tmp_path / "spool", max_entries=3, max_age=3600)
    with caplog.at_level(logging.WARNING, logger="runner_webhook"):
        for i in range(5):
            spool.put("http://127.0.0.1:9/h", "job.succeeded", f"job{i}", b"{}")
    assert [spool.read(p).job_id for p in spool.pending()] == ["job2", "job3", "job4"]
    dropped = [r.getMessage() for r in caplog.records]
    assert len(dropped) == 2 and "job job0 to http://127.0.0.1:9/h dropped" in dropped[0]
    assert "max_entries" in dropped[0]


def test_old_deliveries_are_dropped_with_a_log_line(webhook_env, route, free_port, webhook_table, caplog):
    webhook_table["max_age"] = "1s"
    client = webhook_env()
    url = f"http://127.0.0.1:{free_port}/hook"
    with caplog.at_level(logging.WARNING, logger="runner_webhook"):
        result = client.submit("echo", {"text": "x"}, route=route, wait=True, webhook=url).wait(30)
        wait_until(lambda: any("max_age" in r.getMessage() for r in caplog.records), what="a drop")
    assert not spool_entries(webhook_table)
    line = next(r.getMessage() for r in caplog.records if "max_age" in r.getMessage())
    assert result.id in line and url in line and "cannot connect" in line


@pytest.mark.parametrize(
    "table, message",
    [
        ({}, r"secret_file: required"),
        ({"secret_file": "/nonexistent/secret"}, r"secret_file: cannot read /nonexistent/secret"),
        ({"secret_file": "SHORT"}, r"secret_file: .* holds fewer than 16 bytes"),
        ({"secret_file": "GOOD", "wait": "soon"}, r"wait: 'soon' is not a duration"),
        ({"secret_file": "GOOD", "retries": 3}, r"retries: unknown setting"),
    ],
)
def test_config_errors_name_the_field(tmp_path, table, message):
    (tmp_path / "short").write_text("abc")
    (tmp_path / "good").write_bytes(SECRET)
    paths = {"SHORT": str(tmp_path / "short"), "GOOD": str(tmp_path / "good")}
    table = {k: paths.get(v, v) if isinstance(v, str) else v for k, v in table.items()}
    with pytest.raises(ConfigError, match=r"\[jobs.webhook\] " + message):
        webhook_settings({"webhook": table})


def test_verify_request_takes_the_standard_headers_and_the_deprecated_one():
    from runner_webhook import verify_request
    from runner_webhook.signing import headers

    body = b'{"id": "j1"}'
    signed = headers(SECRET, "d1", body)
    standard = {k: v for k, v in signed.items() if k.startswith("webhook-")}
    assert verify_request(SECRET, standard, body)
    assert verify_request(SECRET, {"Runner-Signature": signed["Runner-Signature"]}, body)
    assert not verify_request(SECRET, standard, body + b" ")
    assert not verify_request(SECRET, {**standard, "webhook-id": "d2"}, body)
    assert not verify_request(b"another-secret-0123456789", standard, body)
    stale = headers(SECRET, "d1", body, timestamp=int(time.time()) - 3600)
    assert not verify_request(SECRET, {k: v for k, v in stale.items() if k.startswith("webhook-")}, body)
