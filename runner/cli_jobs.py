"""``runner submit <job>`` and ``runner run <job>``: commands generated from job declarations.

Like flask's FlaskGroup, the job commands are built lazily from the installed plugins, so
``runner --help`` works even when a plugin is broken (it then shows one red line).
"""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path
from typing import Any

import click

from runner.config import parse_duration
from runner.errors import RunnerError
from runner.context import PROGRESS_MARKER
from runner.jobs import JobType
from runner.message import JobResult
from runner.untrusted import printable


class Duration(click.ParamType):
    """``90``, ``90s``, ``10m``, ``2h``."""

    name = "duration"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            return parse_duration(value, "")
        except RunnerError as exc:  # click names the option ("--delay"); the message need not
            self.fail(str(exc).lstrip(": "), param, ctx)


DURATION = Duration()


class When(click.ParamType):
    """An ISO 8601 time (``2026-12-01T08:00Z``); with ``relative`` also a duration from now."""

    def __init__(self, relative: bool) -> None:
        self.relative = relative
        self.name = "time|duration" if relative else "time"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        from runner.timing import parse_instant, parse_when

        import time

        try:
            when = (parse_when if self.relative else parse_instant)(value, "")
        except RunnerError as exc:
            self.fail(str(exc).lstrip(": "), param, ctx)
        if not self.relative and when < time.time() and param is not None and not (ctx and ctx.resilient_parsing):
            name = param.opts[0] if param.opts else param.name
            click.secho(f"warning: {name} {value} is in the past: the job may start at once",
                        fg="yellow", err=True)
        return value  # turned into a time by the client, at the moment of submitting

COMMON_OPTIONS = [
    click.Option(["--route", "opt_route"], help="Route to send the job on (default: configured)."),
    click.Option(["--wait", "opt_wait"], is_flag=True, help="Wait for the result and write outputs."),
    click.Option(["--wait-timeout", "opt_wait_timeout"], type=DURATION, help="Give up waiting after this long."),
    click.Option(["--timeout", "opt_timeout"], type=DURATION, help="Wall-clock limit of one attempt."),
    click.Option(["--retries", "opt_retries"], type=click.IntRange(0, 1000), help="Retries after the first attempt."),
    click.Option(["--delay", "opt_delay"], type=DURATION, default=0.0, help="Hold the job this long first."),
    click.Option(["--eta", "opt_eta"], type=When(relative=False), help="Earliest start, ISO 8601 (2026-12-01T08:00Z)."),
    click.Option(["--expires", "opt_expires"], type=When(relative=True), help="Drop the job if not started by then (10m or ISO 8601)."),
    click.Option(["--priority", "opt_priority"], type=click.IntRange(0, 9), default=0, help="0-9, higher first."),
    click.Option(["--output-dir", "opt_output_dir"], type=click.Path(file_okay=False), help="Where outputs go (default: beside the input)."),
    click.Option(["--overwrite", "opt_overwrite"], is_flag=True, help="Replace existing files with outputs (never an input)."),
    click.Option(["--webhook", "opt_webhook"], help="POST the final result (signed) to this URL."),
    click.Option(["--json", "opt_json"], is_flag=True, help="Print machine-readable JSON."),
    click.Option(["--quiet", "-q", "opt_quiet"], is_flag=True,
                 help="With --wait: do not print the job's standard output and error."),
    click.Option(["--then", "opt_then"], metavar="JOB",
                 help="Run JOB once every job submitted here has ended, with their results (a group)."),
    click.Option(["--then-param", "opt_then_param"], multiple=True, metavar="KEY=VALUE",
                 help="A parameter of the --then job (repeatable)."),
    click.Option(["--then-on-failure", "opt_then_on_failure"], type=click.Choice(["run", "skip"]),
                 default="run", help="With a failed member: run the --then job anyway, or skip it."),
]


