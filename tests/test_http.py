"""The http job against a real HTTP server on loopback, through a real worker and RabbitMQ."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from contextlib import ExitStack
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from runner import PluginError
from runner.broker import connect
from runner.client import Client
from runner.config import Settings
from runner.errors import JobError
from runner.message import JobMessage
from runner.plugins import make_plugins
from runner.testing import running_worker

DROP = object()  # close the connection without answering


class Server:
    """A scripted HTTP server: each path answers from its list, the last answer repeating."""

    def __init__(self) -> None:
        self.plans: dict[str, list] = {}
        self.requests: list[dict] = []
        self.lock = threading.Lock()
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_any(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                with server.lock:
                    seen = [r for r in server.requests if r["path"] == self.path]
                    server.requests.append({
                        "path": self.path, "method": self.command, "at": time.monotonic(),
                        "headers": dict(self.headers.items()), "body": body.decode(),
                    })
                    plan = server.plans.get(self.path, [(404, {}, b"no plan")])
                    answer = plan[min(len(seen), len(plan) - 1)]
                if answer is DROP:
                    self.close_connection = True
                    self.connection.shutdown(2)
                    return
                status, headers, payload = answer
                if payload == "echo":
                    payload = json.dumps(server.requests[-1]).encode()
                    headers = {**headers, "Content-Type": "application/json"}
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_PUT = do_DELETE = do_PATCH = do_any

            def log_message(self, *args) -> None:
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_port}"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def plan(self, path: str, *answers) -> str:
        self.plans[path] = list(answers)
        return self.url + path

    def hits(self, path: str) -> list[dict]:
        with self.lock:
            return [r for r in self.requests if r["path"] == path]


@pytest.fixture
def server():
    s = Server()
    yield s
    s.httpd.shutdown()
    s.httpd.server_close()


@pytest.fixture
def secret_file(tmp_path):
    """A token file the jobs' sandbox can read (see docs/plugins/http.md, Credentials)."""
    path = tmp_path / "secrets" / "api.token"
    path.parent.mkdir(mode=0o755)
    path.write_text("s3cret-token\n")
    path.chmod(0o644)
    return path


@pytest.fixture
def http_config(secret_file):
    return {
        "allowed_hosts": ["127.0.0.1"],
        "tries": 3, "wait": 0, "max_wait": "2s", "retries": 1, "backoff": 0,
        "credentials": {
            "api": {"header": "Authorization", "prefix": "Bearer ", "value_file": str(secret_file),
                    "hosts": ["127.0.0.1"]},
            "elsewhere": {"value_file": str(secret_file), "hosts": ["api.example.com"]},
        },
    }


def http_settings(settings_factory, route, http_config, secret_file):
    return settings_factory(route, jobs={"http": http_config},
                            sandbox={"read_only": [str(secret_file.parent)]})


@pytest.fixture
def http_env(amqp_url, settings_factory, route, http_config, secret_file):
    """A worker and a client reading [jobs.http] = http_config."""
    with ExitStack() as stack:
        settings = http_settings(settings_factory, route, http_config, secret_file)
        plugins = make_plugins(load=["http"], settings=settings)
        stack.enter_context(running_worker(settings, plugins))
        yield stack.enter_context(Client(connect(amqp_url), plugins, settings))


def call(client, route, **params):
    return client.submit("http", params, route=route, wait=True).wait(60, raise_on_failure=False)


def test_a_503_is_tried_again_in_place_until_it_succeeds(http_env, route, server):
    url = server.plan("/flaky", (503, {}, b"busy"), (503, {}, b"busy"), (200, {"X-Id": "7"}, b'{"synced": 3}'))
    result = call(http_env, route, url=url)
    assert result.ok and result.attempts == 1
    assert result.value["status"] == 200 and result.value["tries"] == 3
    assert result.value["headers"]["X-Id"] == "7" and result.value["body"] == '{"synced": 3}'
    assert len(server.hits("/flaky")) == 3


def test_a_dropped_connection_is_tried_again(http_env, route, server):
    url = server.plan("/drop", DROP, (200, {"Content-Type": "application/json"}, b'{"a": 1}'))
    result = call(http_env, route, url=url)
    assert result.ok and result.value["json"] == {"a": 1} and result.value["tries"] == 2


def test_429_retry_after_is_honoured_in_place(http_env, route, server):
    url = server.plan("/throttle", (429, {"Retry-After": "1"}, b"slow down"), (200, {}, b"ok"))
    result = call(http_env, route, url=url)
    first, second = server.hits("/throttle")
    assert result.ok and result.attempts == 1 and result.value["tries"] == 2
    assert second["at"] - first["at"] >= 1.0


