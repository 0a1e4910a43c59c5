"""Packaging: a wheel builds without deprecation warnings and carries every file runner needs."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

ROOT = Path(__file__).parent.parent


def test_wheel_builds_quietly_with_the_dashboard_files(tmp_path):
    # Given a copy of the source (an in-tree build would leave build/ in the checkout, and
    # a stale build/ would put modules that no longer exist into the wheel)
    source = tmp_path / "src"
    def skipped(directory: str, names: list[str]) -> set[str]:
        top = {".git", "build", "tests", "docs", "bench"} if Path(directory) == ROOT else set()
        return {n for n in names if n in top or n == "__pycache__" or n.endswith(".egg-info")}

    shutil.copytree(ROOT, source, ignore=skipped)
    # When the project is built the way pip installs it
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--disable-pip-version-check",
         "-v", "-w", str(tmp_path / "wheel"), str(source)],
        capture_output=True, text=True, timeout=600, stdin=subprocess.DEVNULL,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    output = proc.stdout + proc.stderr
    # Then setuptools has nothing to warn about: the license is an SPDX string, and every
    # directory shipped as package data belongs to a declared package
    assert "DeprecationWarning" not in output
    assert "is absent from the `packages` configuration" not in output
    # And the dashboard's static files and the ImageMagick policy are in the wheel
    (wheel,) = (tmp_path / "wheel").glob("runner-*.whl")
    archive = zipfile.ZipFile(wheel)
    names = set(archive.namelist())
    for name in ("runner_monitor/static/index.html", "runner_monitor/static/app.js",
                 "runner_media/imagemagick-policy/policy.xml", "runner/sandbox/host.py"):
        assert name in names
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    assert "License-Expression: MIT" in archive.read(metadata).decode()
