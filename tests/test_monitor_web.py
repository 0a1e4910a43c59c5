"""The monitor's HTTP side against a real server: ``Monitor.serve`` (uvicorn) in a thread, the
embedded broker, a real worker; requests through urllib.  Roles, the Retry action, metrics,
live updates, and the refusals that keep it safe."""

from __future__ import annotations

import base64
import http.client
import json
import threading
import time
import urllib.error
import urllib.request
from collections.abc import Iterator

import pytest
from prometheus_client.parser import text_string_to_metric_families

from runner.broker import connect
from runner.client import Client
from runner.errors import RunnerError
from runner.plugins import make_plugins
from runner.testing import running_worker, settings_for, unique_route
from runner_monitor.auth import Auth
from runner_monitor.emitter import Emitter
from runner_monitor.service import Monitor

WAIT = 20.0
ADMIN, READER = "adm1n-token", "read-token"


class Served:
    def __init__(self, monitor: Monitor) -> None:
        self.monitor = monitor
        urls: list[str] = []
        monitor.on_ready = urls.append
        self.thread = threading.Thread(target=monitor.serve, daemon=True)
        self.thread.start()
        deadline = time.monotonic() + WAIT
        while not urls and time.monotonic() < deadline and self.thread.is_alive():
            time.sleep(0.02)
        assert urls, "the monitor did not start"
        assert monitor.collector.ready.wait(WAIT)
        self.url = urls[0].rstrip("/")

    def request(self, path: str, token: str | None = ADMIN, method: str = "GET",
                headers: dict | None = None, basic: bool = False) -> tuple[int, dict, bytes]:
        request = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        if token and basic:
            pair = base64.b64encode(f"someone:{token}".encode()).decode()
            request.add_header("Authorization", f"Basic {pair}")
        elif token:
            request.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(request, timeout=WAIT) as response:
                return response.status, dict(response.headers), response.read()
        except urllib.error.HTTPError as exc:
            return exc.code, dict(exc.headers), exc.read()

    def json(self, path: str, **kwargs) -> dict:
        status, _, body = self.request(path, **kwargs)
        assert status == 200, (status, body)
        return json.loads(body)

    def wait_for(self, path: str, check, **kwargs) -> dict:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            found = self.json(path, **kwargs)
            if check(found):
                return found
            time.sleep(0.05)
        raise AssertionError(f"{path} never matched: {found}")

    def stop(self) -> None:
        self.monitor.shutdown()
        self.thread.join(WAIT)


@pytest.fixture
def broker_url(tmp_path) -> str:
    return f"sqlite:///{tmp_path / 'broker.sqlite3'}"


@pytest.fixture
def served(broker_url, tmp_path) -> Iterator[Served]:
    monitor = Monitor(
        broker_url=broker_url, db=tmp_path / "history.sqlite3", listen="127.0.0.1:0",
        queue="runner.monitor", auth=Auth([ADMIN], [READER]), depth_every=0.2,
    )
    server = Served(monitor)
    yield server
    server.stop()


@pytest.fixture
def worker_setup(broker_url, tmp_path):
    plugins = make_plugins(load=[], modules=["jobs_plugin", "monitor_jobs"],
                           extra=[Emitter(heartbeat=0.3)])
    route = unique_route()
    settings = settings_for(broker_url, route, workdir=str(tmp_path / "work"))
    return plugins, settings, route


def test_roles_decide_who_sees_and_who_retries(served):
    # Nobody without a token: 401, with a basic-auth challenge so a browser asks for one
    status, headers, _ = served.request("/api/jobs", token=None)
    assert status == 401 and headers["www-authenticate"].startswith("Basic")
    assert served.request("/api/jobs", token="wrong")[0] == 401
    assert served.request("/", token=None)[0] == 401
    # Read-only: reads everything, retries nothing
    assert served.json("/api/me", token=READER)["role"] == "read"
    assert served.request("/api/workers", token=READER)[0] == 200
    assert served.request("/metrics", token=READER)[0] == 200
    status, _, body = served.request("/api/jobs/abc/retry", token=READER, method="POST")
    assert status == 403 and b"admin" in body
    # Admin by bearer token: allowed (here: nothing to retry)
    status, _, body = served.request("/api/jobs/abc/retry", method="POST")
    assert status == 404 and b"no dead-lettered job abc" in body
    # Admin through basic auth, as a browser sends it: only with the page's own header
    assert served.request("/api/jobs/abc/retry", method="POST", basic=True)[0] == 403
    assert served.request("/api/jobs/abc/retry", method="POST", basic=True,
                          headers={"X-Runner-Monitor": "1"})[0] == 404


def test_a_browser_logs_in_once_with_a_token_link(served):
    conn = http.client.HTTPConnection(served.url.split("//")[1], timeout=WAIT)
    conn.request("GET", f"/?token={READER}")
    response = conn.getresponse()
    assert response.status == 303 and response.getheader("location") == "/"
    cookie = response.getheader("set-cookie")
    assert "HttpOnly" in cookie and "SameSite=strict" in cookie
    response.read()
    conn.request("GET", "/api/me", headers={"Cookie": cookie.split(";")[0]})
    assert json.loads(conn.getresponse().read())["role"] == "read"
    conn.request("GET", "/?token=nope")
    assert conn.getresponse().status == 401


def test_only_loopback_host_names_are_answered(served):
    status, _, body = served.request("/api/me", headers={"Host": "evil.example:5555"})
    assert status == 421
    assert served.request("/api/me", headers={"Host": "localhost"})[0] == 200


