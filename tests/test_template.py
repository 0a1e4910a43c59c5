"""contrib/plugin-template renders into a package that installs and passes its own tests."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

from cookiecutter.main import cookiecutter

TEMPLATE = Path(__file__).parent.parent / "contrib" / "plugin-template"


def run(argv: list[str], cwd: Path, env: dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=env, capture_output=True, text=True, timeout=600,
                          check=False)


def test_rendered_plugin_installs_and_its_tests_pass_through_a_worker(tmp_path):
    # Given the template rendered for a plugin named "wordfreq"
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(tmp_path),
                                extra_context={"plugin_name": "wordfreq"}))
    assert {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} == {
        "README.md", "pyproject.toml", "runner_wordfreq/__init__.py", "runner_wordfreq/jobs.py",
        "tests/conftest.py", "tests/test_runner_wordfreq.py",
    }
    # And a fresh venv (seeing runner through the system site-packages) with it installed
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST")}
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = str(venv / "bin" / "python")
    installed = run([python, "-m", "pip", "install", "-q", "--no-deps", "-e", str(project)], tmp_path, env)
    assert installed.returncode == 0, installed.stderr
    # Then runner finds the plugin through its entry point
    listed = run([python, "-m", "runner.cli", "plugins"], tmp_path, env)
    assert "wordfreq 0.1.0 (runner-wordfreq): wordfreq" in listed.stdout, listed.stdout + listed.stderr
    # And the generated tests, which run the job through a real worker, pass
    tested = run([python, "-m", "pytest", "-q", "-p", "no:cacheprovider"], project, env)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert "3 passed" in tested.stdout