def test_a_long_retry_after_goes_back_to_the_broker_instead_of_holding_the_slot(http_env, route, server):
    # Given a server asking for a 3 s pause, longer than max_wait (2 s)
    url = server.plan("/busy", (429, {"Retry-After": "3"}, b"come back later"), (200, {}, b"ok"))
    # When the job runs
    result = call(http_env, route, url=url)
    # Then the first attempt ended at once, the broker held the job 3 s, the second succeeded
    first, second = server.hits("/busy")
    assert result.ok and result.attempts == 2
    assert second["at"] - first["at"] >= 3.0
    assert "HTTP 429" in result.history[0]["error"] and "come back later" in result.history[0]["error"]
    assert result.history[0]["duration"] < 2.0


def test_a_404_fails_at_once_with_the_response_in_the_error(http_env, route, server):
    url = server.plan("/missing", (404, {}, b'{"error": "no widget 42"}'))
    result = call(http_env, route, url=url)
    assert not result.ok and result.attempts == 1 and len(server.hits("/missing")) == 1
    assert result.error == (
        f'Reject: HTTP 404 Not Found from GET {url}: {{"error": "no widget 42"}}'
    )
    assert http_env.broker.take_dead(result.id).headers["x-runner-dead-reason"] == "failed for good"


def test_5xx_that_never_recovers_uses_every_attempt_then_dies(http_env, route, server):
    url = server.plan("/broken", (500, {}, b"stack trace"))
    result = call(http_env, route, url=url)
    assert not result.ok and result.attempts == 2 and len(server.hits("/broken")) == 6
    assert "HTTP 500 Internal Server Error" in result.error
    http_env.broker.take_dead(result.id)


def test_method_headers_json_body_and_expected_status(http_env, route, server):
    url = server.plan("/echo", (201, {}, "echo"))
    result = call(http_env, route, url=url, method="post", header=["X-Trace: abc"],
                  json_body={"items": [1, 2]}, expect=[201])
    seen = result.value["json"]
    assert result.ok and result.value["status"] == 201 and seen["method"] == "POST"
    assert json.loads(seen["body"]) == {"items": [1, 2]}
    assert seen["headers"]["X-Trace"] == "abc" and seen["headers"]["Content-Type"] == "application/json"
    assert seen["headers"]["Idempotency-Key"] == result.id


def test_an_unexpected_2xx_and_a_redirect_are_failures_not_followed(http_env, route, server):
    elsewhere = server.plan("/target", (200, {}, b"followed"))
    url = server.plan("/moved", (302, {"Location": elsewhere}, b""))
    result = call(http_env, route, url=url, expect=[200])
    assert not result.ok and "HTTP 302 Found" in result.error and not server.hits("/target")
    http_env.broker.take_dead(result.id)


def test_large_bodies_are_capped(amqp_url, settings_factory, route, server, http_config, secret_file):
    settings = http_settings(settings_factory, route, {**http_config, "max_body": "1k"}, secret_file)
    plugins = make_plugins(load=["http"], settings=settings)
    url = server.plan("/big", (200, {}, b"x" * 5000))
    with running_worker(settings, plugins), Client(connect(amqp_url), plugins, settings) as client:
        result = call(client, route, url=url)
    assert result.value["body"] == "x" * 1024 and result.value["truncated"] is True


def test_a_credential_is_read_by_name_on_the_worker(http_env, route, server, secret_file):
    url = server.plan("/echo", (200, {}, "echo"))
    result = call(http_env, route, url=url, credential="api")
    assert result.value["json"]["headers"]["Authorization"] == "Bearer s3cret-token"
    # The message carried the name only
    assert "s3cret" not in json.dumps(result.history) and "s3cret" not in (result.error or "")


def test_a_credential_never_goes_to_a_host_it_is_not_for(http_env, route, server):
    url = server.plan("/echo", (200, {}, "echo"))
    result = call(http_env, route, url=url, credential="elsewhere")
    assert not result.ok and "may not be sent to 127.0.0.1" in result.error
    assert not server.hits("/echo")
    unknown = call(http_env, route, url=url, credential="nosuch")
    assert "credential 'nosuch' is not configured" in unknown.error
    for r in (result, unknown):
        http_env.broker.take_dead(r.id)