def test_the_monitor_binds_loopback_unless_told_otherwise(tmp_path, broker_url):
    db = tmp_path / "h.sqlite3"
    with pytest.raises(RunnerError, match="not loopback: pass --allow-remote"):
        Monitor(broker_url=broker_url, db=db, listen="0.0.0.0:5555")
    with pytest.raises(RunnerError, match="needs --admin-token or --read-token"):
        Monitor(broker_url=broker_url, db=db, listen="0.0.0.0:5555", allow_remote=True)
    with pytest.raises(RunnerError, match="expected HOST:PORT"):
        Monitor(broker_url=broker_url, db=db, listen="localhost")
    Monitor(broker_url=broker_url, db=db, listen="0.0.0.0:5555", allow_remote=True,
            auth=Auth(read_tokens=["t"])).history.close()


def test_jobs_metrics_and_retry_on_the_embedded_broker(served, broker_url, worker_setup):
    plugins, settings, route = worker_setup
    with running_worker(settings, plugins, name="w-embedded"), \
            Client(connect(broker_url), plugins, settings) as client:
        # Given a job that succeeds and one that fails for good
        ok = client.submit("echo", {"text": "x"}, route=route, wait=True).wait(WAIT)
        fail_until = time.time() + 1.0
        bad = client.submit("deadline", {"fail_until": fail_until}, route=route, wait=True).wait(
            WAIT, raise_on_failure=False)
        # Then the API lists them, filters them, and finds one by an id prefix
        expected = {ok.id: "succeeded", bad.id: "dead"}
        served.wait_for("/api/jobs", lambda r: {j["id"]: j["state"] for j in r["jobs"]} == expected)
        assert [j["id"] for j in served.json("/api/jobs?state=failed")["jobs"]] == [bad.id]
        assert [j["id"] for j in served.json(f"/api/jobs?q={ok.id[:6]}")["jobs"]] == [ok.id]
        assert served.json("/api/jobs?job=echo&route=" + route)["total"] == 1
        assert served.json("/api/jobs?since=" + str(time.time() + 60))["total"] == 0
        detail = served.json(f"/api/jobs/{bad.id}")
        assert detail["retryable"] and "still failing" in detail["traceback"]
        assert detail["params"] == {"fail_until": fail_until}
        assert served.json(f"/api/jobs/{bad.id}", token=READER)["retryable"] is False
        # And the workers, queues and metrics say what runs where
        workers = served.wait_for("/api/workers", lambda r: r["workers"])["workers"]
        assert workers[0]["name"] == "w-embedded" and workers[0]["state"] == "online"
        queues = served.wait_for("/api/queues", lambda r: r["queues"] and
                                 r["queues"][0]["depth"] is not None)["queues"]
        assert queues[0] == {**queues[0], "name": settings.queue, "depth": 0, "consumers": 1}
        _, headers, body = served.request("/metrics")
        assert headers["content-type"].startswith("text/plain; version=")
        samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
                   for family in text_string_to_metric_families(body.decode()) for s in family.samples}
        assert samples[("runner_jobs_total", (("job", "echo"), ("state", "succeeded")))] == 1
        assert samples[("runner_jobs_total", (("job", "deadline"), ("state", "dead")))] == 1
        assert samples[("runner_job_duration_seconds_count", (("job", "echo"),))] == 1
        assert samples[("runner_job_duration_seconds_bucket", (("job", "echo"), ("le", "+Inf")))] == 1
        assert samples[("runner_workers_online", ())] == 1
        assert samples[("runner_queue_depth", (("queue", settings.queue),))] == 0
        # When an admin retries the dead job once it would succeed
        time.sleep(max(0.0, fail_until - time.time()))  # the job's own deadline
        status, _, body = served.request(f"/api/jobs/{bad.id}/retry", method="POST")
        assert status == 200, body
        assert json.loads(body)["state"] == "queued"
        # Then it runs again and succeeds; the dead letter is gone
        after = served.wait_for(f"/api/jobs/{bad.id}", lambda j: j["state"] == "succeeded")
        assert [a["outcome"] for a in after["attempts"]] == ["failed", "succeeded"]
        assert [e["event"] for e in after["events"]][-4:] == [
            "job.resubmitted", "job.received", "job.started", "job.succeeded"]
        assert broker_dead(broker_url) == []
    offline = served.wait_for("/api/workers", lambda r: r["workers"][0]["state"] == "offline")
    assert offline["workers"][0]["busy"] == 0


def broker_dead(url: str) -> list[str]:
    with connect(url) as broker:
        return [e.message_id for e in broker.dead_letters()]


def test_live_updates_arrive_as_server_sent_events(served, broker_url, worker_setup):
    host = served.url.split("//")[1]
    conn = http.client.HTTPConnection(host, timeout=WAIT)
    conn.request("GET", "/api/stream", headers={"Authorization": f"Bearer {READER}"})
    response = conn.getresponse()
    assert response.getheader("content-type").startswith("text/event-stream")

    def next_change() -> dict:
        while True:
            line = response.readline().decode()
            if line.startswith("data: "):
                return json.loads(line[6:])

    first = next_change()["generation"]
    plugins, settings, route = worker_setup
    with running_worker(settings, plugins), Client(connect(broker_url), plugins, settings) as c:
        c.submit("echo", {"text": "x"}, route=route, wait=True).wait(WAIT)
        assert next_change()["generation"] > first
    conn.close()
