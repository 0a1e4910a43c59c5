"""Plugin packages as a developer makes them: from contrib/plugin-template, and by following
docs/plugins/tutorial.md. Each is installed into a fresh venv and its own tests run there,
through a real worker on the embedded broker.
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
from cookiecutter.main import cookiecutter

ROOT = Path(__file__).parent.parent
TEMPLATE = ROOT / "contrib" / "plugin-template"
TUTORIAL = ROOT / "docs" / "plugins" / "tutorial.md"
# The package's own environment: nothing of this test run (its PYTHONPATH, pytest's variables).
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONPATH" and not k.startswith("PYTEST")}


def run(argv: list[str], cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(argv, cwd=cwd, env=ENV, capture_output=True, text=True, timeout=600,
                          check=False)


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A fresh venv that sees runner (and pytest) through the system site-packages."""
    # Made by venv itself (0755), not by mktemp (0700): a root worker's jobs run as slot uids,
    # and a function job's interpreter must be readable by them.
    path = tmp_path_factory.mktemp("venvs") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(path)], check=True)
    return path / "bin" / "python"


def install_and_test(python: Path, project: Path, listed_line: str, passed: str) -> None:
    installed = run([str(python), "-m", "pip", "install", "-q", "--no-deps", "-e", str(project)], project)
    assert installed.returncode == 0, installed.stderr
    # runner finds the plugin through its entry point
    listed = run([str(python), "-m", "runner.cli", "plugins"], project)
    assert listed_line in listed.stdout, listed.stdout + listed.stderr
    # and the package's own tests, which run its job through a real worker, pass
    tested = run([str(python), "-m", "pytest", "-q", "-p", "no:cacheprovider"], project)
    assert tested.returncode == 0, tested.stdout + tested.stderr
    assert passed in tested.stdout, tested.stdout


def test_the_template_renders_a_package_whose_tests_pass(venv, tmp_path):
    project = Path(cookiecutter(str(TEMPLATE), no_input=True, output_dir=str(tmp_path),
                                extra_context={"plugin_name": "wordfreq"}))
    assert {p.relative_to(project).as_posix() for p in project.rglob("*") if p.is_file()} == {
        "README.md", "pyproject.toml", "runner_wordfreq/__init__.py", "runner_wordfreq/jobs.py",
        "tests/conftest.py", "tests/test_runner_wordfreq.py",
    }
    install_and_test(venv, project, "wordfreq 0.1.0 (runner-wordfreq): wordfreq", "3 passed")


def test_the_tutorial_builds_a_package_whose_tests_pass(venv, tmp_path):
    # Every code block of the tutorial that starts with "# runner-checksum/<path>" is that file
    blocks = re.findall(r"```\w+\n# (runner-checksum/\S+)\n(.*?)```", TUTORIAL.read_text(), re.DOTALL)
    for name, body in blocks:
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body)
    assert sorted(name for name, _ in blocks) == [
        "runner-checksum/pyproject.toml", "runner-checksum/runner_checksum/__init__.py",
        "runner-checksum/runner_checksum/jobs.py", "runner-checksum/tests/conftest.py",
        "runner-checksum/tests/test_checksum.py",
    ]
    install_and_test(venv, tmp_path / "runner-checksum",
                     "checksum 0.1.0 (runner-checksum): checksum", "3 passed")
