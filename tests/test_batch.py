"""Batches from the CLI: one job per file, as a group; failures listed; exit code tells."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

from PIL import Image

IMAGES = Path(__file__).parent.parent / "fixtures" / "images"


def run_cli(args, amqp_url, cwd):
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=180)


def test_a_batch_resizes_every_file_and_lists_the_failures(amqp_url, worker_process, route, tmp_path, cleanup_queues):
    # Given a worker, three real photos and one broken file
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    photos = tmp_path / "photos"
    photos.mkdir()
    for name in ("rocket.jpg", "coffee.jpg", "chelsea.png"):
        shutil.copy(IMAGES / name, photos / name)
    shutil.copy(IMAGES / "hostile" / "truncated.jpg", photos / "broken.jpg")
    inputs = sorted(str(p) for p in photos.iterdir())
    # When they are resized in one command
    proc = run_cli(["submit", "resize", "--size", "100x100", *inputs, "--route", route, "--wait", "--json"],
                   amqp_url, tmp_path)
    # Then each good one has its output beside it, the broken one is listed, and the exit code is 1
    assert proc.returncode == 1, proc.stderr
    report = json.loads(proc.stdout)
    by_input = {Path(r["input"]).name: r for r in report["jobs"]}
    assert set(by_input) == {"rocket.jpg", "coffee.jpg", "chelsea.png", "broken.jpg"}
    assert by_input["broken.jpg"]["status"] == "failed" and "truncated" in by_input["broken.jpg"]["error"]
    for name in ("rocket.jpg", "coffee.jpg", "chelsea.png"):
        [out] = by_input[name]["outputs"]
        with Image.open(out) as img:
            assert max(img.size) == 100
    assert len({r["id"] for r in report["jobs"]}) == 4


def test_a_batch_summary_line_for_people(amqp_url, worker_process, route, tmp_path, cleanup_queues):
    cleanup_queues.append(f"test.{route}")
    worker_process(f"test.{route}", [f"{route}.#"])
    inputs = [str(IMAGES / n) for n in ("rocket.jpg", "coffee.jpg")]
    proc = run_cli(["submit", "resize", "--size", "32x32", *inputs, "--route", route, "--wait",
                    "--output-dir", str(tmp_path / "out")], amqp_url, tmp_path)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("resize: 2 succeeded, 0 failed of 2 in ")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["coffee_32x32.jpg", "rocket_32x32.jpg"]
