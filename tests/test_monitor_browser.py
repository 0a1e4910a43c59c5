"""The monitor end to end: real RabbitMQ, a real worker, ``runner monitor`` in a subprocess, and
the dashboard in a real headless Chromium (Debian's, driven by Playwright).

Other tests' workers may share the RabbitMQ and so report to this monitor too: assertions look
at this test's own route and job ids.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner

from runner.broker import connect
from runner.cli import cli
from runner.client import Client
from runner.plugins import make_plugins
from runner.testing import running_worker

CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
                 "--disable-component-update", "--disable-sync", "--no-first-run"]
WAIT = 30.0
ADMIN, READER = "admin-" + uuid.uuid4().hex, "reader-" + uuid.uuid4().hex
TESTS = Path(__file__).parent


class MonitorProcess:
    """``runner monitor`` in a subprocess; ``url`` once it listens."""

    def __init__(self, amqp_url: str, db: Path, queue: str, *extra: str) -> None:
        env = {**os.environ, "RUNNER_BROKER_URL": amqp_url}
        self.lines: list[str] = []
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "monitor", "--listen", "127.0.0.1:0",
             "--db", str(db), "--queue", queue, *extra],
            env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, cwd=str(TESTS), text=True,
        )
        self.url = ""
        started = threading.Event()

        def read() -> None:
            assert self.proc.stdout is not None
            for line in self.proc.stdout:
                self.lines.append(line)
                if line.startswith("runner monitor on "):
                    self.url = line.split()[3].rstrip("/")
                    started.set()
            started.set()

        threading.Thread(target=read, daemon=True).start()
        if not started.wait(WAIT) or not self.url:
            self.stop()
            raise AssertionError("monitor did not start:\n" + "".join(self.lines))

    def api(self, path: str, token: str = ADMIN, method: str = "GET", headers: dict | None = None):
        request = urllib.request.Request(self.url + path, method=method, headers=headers or {})
        request.add_header("Authorization", f"Bearer {token}")
        with urllib.request.urlopen(request, timeout=WAIT) as response:
            return json.loads(response.read())

    def wait_for_job(self, job_id: str, state: str) -> dict:
        deadline = time.monotonic() + WAIT
        while time.monotonic() < deadline:
            try:
                job = self.api(f"/api/jobs/{job_id}")
                if job["state"] == state:
                    return job
            except urllib.error.HTTPError as exc:
                if exc.code != 404:
                    raise
            time.sleep(0.1)
        raise AssertionError(f"job {job_id} never reached {state}:\n" + "".join(self.lines))

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(WAIT)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


@pytest.fixture(scope="module")
def monitor_plugins():
    return make_plugins(modules=["jobs_plugin", "monitor_jobs"])


@pytest.fixture
def monitor_queue(amqp_url) -> Iterator[str]:
    name = f"test.monitor.{uuid.uuid4().hex[:10]}"
    yield name
    with connect(amqp_url) as broker:
        broker.delete_queue(name)


@pytest.fixture
def start_monitor(amqp_url, monitor_queue, tmp_path) -> Iterator:
    started: list[MonitorProcess] = []

    def start(*extra: str) -> MonitorProcess:
        process = MonitorProcess(amqp_url, tmp_path / "history.sqlite3", monitor_queue, *extra)
        started.append(process)
        return process

    yield start
    for process in started:
        process.stop()


@pytest.fixture(scope="module")
def browser():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is required at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        chromium = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        yield chromium
        chromium.close()


@pytest.fixture
def client(amqp_url, monitor_plugins, settings_factory):
    c = Client(connect(amqp_url), monitor_plugins, settings_factory("client"))
    yield c
    c.close()


def test_a_failed_job_appears_live_and_retry_makes_it_succeed(
    browser, start_monitor, client, monitor_plugins, settings_factory, route, tmp_path
):
    # Given a monitor with an admin and a read-only token, a worker, and an admin's browser
    monitor = start_monitor("--admin-token", ADMIN, "--read-token", READER)
    with running_worker(settings_factory(route), monitor_plugins, name=f"box-{route}"):
        admin = browser.new_context(http_credentials={"username": "ops", "password": ADMIN},
                                    viewport={"width": 1360, "height": 820})
        page = admin.new_page()
        page.goto(monitor.url + "/")
        page.wait_for_selector("#live.sse")
        assert page.inner_text("#role") == "admin"
        page.evaluate("window.__loadedOnce = true")

        # When a job fails for good (it fails until a moment a few seconds from now)
        fail_until = time.time() + 4
        job_id = client.submit("deadline", {"fail_until": fail_until}, route=route).id

        # Then it appears on the open page without a reload
        page.wait_for_selector(f"tr[data-id='{job_id}'] .state-dead", timeout=WAIT * 1000)
        assert page.evaluate("window.__loadedOnce") is True, "the page was reloaded"

        # When the admin opens it, they see the traceback and a Retry button
        page.locator(f"#jobs-table tr[data-id='{job_id}'] a").click()
        page.wait_for_selector("#traceback", timeout=WAIT * 1000)
        traceback = page.inner_text("#traceback")
        assert "RuntimeError: still failing until" in traceback
        assert "Traceback (most recent call last)" in traceback
        assert page.inner_text("#job-state") == "dead"

        # And once the job would succeed, presses Retry
        while time.time() < fail_until:
            page.wait_for_timeout(100)  # the job's own deadline, not synchronisation
        page.locator("#retry").click()

        # Then the same page shows it succeeding, live
        page.wait_for_selector("#job-state .state-succeeded", timeout=WAIT * 1000)
        assert "traceback" not in page.inner_text("main").lower()
        attempts = page.inner_text("#attempts")
        assert "failed" in attempts and "succeeded" in attempts
        assert "resubmitted" in page.inner_text("#timeline")
        with connect(client.broker.url) as broker:
            assert not [e for e in broker.dead_letters() if e.message_id == job_id]

        # A read-only user sees the job but no Retry button
        reader = browser.new_context(http_credentials={"username": "dev", "password": READER})
        read_page = reader.new_page()
        bad_id = client.submit("deadline", {"fail_until": time.time() + 600}, route=route).id
        monitor.wait_for_job(bad_id, "dead")
        read_page.goto(f"{monitor.url}/#/job/{bad_id}")
        read_page.wait_for_selector("#traceback", timeout=WAIT * 1000)
        assert read_page.inner_text("#role") == "read-only"
        assert read_page.query_selector("#retry") is None
        # ... and the API refuses the action, while an admin may take it
        with pytest.raises(urllib.error.HTTPError) as refused:
            monitor.api(f"/api/jobs/{bad_id}/retry", token=READER, method="POST")
        assert refused.value.code == 403
        with pytest.raises(urllib.error.HTTPError) as anonymous:
            urllib.request.urlopen(monitor.url + "/api/jobs", timeout=WAIT)
        assert anonymous.value.code == 401
        page.goto(f"{monitor.url}/#/job/{bad_id}")
        assert page.wait_for_selector("#retry", timeout=WAIT * 1000)

        # The dashboard with a few more jobs in it (this test's route only: the RabbitMQ is shared)
        for text in ("cat.jpg", "dog.png"):
            client.submit("echo", {"text": text}, route=route, wait=True).wait(WAIT)
        client.submit("boom", {"message": "corrupt JPEG header"}, route=route, wait=True).wait(
            WAIT, raise_on_failure=False)
        page.goto(f"{monitor.url}/#/jobs?route={route}")
        page.wait_for_selector("#jobs-table tr.job-row >> nth=4", timeout=WAIT * 1000)
        shot = tmp_path / "dashboard.png"
        page.screenshot(path=str(shot))
        assert shot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        admin.close()
        reader.close()
    with connect(client.broker.url) as broker:
        broker.take_dead(bad_id)


def test_history_survives_a_restart_and_events_sent_meanwhile_are_recorded(
    start_monitor, client, monitor_plugins, settings_factory, route, tmp_path
):
    # Given a monitor that recorded one job
    first = start_monitor()
    with running_worker(settings_factory(route), monitor_plugins, name=f"box-{route}"):
        before = client.submit("echo", {"text": "before"}, route=route, wait=True).wait(WAIT)
        first.wait_for_job(before.id, "succeeded")
        # When the monitor is down while another job runs
        first.stop()
        during = client.submit("boom", {}, route=route, wait=True).wait(
            WAIT, raise_on_failure=False)
    # Then, back up, it has both: the first from its history, the second from its queue
    second = start_monitor()
    assert second.wait_for_job(before.id, "succeeded")["job"] == "echo"
    missed = second.wait_for_job(during.id, "dead")
    assert [a["outcome"] for a in missed["attempts"]] == ["failed", "failed"]
    assert "ValueError: boom" in missed["traceback"]
    # And the CLI reads the same history, from the API and from the file
    runner = CliRunner()
    shown = runner.invoke(cli, ["status", during.id[:10], "--monitor-url", second.url,
                                "--token", "x", "--json"])
    assert shown.exit_code == 0, shown.output
    assert json.loads(shown.output)["state"] == "dead"
    second.stop()
    listed = runner.invoke(cli, ["jobs", "--state", "failed", "--route", route, "--db",
                                 str(tmp_path / "history.sqlite3"), "--json"])
    assert listed.exit_code == 0, listed.output
    assert [j["id"] for j in json.loads(listed.output)] == [during.id]
    with connect(client.broker.url) as broker:
        broker.take_dead(during.id)


def test_without_server_sent_events_the_page_polls_and_shows_busy_slots(
    browser, start_monitor, client, monitor_plugins, settings_factory, route
):
    # Given a browser without EventSource on the workers page
    monitor = start_monitor()
    name = f"box-{route}"
    with running_worker(settings_factory(route), monitor_plugins, name=name):
        context = browser.new_context()
        context.add_init_script("window.EventSource = undefined;")
        page = context.new_page()
        page.goto(f"{monitor.url}/#/workers")
        page.wait_for_selector("#live.poll")
        page.wait_for_selector(f"tr[data-worker='{name}'] .state-online", timeout=WAIT * 1000)
        page.evaluate("window.__loadedOnce = true")
        # When the worker starts a job
        handle = client.submit("sleeper", {"seconds": 3}, route=route, wait=True)
        # Then the page, polling, shows the slot busy with it, then free again
        row = f"tr[data-worker='{name}']"
        page.wait_for_selector(f"{row} a[href='#/job/{handle.id}']", timeout=WAIT * 1000)
        assert "1/2" in page.inner_text(row)
        handle.wait(WAIT)
        page.wait_for_selector(f"{row} a[href='#/job/{handle.id}']", state="detached",
                               timeout=WAIT * 1000)
        assert page.evaluate("window.__loadedOnce") is True
        context.close()


def test_the_charts_show_rates_by_outcome_and_duration_percentiles_live(
    browser, start_monitor, client, monitor_plugins, settings_factory, route, tmp_path
):
    # Given a monitor, a worker, and the charts page open in a browser
    monitor = start_monitor()
    with running_worker(settings_factory(route), monitor_plugins, name=f"box-{route}"):
        page = browser.new_page(viewport={"width": 1100, "height": 900})
        page.goto(monitor.url + "/#/charts")
        page.wait_for_selector("#rate-chart")
        page.evaluate("window.__loadedOnce = true")

        def total(outcome: str) -> int:
            text = page.inner_text(f".legend span[data-series='{outcome}']")
            return int(text.rsplit("(", 1)[1].rstrip(")"))

        before = total("failed")
        # When jobs succeed and fail
        for n in range(3):
            client.submit("echo", {"text": f"c{n}"}, route=route, wait=True).wait(WAIT)
        bad = client.submit("boom", {}, route=route, wait=True).wait(WAIT, raise_on_failure=False)
        monitor.wait_for_job(bad.id, "dead")
        # Then, without a reload, the rate chart counts them by outcome ...
        page.wait_for_function(
            "n => Number(document.querySelector(\".legend span[data-series='failed']\")"
            ".textContent.split('(').pop().replace(')', '')) >= n", arg=before + 2,
            timeout=WAIT * 1000)
        assert page.evaluate("window.__loadedOnce") is True, "the page was reloaded"
        assert total("succeeded") >= 3
        heights = page.evaluate(
            "[...document.querySelectorAll('#rate-chart polyline')].map(p => [p.dataset.series, "
            "Math.min(...p.getAttribute('points').split(' ').map(xy => Number(xy.split(',')[1])))])")
        lowest = dict(heights)
        assert set(lowest) == {"succeeded", "failed", "dead"}
        assert lowest["succeeded"] < 150 and lowest["failed"] < 150  # a line rose off the axis
        # ... and the duration table has the job types' median and 95th percentile
        page.wait_for_selector("#durations tr[data-job='echo'] td.p95", timeout=WAIT * 1000)
        row = page.inner_text("#durations tr[data-job='echo']")
        assert "s" in page.inner_text("#durations tr[data-job='echo'] td.p50")
        page.screenshot(path=str(tmp_path / "charts.png"), full_page=True)
        assert "boom" in page.inner_text("#durations") and row
    with connect(client.broker.url) as broker:
        broker.take_dead(bad.id)