class JobsGroup(click.Group):
    """A group whose subcommands are the installed job types."""

    def __init__(self, *args: Any, local: bool = False, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.local = local

    def _jobs(self, ctx: click.Context) -> dict[str, JobType]:
        # Shell completion resolves commands without running the root group's callback, so
        # the App may not exist yet.
        app = ctx.find_object(App) or ctx.find_root().ensure_object(App)
        try:
            return {j.name: j for j in app.plugins().jobs}
        except RunnerError as exc:
            app.load_error = str(exc)
            return {}

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(self._jobs(ctx))

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        job = self._jobs(ctx).get(name)
        if job is None and not ctx.resilient_parsing:
            errors = _load_errors(ctx)
            if errors:
                # The job may well exist in the plugin or config that failed: the real error,
                # not "No such command", is what the user can act on.
                raise RunnerError(f"no job type {name!r}: {errors[0]}")
        return job_command(job, self.local) if job else None

    def format_help(self, ctx: click.Context, formatter: click.HelpFormatter) -> None:
        super().format_help(ctx, formatter)
        for err in _load_errors(ctx):
            formatter.write(click.style(f"\nplugin error: {err}\n", fg="red"))


def _load_errors(ctx: click.Context) -> list[str]:
    """What went wrong loading the settings and plugins, one line each."""
    app = ctx.find_object(App)
    errors = [app.load_error] if app and app.load_error else []
    if app and app.loaded is not None:
        errors += app.loaded.errors
    return [" ".join(str(err).split()) for err in errors]


def _batch_argument(job: JobType) -> str | None:
    """The one input-file argument that may take several files (one job per file)."""
    args = [p for p in job.params if isinstance(p, click.Argument) and p.name in job.inputs]
    if len(args) == 1 and args[0].nargs == 1:
        return args[0].name
    return None


def job_command(job: JobType, local: bool) -> click.Command:
    batch = _batch_argument(job)
    params: list[click.Parameter] = []
    for p in job.params:
        if p.name == batch:
            # `runner submit resize --size 200x200 photos/*.jpg`: one job per file, as a group.
            p = click.Argument([p.name], type=p.type, nargs=-1, required=True)
        params.append(copy.copy(p))
    params += [copy.copy(o) for o in COMMON_OPTIONS]

    @click.pass_context
    def callback(ctx: click.Context, **kwargs: Any) -> None:
        app = ctx.find_object(App)
        assert app is not None
        options = {k[4:]: kwargs.pop(k) for k in list(kwargs) if k.startswith("opt_")}
        many = list(kwargs.pop(batch)) if batch else []
        files = {n: kwargs.pop(n) for n in job.inputs if kwargs.get(n) is not None}
        kwargs = {k: v for k, v in kwargs.items() if v is not None}
        if options.get("then") and local:
            raise click.UsageError("--then needs `runner submit` (workers run the group)")
        if len(many) > 1 or options.get("then"):
            sets = [{batch: f} for f in many] if batch else [files]
            code = app.submit_batch(job, kwargs, sets, options, local)
        else:
            if batch and many:
                files[batch] = many[0]
            code = app.submit_job(job, kwargs, files, options, local)
        ctx.exit(code)

    verb = "Run" if local else "Submit"
    return click.Command(
        job.name,
        params=params,
        callback=callback,
        help=f"{verb} a {job.name!r} job. {job.help}".strip(),
        short_help=(job.help.splitlines() or [""])[0],
    )


def print_result(
    result: JobResult, written: list[Path], as_json: bool, debug: bool = False,
    quiet: bool = True,
) -> None:
    """One line for a person (the job's traceback too with --debug), or JSON for a program.

    Unless ``quiet``, the job's own standard output and error (their tails, as the worker
    kept them) come first, on ours, as ``docker run`` shows a container's.
    """
    if as_json:
        record = result.to_json()
        record["outputs"] = [str(p) for p in written]
        click.echo(json.dumps(record, indent=2))
        return
    # Everything below but our own words came from the job (or the worker): no control
    # characters reach the terminal.
    if not quiet:
        shown = "\n".join(ln for ln in result.stdout.splitlines() if not ln.startswith(PROGRESS_MARKER))
        if shown.strip():
            click.echo(printable(shown.rstrip("\n")))
        if result.stderr.strip():
            click.echo(printable(result.stderr.rstrip("\n")), err=True)
    if result.ok:
        names = ", ".join(printable(p, False) for p in written) or "no output files"
        click.echo(
            f"{printable(result.job, False)} {printable(result.id, False)} succeeded in "
            f"{result.duration:.2f}s (attempt {result.attempts}) -> {names}"
        )
    else:
        click.secho(
            f"{printable(result.job, False)} {printable(result.id, False)} failed after "
            f"{result.attempts} attempt(s): {printable(result.error, False)}",
            fg="red", err=True,
        )
        detail = result.traceback or (result.stderr.strip() if quiet else "")
        if debug and detail:
            click.echo(printable(detail.rstrip()[-4000:]), err=True)


class App:
    """Lazily built state shared by the CLI commands (settings, plugins, broker)."""

    def __init__(self, debug: bool = False) -> None:
        self.debug = debug
        self.loaded: Any = None
        self.load_error: str | None = None
        self.settings_flags: dict[str, Any] = {}

    def settings(self, **flags: Any) -> Any:
        from runner.config import load

        return load({**self.settings_flags, **flags})

    def plugins(self) -> Any:
        if self.loaded is None:
            from runner.plugins import make_plugins

            s = self.settings()
            self.loaded = make_plugins(
                s.load_plugins, s.trace_plugins, modules=s.plugins, settings=s
            )
        return self.loaded

    def submit_job(
        self, job: JobType, params: dict[str, Any], files: dict[str, str],
        options: dict[str, Any], local: bool,
    ) -> int:
        from runner.local import run_local, submit_remote

        run = run_local if local else submit_remote
        return run(self, job, params, files, options)

    def submit_batch(
        self, job: JobType, params: dict[str, Any], files: list[dict[str, str]],
        options: dict[str, Any], local: bool,
    ) -> int:
        from runner.batch import run_batch

        return run_batch(self, job, params, files, options, local)


def stderr_is_tty() -> bool:
    return sys.stderr.isatty()


class ProgressLine:
    """A one-line progress bar on the terminal, redrawn in place as a job reports progress."""

    width = 30

    def __init__(self) -> None:
        self.drawn = False

    def show(self, progress: dict[str, Any]) -> None:
        percent = float(progress.get("percent", 0.0))
        filled = int(self.width * percent / 100)
        counts = f" {progress['done']}/{progress['total']}" if "total" in progress else ""
        text = f"[{'#' * filled}{'.' * (self.width - filled)}] {percent:5.1f}%{counts} "
        text += printable(progress.get("message", ""), False)[:60]  # the job's text
        click.echo(f"\r{text}\x1b[K", nl=False, err=True)
        self.drawn = True

    def clear(self) -> None:
        if self.drawn:
            click.echo("\r\x1b[K", nl=False, err=True)
            self.drawn = False
