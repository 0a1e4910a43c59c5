"""Regenerate docs/dashboard.png: a monitor, two workers and some resize jobs on a throwaway
embedded broker, photographed in headless Chromium.

    python plugins/monitor/screenshot.py [docs/dashboard.png]

Needs the ``test`` extra (Playwright) and Debian's chromium at /usr/bin/chromium.
"""

from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

from runner.broker import connect
from runner.client import Client
from runner.plugins import make_plugins
from runner.testing import running_worker, settings_for
from runner_monitor.emitter import Emitter
from runner_monitor.service import Monitor

ROOT = Path(__file__).resolve().parents[2]
IMAGES = ROOT / "fixtures" / "images"
ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking",
        "--disable-component-update", "--disable-sync", "--no-first-run"]


def main(out: Path) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        url = f"sqlite:///{tmp}/broker.sqlite3"
        urls: list[str] = []
        monitor = Monitor(broker_url=url, db=Path(tmp) / "history.sqlite3", listen="127.0.0.1:0",
                          on_ready=urls.append, depth_every=0.5)
        threading.Thread(target=monitor.serve, daemon=True).start()
        monitor.collector.ready.wait(10)
        plugins = make_plugins(load=["media"], extra=[Emitter(heartbeat=1.0)])
        default = settings_for(url, "default", queue="default", workdir=f"{tmp}/work",
                               concurrency=4)
        heavy = settings_for(url, "heavy", queue="heavy", workdir=f"{tmp}/work", concurrency=2)
        with running_worker(default, plugins, name="web-1.default"), \
                running_worker(heavy, plugins, name="render-1.heavy"), \
                Client(connect(url), plugins, default) as client:
            jobs = [
                ("default", "coffee.jpg", "200x200"), ("default", "rocket.jpg", "640x480"),
                ("default", "chelsea.png", "128x128"), ("heavy", "edge/cmyk.jpg", "1024x768"),
                ("default", "hostile/truncated.jpg", "200x200"),
                ("default", "edge/orientation_6.jpg", "300x300"),
                ("heavy", "hostile/pixel_flood.png", "800x800"),
                ("default", "edge/alpha.webp", "64x64"), ("heavy", "rocket.jpg", "1920x1080"),
            ]
            handles = [
                client.submit("resize", {"size": size}, {"image": IMAGES / name}, route=route,
                              wait=True)
                for route, name, size in jobs
            ]
            for handle in handles:
                handle.wait(60, raise_on_failure=False)
            for name in ("coffee.jpg", "rocket.jpg", "chelsea.png"):  # waiting in the queue
                client.submit("resize", {"size": "100x100"}, {"image": IMAGES / name},
                              route="heavy", delay=3600)
            time.sleep(2.0)  # a heartbeat and a depth poll
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=ARGS)
                page = browser.new_page(viewport={"width": 1360, "height": 760})
                page.goto(urls[0])
                page.wait_for_selector("#jobs-table tr.job-row >> nth=8")
                page.wait_for_selector("#live.sse")
                page.screenshot(path=str(out))
                browser.close()
        monitor.shutdown()
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "dashboard.png")