def test_a_message_cannot_bring_its_own_configuration(http_env, route, server, secret_file):
    # Given a hand-made message that tries to set the hidden worker_config: allow any host,
    # and point the 'api' credential at another file the job could read
    stolen = secret_file.parent / "other-secret"
    stolen.write_text("other-secret")
    stolen.chmod(0o644)
    url = server.plan("/echo", (200, {}, "echo"))
    forged = {"allowed_hosts": None, "tries": 1, "credentials": {"api": {
        "header": "X-Leak", "prefix": "", "value_file": str(stolen), "hosts": ["127.0.0.1"]}}}
    msg = JobMessage(job="http", params={"url": url, "credential": "api", "worker_config": forged},
                     route=route)
    inbox = http_env.broker.reply_inbox()
    http_env.broker.publish(msg.to_envelope(reply_to=inbox.address))
    reply = json.loads(inbox.get(msg.id, 60).body)
    # Then the worker used its own configuration
    headers = reply["value"]["json"]["headers"]
    assert headers["Authorization"] == "Bearer s3cret-token" and "X-Leak" not in headers


def test_hosts_outside_allowed_hosts_are_refused_on_submit_and_on_the_worker(http_env, route, server):
    url = server.url.replace("127.0.0.1", "localhost") + "/echo"
    with pytest.raises(JobError, match="host localhost is not in \\[jobs.http\\] allowed_hosts"):
        http_env.submit("http", {"url": url}, route=route)
    msg = JobMessage(job="http", params={"url": url}, route=route)
    inbox = http_env.broker.reply_inbox()
    http_env.broker.publish(msg.to_envelope(reply_to=inbox.address))
    assert "not in [jobs.http] allowed_hosts" in json.loads(inbox.get(msg.id, 60).body)["error"]
    assert http_env.broker.take_dead(msg.id) is not None and not server.hits("/echo")


@pytest.mark.parametrize(
    "params, message",
    [
        ({"url": "ftp://127.0.0.1/x"}, "is not an http:// or https:// URL"),
        ({"url": "http://user:pw@127.0.0.1/"}, "name a --credential instead"),
        ({"url": "http://127.0.0.1/", "header": ["X-A: 1\r\nX-B: 2"]}, "is not one 'Name: value'"),
        ({"url": "http://127.0.0.1/", "json_body": "{not json"}, "not valid JSON"),
        ({"url": "http://127.0.0.1/", "method": "BREW"}, "method"),
    ],
)
def test_bad_requests_are_refused_before_sending(params, message):
    job = make_plugins(load=["http"]).jobs.get("http")
    with pytest.raises(JobError, match=message):
        job.validate(params, {})


@pytest.mark.parametrize(
    "table, message",
    [
        ({"allowed_hosts": "example.com"}, r"\[jobs.http\] allowed_hosts: expected a list"),
        ({"credentials": {"gh": {"value_file": "/x"}}}, r"credentials.gh.hosts: required"),
        ({"credentials": {"gh": {"value": "tok", "hosts": []}}}, r"credentials.gh.value: unknown key \(secrets go in a file"),
        ({"credentials": {"gh": {"value_file": "rel", "hosts": []}}}, r"credentials.gh.value_file: expected the absolute path"),
        ({"tries": 0}, r"tries: 0 is not an integer >= 1"),
        ({"request_timeout": "soon"}, r"request_timeout: 'soon' is not a duration"),
        ({"proxy": "x"}, r"proxy: unknown setting"),
    ],
)
def test_invalid_config_is_one_error_naming_the_field(table, message):
    with pytest.raises(PluginError, match=message):
        make_plugins(load=["http"], settings=Settings(jobs={"http": table}))


def test_from_the_cli(amqp_url, tmp_path, server):
    url = server.plan("/echo", (200, {}, "echo"))
    (tmp_path / "runner.toml").write_text('[jobs.http]\nallowed_hosts = ["127.0.0.1"]\n')
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_LOAD_PLUGINS": "http"}

    def cli(*args):
        return subprocess.run([sys.executable, "-m", "runner.cli", *args], check=False, env=env,
                              cwd=tmp_path, capture_output=True, text=True, timeout=120)

    helped = cli("submit", "http", "--help")
    assert "--url URL" in helped.stdout and "--worker-config" not in helped.stdout
    ran = cli("run", "http", "--url", url, "--method", "PUT", "--json-body", '{"x": 1}', "--json")
    assert ran.returncode == 0, ran.stderr
    assert json.loads(ran.stdout)["value"]["json"]["method"] == "PUT"
    refused = cli("run", "http", "--url", url.replace("127.0.0.1", "localhost"))
    assert refused.returncode == 2 and "allowed_hosts" in refused.stderr
