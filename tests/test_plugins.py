"""The plugin system: entry points, registration checks, broken plugins reported, not fatal."""

from __future__ import annotations

import sys
import types

import click
import pytest

from runner import JobType, hookimpl
from runner.errors import PluginError
from runner.plugins import make_plugins


def plugin_module(name: str, **attrs) -> types.ModuleType:
    mod = types.ModuleType(name)
    mod.__dict__.update(attrs)
    return mod


def registering(*jobs: JobType):
    @hookimpl
    def register_jobs(register):
        for job in jobs:
            register(job)

    return register_jobs


def test_first_party_resize_loads_through_its_entry_point():
    plugins = make_plugins()
    info = {p.name: p for p in plugins.info()}
    assert info["media"].package == "runner" and "resize" in info["media"].jobs
    assert plugins.errors == []


def test_load_plugins_empty_loads_none():
    assert len(make_plugins(load=[]).jobs) == 0


def test_duplicate_job_names_are_refused_naming_both_plugins():
    a = plugin_module("plug_a", register_jobs=registering(JobType(name="dup", argv=lambda p, c: ["true"])))
    b = plugin_module("plug_b", register_jobs=registering(JobType(name="dup", argv=lambda p, c: ["true"])))
    with pytest.raises(PluginError, match="job 'dup' registered twice: by plugin plug_a and by plugin plug_b"):
        make_plugins(load=[], extra=[a, b])


@pytest.mark.parametrize(
    "job, message",
    [
        (JobType(name="Bad Name", argv=lambda p, c: ["true"]), "must match"),
        (JobType(name="both", argv=lambda p, c: ["true"], function="m:f"), "exactly one of argv or function"),
        (JobType(name="clash", argv=lambda p, c: ["true"], params=[click.Option(["--route"])]),
         "option --route is reserved"),
        (JobType(name="noparam", argv=lambda p, c: ["true"], inputs=("image",)), "are not parameters"),
    ],
)
def test_invalid_job_declarations_are_refused(job, message):
    mod = plugin_module("plug_bad", register_jobs=registering(job))
    with pytest.raises(PluginError, match=message):
        make_plugins(load=[], extra=[mod])


def test_misspelled_hook_fails_loudly():
    @hookimpl
    def register_jobz(register):  # typo: no such hook
        pass

    with pytest.raises(PluginError, match="register_jobz"):
        make_plugins(load=[], extra=[plugin_module("plug_typo", register_jobz=register_jobz)])


def test_a_broken_plugin_is_one_line_and_the_others_keep_working(tmp_path, monkeypatch):
    (tmp_path / "broken_plugin.py").write_text("raise ImportError('needs libfoo')\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    plugins = make_plugins(modules=["broken_plugin"])
    assert plugins.errors == ["plugin module broken_plugin failed to load: needs libfoo"]
    assert "resize" in plugins.jobs
    sys.modules.pop("broken_plugin", None)


def test_observer_errors_never_break_the_job_path(caplog):
    @hookimpl
    def job_dead(message, reason, result):
        raise RuntimeError("observer bug")

    plugins = make_plugins(load=[], extra=[plugin_module("plug_obs", job_dead=job_dead)])
    # When an observer raises, the call returns normally and the error is logged
    with caplog.at_level("ERROR"):
        assert plugins.job_dead(None, None, "why", None, None) is None
    assert any("observer bug" in r.getMessage() or (r.exc_info and "observer bug" in str(r.exc_info[1]))
               for r in caplog.records)


def test_plugin_commands_join_the_cli(tmp_path):
    import os
    import subprocess
    import sys

    (tmp_path / "hello_plugin.py").write_text(
        "import click\nfrom runner import hookimpl\n\n"
        "@hookimpl\ndef register_commands(cli):\n"
        "    @cli.command()\n    def hello():\n        click.echo('hello from a plugin')\n"
    )
    env = {**os.environ, "RUNNER_PLUGINS": "hello_plugin", "PYTHONPATH": str(tmp_path)}
    out = subprocess.run([sys.executable, "-m", "runner.cli", "hello"], env=env, capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout == "hello from a plugin\n"
    listed = subprocess.run([sys.executable, "-m", "runner.cli", "--help"], env=env, capture_output=True, text=True)
    assert "hello" in listed.stdout


def test_one_failing_observer_does_not_hide_the_event_from_others():
    seen = []

    class Broken:
        @hookimpl
        def job_dead(self, reason):
            raise RuntimeError("observer bug")

    class Listening:
        @hookimpl
        def job_dead(self, reason):
            seen.append(reason)

    plugins = make_plugins(load=[], extra=[Listening(), Broken()])
    plugins.job_dead(None, None, "why", None, None)
    assert seen == ["why"]
