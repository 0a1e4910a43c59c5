"""The docs cover the code: every hook, setting and command is documented, and links resolve.

No broker needed: these tests read docs/*.md and README.md and introspect runner's modules.
"""

from __future__ import annotations

import dataclasses
import inspect
import re
from collections.abc import Iterator
from pathlib import Path

import click
import pytest

from runner import hookspecs
from runner.cli import cli
from runner.cli_jobs import COMMON_OPTIONS, JobsGroup
from runner.config import _TABLES, Settings

ROOT = Path(__file__).parent.parent
DOCS = ROOT / "docs"
LINKED = [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]
HEADING = re.compile(r"^(#{1,6})\s+(.*?)\s*#*\s*$")
LINK = re.compile(r"(?<!!)\[[^\]]*\]\(([^)\s]+)(?:\s+\"[^\"]*\")?\)")


def read(name: str) -> str:
    return (DOCS / name).read_text(encoding="utf-8")


def without_code_blocks(text: str) -> list[str]:
    """Lines outside fenced code blocks (a ``# comment`` in a block is not a heading)."""
    lines, fenced = [], False
    for line in text.splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        if not fenced:
            lines.append(line)
    return lines


def headings(text: str) -> list[tuple[int, str]]:
    """(level, text) of every heading, backticks removed."""
    out = []
    for line in without_code_blocks(text):
        match = HEADING.match(line)
        if match:
            out.append((len(match.group(1)), match.group(2).replace("`", "").strip()))
    return out


def section(text: str, title: str) -> str:
    """The text under the heading ``title`` up to the next heading of the same or higher level."""
    lines = text.splitlines()
    fenced, start, level = False, None, 0
    for i, line in enumerate(lines):
        if line.lstrip().startswith("```"):
            fenced = not fenced
            continue
        match = None if fenced else HEADING.match(line)
        if not match:
            continue
        this_level, this_title = len(match.group(1)), match.group(2).replace("`", "").strip()
        if start is None and this_title == title:
            start, level = i + 1, this_level
        elif start is not None and this_level <= level:
            return "\n".join(lines[start:i])
    if start is None:
        raise AssertionError(f"no heading {title!r}")
    return "\n".join(lines[start:])


