"""Installed plugin packages: a broken one is one line naming its package, the others work.

The packages are real distributions (a ``.dist-info`` with an ``entry_points.txt``) in a
temporary directory put on the import path, as pip would leave them in site-packages.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

from runner.plugins import make_plugins

BROKEN_ERROR = "plugin broken (package runner-broken-demo) failed to load: needs libfoo"


def distribution(site: Path, dist: str, entry: str, module: str, source: str) -> None:
    info = site / f"{dist.replace('-', '_')}-1.0.dist-info"
    info.mkdir()
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {dist}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(f"[runner]\n{entry} = {module}\n")
    (site / f"{module}.py").write_text(source)


@pytest.fixture
def site(tmp_path, monkeypatch):
    """A site directory with a broken plugin package and a working one."""
    distribution(tmp_path, "runner-broken-demo", "broken", "broken_demo_plugin",
                 "raise ImportError('needs libfoo')\n")
    distribution(tmp_path, "runner-good-demo", "good", "good_demo_plugin",
                 "from runner import JobType, hookimpl\n\n"
                 "@hookimpl\n"
                 "def register_jobs(register):\n"
                 "    register(JobType(name='goodjob', argv=lambda p, ctx: ['echo', 'good']))\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    yield tmp_path
    for name in ("broken_demo_plugin", "good_demo_plugin"):
        sys.modules.pop(name, None)


def test_a_broken_package_is_one_error_naming_it_and_the_others_load(site):
    plugins = make_plugins()
    assert plugins.errors == [BROKEN_ERROR]
    info = {p.name: p for p in plugins.info()}
    assert (info["good"].package, info["good"].version, info["good"].jobs) == ("runner-good-demo", "1.0", ("goodjob",))
    assert "broken" not in info
    assert {"goodjob", "resize", "http"} <= {j.name for j in plugins.jobs}


def test_load_plugins_names_which_packages_load(site):
    plugins = make_plugins(load=["good"])
    assert plugins.errors == [] and [j.name for j in plugins.jobs] == ["goodjob"]
    assert make_plugins(load=["good", "nosuch"]).errors == ["plugin nosuch is not installed"]


def cli(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess:
    full_env = {**os.environ, "PYTHONPATH": str(site), **env}
    return subprocess.run([sys.executable, "-m", "runner.cli", *args], env=full_env, cwd=site,
                          capture_output=True, text=True, timeout=120, check=False)


def test_the_cli_shows_one_red_line_and_keeps_working(site):
    listed = cli(site, "plugins")
    assert listed.returncode == 0
    assert "good 1.0 (runner-good-demo): goodjob" in listed.stdout
    assert "media 0.1.0 (runner): contact-sheet, convert, resize, thumbnails" in listed.stdout
    # Every line on stderr is that one error (the core logs it and prints it in red)
    lines = listed.stderr.strip().splitlines()
    assert f"plugin error: {BROKEN_ERROR}" in lines and all(BROKEN_ERROR in line for line in lines)
    helped = cli(site, "submit", "--help")
    assert helped.returncode == 0 and "goodjob" in helped.stdout and BROKEN_ERROR in helped.stdout


def test_trace_plugins_logs_hook_calls(site, tmp_path):
    # route_job is called when a job is submitted without a route; with tracing on it is logged
    # (the embedded broker then refuses the job: no worker queue is bound to its route)
    submitted = cli(site, "--debug", "submit", "goodjob", RUNNER_LOAD_PLUGINS="good",
                    RUNNER_TRACE_PLUGINS="1", RUNNER_BROKER_URL=f"sqlite:///{tmp_path / 'b.db'}")
    assert re.search(r"hook:\s+route_job", submitted.stderr), submitted.stderr
    quiet = cli(site, "--debug", "submit", "goodjob", RUNNER_LOAD_PLUGINS="good",
                RUNNER_BROKER_URL=f"sqlite:///{tmp_path / 'b.db'}")
    assert "hook:" not in quiet.stderr
