"""The monitor's job page shows a finished job's outputs from the result store (images as
previews, in a real headless Chromium), and a group page shows its members and its callback."""

from __future__ import annotations

import urllib.error
import urllib.request
import uuid
from dataclasses import replace
from pathlib import Path

import pytest
from test_monitor_browser import ADMIN, CHROMIUM, CHROMIUM_ARGS, WAIT, MonitorProcess

from runner.broker import connect
from runner.client import Client
from runner.plugins import make_plugins
from runner.results.groups import JobSpec
from runner.testing import running_worker

ROCKET = Path(__file__).resolve().parents[1] / "fixtures" / "images" / "rocket.jpg"


@pytest.fixture
def monitored(amqp_url, tmp_path, monkeypatch, settings_factory, route):
    """A monitor reading this test's result store, a worker (media plugin too) and a client."""
    results = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    monkeypatch.setenv("RUNNER_RESULTS_URL", results)  # the monitor subprocess reads it
    queue = f"test.monitor.{uuid.uuid4().hex[:10]}"
    monitor = MonitorProcess(amqp_url, tmp_path / "history.sqlite3", queue, "--admin-token", ADMIN)
    plugins = make_plugins(modules=["jobs_plugin"])
    settings = replace(settings_factory(route), results={"url": results})
    try:
        with running_worker(settings, plugins), Client(connect(amqp_url), plugins, settings) as c:
            yield monitor, c
    finally:
        monitor.stop()
        with connect(amqp_url) as broker:
            broker.delete_queue(queue)


@pytest.fixture
def page():
    if not Path(CHROMIUM).exists():
        pytest.fail(f"Chromium is required at {CHROMIUM} (apt-get install chromium)")
    from playwright.sync_api import sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        context = browser.new_context(http_credentials={"username": "ops", "password": ADMIN})
        yield context.new_page()
        browser.close()


def test_job_and_group_pages_show_stored_outputs_members_and_callback(monitored, page, route):
    monitor, client = monitored
    # Given a group of a thumbnails job and a failing job, then a contact sheet of them
    handle = client.group([
        JobSpec("thumbnails", {"sizes": "64x64"}, {"image": ROCKET}, {"route": route}),
        JobSpec("boom", {"message": "no picture"}, {}, {"route": route}),
    ]).then("contact-sheet", {"tile": "100x100"}, route=route)
    sheet = handle.wait(timeout=WAIT * 4)
    monitor.wait_for_job(handle.callback.id, "succeeded")
    # When the callback's page is opened
    page.goto(f"{monitor.url}/#/job/{handle.callback.id}")
    preview = page.wait_for_selector("#stored-outputs img.preview", timeout=WAIT * 1000)
    # Then the contact sheet is shown as a picture the browser decoded, linked to its group
    page.wait_for_function("img => img.complete && img.naturalWidth > 0", arg=preview,
                           timeout=WAIT * 1000)
    assert page.evaluate("img => [img.naturalWidth, img.naturalHeight]", preview) == [
        sheet.value["width"], sheet.value["height"]]
    assert "contact-sheet.jpg" in page.inner_text("#stored-outputs")
    page.locator("#callback-of a").click()
    # And the group page lists both members, one failed, and the callback
    page.wait_for_selector("#group-members tbody tr >> nth=1", timeout=WAIT * 1000)
    assert "1 succeeded, 1 failed, 0 pending of 2" in page.inner_text("#group-counts")
    rows = page.inner_text("#group-members tbody")
    assert "thumbnails" in rows and "boom: no picture" in rows
    assert handle.callback.id in page.inner_text("#group-callback")
    assert "succeeded" in page.inner_text("#group-callback")
    # A member's page previews its own output
    page.locator(f"#group-members tr[data-id='{handle.members[0].id}'] a").click()
    thumb = page.wait_for_selector("#stored-outputs img.preview", timeout=WAIT * 1000)
    page.wait_for_function("img => img.complete && img.naturalWidth == 64", arg=thumb,
                           timeout=WAIT * 1000)
    # Outputs are served as images only when their bytes are images; never to anonymous users
    url = f"{monitor.url}/api/results/{handle.callback.id}/outputs/0"
    request = urllib.request.Request(url, headers={"Authorization": f"Bearer {ADMIN}"})
    with urllib.request.urlopen(request, timeout=WAIT) as response:
        assert response.headers["Content-Type"] == "image/jpeg"
        assert response.headers["X-Content-Type-Options"] == "nosniff"
        assert response.read()[:3] == b"\xff\xd8\xff"
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, timeout=WAIT)
    assert anonymous.value.code == 401
    with connect(client.broker.url) as broker:
        broker.take_dead(handle.members[1].id)