def slug(title: str) -> str:
    """GitHub's anchor for a heading."""
    text = title.strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def anchors(path: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for _, title in headings(path.read_text(encoding="utf-8")):
        base = slug(title)
        n = seen.get(base, 0)
        out.add(base if n == 0 else f"{base}-{n}")
        seen[base] = n + 1
    return out


# --- hooks ------------------------------------------------------------------------------------
def hook_specs() -> dict[str, object]:
    return {
        name: fn
        for name, fn in vars(hookspecs).items()
        if callable(fn) and hasattr(fn, "runner_spec")
    }


def signature_line(name: str, fn: object) -> str:
    """``def name(arg: Type, ...) -> Ret`` as written in runner/hookspecs.py."""
    sig = inspect.signature(fn)  # type: ignore[arg-type]

    def text(annotation: object) -> str:
        return annotation if isinstance(annotation, str) else inspect.formatannotation(annotation)

    params = ", ".join(f"{p.name}: {text(p.annotation)}" for p in sig.parameters.values())
    return f"def {name}({params}) -> {text(sig.return_annotation)}"


HOOKS = sorted(hook_specs())


def test_hookspecs_are_found():
    assert "register_jobs" in HOOKS and "route_job" in HOOKS


@pytest.mark.parametrize("name", HOOKS)
def test_every_hook_is_documented_with_its_exact_signature(name):
    plugins_md = read("plugins.md")
    assert name in [t for _, t in headings(plugins_md)], f"docs/plugins.md: no '### {name}' heading"
    body = section(plugins_md, name)
    expected = signature_line(name, hook_specs()[name])
    code_lines = [line.strip() for line in body.splitlines()]
    assert expected in code_lines, (
        f"docs/plugins.md, section {name}: the signature line must read exactly\n    {expected}"
    )


def test_documented_hooks_exist():
    hooks_section = section(read("plugins.md"), "Hooks")
    documented = [t for level, t in headings(hooks_section) if level == 3]
    assert documented, "docs/plugins.md: no hooks under '## Hooks'"
    unknown = sorted(set(documented) - set(HOOKS))
    assert not unknown, f"docs/plugins.md documents hooks that runner.hookspecs lacks: {unknown}"


# --- settings ---------------------------------------------------------------------------------
SETTINGS = [f.name for f in dataclasses.fields(Settings) if f.name != "sources"]


@pytest.mark.parametrize("name", SETTINGS)
def test_every_setting_has_a_section(name):
    config_md = read("configuration.md")
    assert (3, name) in headings(config_md), f"docs/configuration.md: no '### {name}' heading"
    body = section(config_md, name)
    if name not in _TABLES:
        env = f"RUNNER_{name.upper()}"
        assert env in body, f"docs/configuration.md, section {name}: environment variable {env} not named"


def test_documented_settings_exist():
    settings_section = section(read("configuration.md"), "Settings")
    documented = [t for level, t in headings(settings_section) if level == 3]
    unknown = sorted(set(documented) - set(SETTINGS))
    assert not unknown, f"docs/configuration.md documents settings that do not exist: {unknown}"


# --- CLI --------------------------------------------------------------------------------------
def commands(group: click.Group, prefix: str = "runner") -> Iterator[tuple[str, click.Command]]:
    """Every command and subcommand, except the job commands generated under submit/run."""
    for name, command in sorted(group.commands.items()):
        path = f"{prefix} {name}"
        yield path, command
        if isinstance(command, click.Group) and not isinstance(command, JobsGroup):
            yield from commands(command, path)


COMMANDS = dict(commands(cli))


def test_the_command_walk_finds_the_commands():
    assert {"runner submit", "runner worker", "runner dead list"} <= set(COMMANDS)


def long_flags(command: click.Command) -> list[str]:
    flags = []
    for param in command.params:
        if isinstance(param, click.Option) and param.name != "help":
            longs = [o for o in param.opts if o.startswith("--")]
            flags.append(max(longs or param.opts, key=len))
    return flags


@pytest.mark.parametrize("path", sorted(COMMANDS))
def test_every_command_has_a_heading_and_its_options(path):
    cli_md = read("cli.md")
    assert path in [t for _, t in headings(cli_md)], f"docs/cli.md: no heading '{path}'"
    body = section(cli_md, path)
    command = COMMANDS[path]
    flags = long_flags(command)
    if isinstance(command, JobsGroup):
        flags += [max(o.opts, key=len) for o in COMMON_OPTIONS]
    missing = [f for f in flags if f not in body]
    assert not missing, f"docs/cli.md, section {path}: options not documented: {missing}"


def test_global_options_are_documented():
    body = section(read("cli.md"), "runner")
    missing = [f for f in long_flags(cli) if f not in body]
    assert not missing, f"docs/cli.md, section runner: options not documented: {missing}"


# --- links ------------------------------------------------------------------------------------
def relative_links(path: Path) -> list[str]:
    text = "\n".join(without_code_blocks(path.read_text(encoding="utf-8")))
    text = re.sub(r"`[^`]*`", "", text)  # links inside inline code are not links
    return [
        target for target in LINK.findall(text)
        if not re.match(r"^[a-z][a-z0-9+.-]*:", target, re.I)  # http:, https:, mailto:
    ]


LINKS = [(p, target) for p in LINKED for target in relative_links(p)]


def test_docs_link_to_each_other():
    assert any(p.name == "README.md" for p, _ in LINKS)


@pytest.mark.parametrize(
    "source, target", LINKS, ids=[f"{p.relative_to(ROOT)}->{t}" for p, t in LINKS]
)
def test_relative_links_point_at_existing_files(source, target):
    file_part, _, fragment = target.partition("#")
    resolved = (source.parent / file_part).resolve() if file_part else source
    assert resolved.exists(), f"{source.relative_to(ROOT)}: link {target!r} points at nothing"
    if fragment and resolved.suffix == ".md":
        assert fragment in anchors(resolved), (
            f"{source.relative_to(ROOT)}: link {target!r}: no heading with anchor #{fragment}"
        )


def test_the_readme_set_up_commands_work_where_pip_is_externally_managed():
    """README's two commands, as pasted on a fresh Debian or Ubuntu: no system-wide pip install
    (PEP 668 refuses it); a virtual environment outside the checkout, created in the same line,
    whose pip installs runner and whose runner and python are then used; the second is the
    test command .ci/run runs."""
    readme = (ROOT / "README.md").read_text()
    setup = readme.split("## Set up", 1)[1].split("\n## ", 1)[0]
    commands = re.findall(r"```\n(.+?)\n```", setup)
    assert len(commands) == 2, commands
    install, tests = commands
    venv = re.match(r"python3 -m venv (\S+) && ", install)
    assert venv, install
    where = venv.group(1)
    assert not where.startswith((".", "/work")) and "~" in where  # outside the checkout
    assert f"{where}/bin/pip install -e ." in install and f"{where}/bin/runner run resize" in install
    assert "fixtures/images/rocket.jpg" in install and (ROOT / "fixtures/images/rocket.jpg").exists()
    assert re.search(r"(^|&& )pip install", install) is None
    assert tests == f"bash .ci/setup && {where}/bin/python -m pytest -q"
    assert f'venv="$HOME/{where.removeprefix("~/")}"' in (ROOT / ".ci" / "setup").read_text()
