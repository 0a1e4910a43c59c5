"""The ``runner`` command line. Commands are thin: they parse, call the library, print.

Exit codes: 0 success; 1 the job failed; 2 usage error (bad option or parameter);
3 runner error (configuration, broker, plugin); 4 gave up waiting for a result.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import threading
import traceback
from dataclasses import asdict
from typing import Any

import click

from runner.cli_jobs import App, JobsGroup
from runner.config import redact
from runner.errors import BrokerError, RunnerError
from runner.systemd import Notifier

EXIT_ERROR = 3
pass_app = click.make_pass_decorator(App)


class RunnerGroup(click.Group):
    """The top-level group; plugins add commands through ``register_commands``, loaded lazily
    so that built-in commands never wait for (or break on) plugins."""

    _plugin_commands = False

    def _load_plugin_commands(self) -> None:
        if self._plugin_commands:
            return
        self._plugin_commands = True
        from runner.config import load
        from runner.plugins import make_plugins

        try:
            s = load()
            make_plugins(s.load_plugins, s.trace_plugins, modules=s.plugins, settings=s).register_commands(self)
        except RunnerError as exc:  # the commands that need plugins report it themselves
            logging.getLogger(__name__).debug("plugin commands not loaded: %s", exc)

    def list_commands(self, ctx: click.Context) -> list[str]:
        self._load_plugin_commands()
        return super().list_commands(ctx)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        command = super().get_command(ctx, name)
        if command is None:
            self._load_plugin_commands()
            command = super().get_command(ctx, name)
        return command


@click.group(cls=RunnerGroup)
@click.option("--debug", is_flag=True, help="Log debug detail; show tracebacks of errors.")
@click.option("--broker-url", envvar=None, help="Broker URL (overrides RUNNER_BROKER_URL).")
@click.version_option(package_name="runner")
@click.pass_context
def cli(ctx: click.Context, debug: bool, broker_url: str | None) -> None:
    """runner: a distributed job runner for system-command and media-processing jobs."""
    daemon = ctx.invoked_subcommand == "worker"
    logging.basicConfig(
        level=logging.DEBUG if debug else logging.INFO if daemon else logging.WARNING,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
        stream=sys.stderr,
    )
    if not debug:
        logging.getLogger("pika").setLevel(logging.CRITICAL)
    app = App(debug)
    if broker_url:
        app.settings_flags["broker_url"] = broker_url
    ctx.obj = app


cli.add_command(JobsGroup("submit", help="Submit a job to the broker.", local=False))
cli.add_command(JobsGroup("run", help="Run a job here, through the full pipeline, and wait.", local=True))


@cli.command()
@click.option("--queue", help="Queue to consume (default: default).")
@click.option("--bind", "bindings", multiple=True, help="Routing pattern, e.g. 'heavy.#' (repeatable).")
@click.option("--concurrency", "-c", metavar="N|MIN..MAX",
              help="Job slots; MIN..MAX grows the pool with the queue and shrinks it when idle.")
@click.option("--allow-unsigned", is_flag=True, default=None,
              help="Run unsigned jobs from a broker that is not on this host.")
@pass_app
def worker(
    app: App, queue: str | None, bindings: tuple[str, ...], concurrency: str | None,
    allow_unsigned: bool | None,
) -> None:
    """Consume jobs and run them in sandboxed subprocesses."""
    from runner.broker import connect
    from runner import workdir
    from runner.signing import refuse_unsigned
    from runner.worker import Worker

    settings = app.settings(queue=queue, bindings=bindings, concurrency=concurrency,
                            allow_unsigned=allow_unsigned or None)
    refuse_unsigned(settings)  # before connecting: an unreachable broker would be waited for
    workdir.private_mounts()  # while this process has one thread: quota mounts die with it
    plugins = app.plugins()
    for err in plugins.errors:
        click.secho(f"plugin error: {err}", fg="red", err=True)
    w = Worker(connect(settings.broker_url, **_broker_options(settings)), plugins, settings)
    notify = Notifier()

    def stop(*_: Any) -> None:
        notify.stopping()
        w.stop()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, stop)
    if notify.active:
        threading.Thread(target=_announce, args=(w, notify), name="sd-notify", daemon=True).start()
    try:
        w.run()
    except BrokerError as exc:
        if not w.stop_requested:
            raise
        logging.getLogger(__name__).info("worker stopped before it was consuming (%s)", exc)
        return
    if w.forced:
        # Slot threads that would not end must not hold the process open (exit joins them).
        logging.shutdown()
        os._exit(1)


def _announce(w: Any, notify: Notifier) -> None:
    """READY once the worker consumes (its queue declared and bound), then watchdog pings for
    as long as it does."""
    while not w.stopped.is_set():
        if w.ready.wait(0.5):
            notify.ready(f"consuming queue {w.queue} with {w.concurrency} slots")
            notify.keep_alive(lambda: w.ready.is_set() and not w.stopped.is_set())
            return


def _broker_options(settings: Any) -> dict[str, Any]:
    if settings.broker_url.startswith("amqp"):
        return {"connect_for": None}
    return {}


@cli.command()
@click.option("--json", "as_json", is_flag=True)
@pass_app
def plugins(app: App, as_json: bool) -> None:
    """List installed plugins, their versions and job types."""
    loaded = app.plugins()
    infos = loaded.info()
    if as_json:
        click.echo(json.dumps({"plugins": [asdict(i) for i in infos], "errors": loaded.errors}, indent=2))
        return
    for info in infos:
        version = f" {info.version}" if info.version else ""
        click.echo(f"{info.name}{version} ({info.package or 'built-in'}): {', '.join(info.jobs) or '-'}")
    for err in loaded.errors:
        click.secho(f"plugin error: {err}", fg="red", err=True)


@cli.command("completion")
@click.argument("shell", type=click.Choice(["bash", "zsh", "fish"]))
def completion_cmd(shell: str) -> None:
    """Print the shell completion script for SHELL (job names and their options complete too).

    \b
    bash:  eval "$(runner completion bash)"    # in ~/.bashrc
    zsh:   eval "$(runner completion zsh)"     # in ~/.zshrc
    fish:  runner completion fish > ~/.config/fish/completions/runner.fish
    """
    from click.shell_completion import get_completion_class

    complete = get_completion_class(shell)
    assert complete is not None  # the choices are the shells click supports
    click.echo(complete(cli, {}, "runner", "_RUNNER_COMPLETE").source())


@cli.command("config")
@click.option("--json", "as_json", is_flag=True)
@pass_app
def config_cmd(app: App, as_json: bool) -> None:
    """Print the merged settings and where each came from."""
    settings = app.settings()
    values = {k: redact(v, k) for k, v in settings.as_dict().items()}
    if as_json:
        click.echo(json.dumps({k: {"value": v, "source": settings.sources[k]} for k, v in values.items()}, indent=2, default=list))
        return
    for key, value in values.items():
        click.echo(f"{key} = {json.dumps(value, default=list)}    # {settings.sources[key]}")


from runner.cli_dead import dead  # noqa: E402 - registered after the group exists

cli.add_command(dead)
from runner.cli_security import doctor, keys  # noqa: E402

cli.add_command(doctor)
cli.add_command(keys)
from runner.cli_control import control, revoke  # noqa: E402

cli.add_command(control)
cli.add_command(revoke)
from runner.cli_beat import beat  # noqa: E402

cli.add_command(beat)
from runner.cli_results import group, result  # noqa: E402

cli.add_command(result)
cli.add_command(group)


def main() -> None:
    """Console entry point: one red line for errors, a traceback only with --debug."""
    debug = "--debug" in sys.argv
    try:
        code = cli.main(standalone_mode=False)
    except click.exceptions.Exit as exc:
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        exc.show()
        sys.exit(exc.exit_code)
    except click.Abort:
        click.echo("aborted", err=True)
        sys.exit(130)
    except RunnerError as exc:
        if debug:
            traceback.print_exc()
        click.secho(f"error: {exc}", fg="red", err=True)
        sys.exit(EXIT_ERROR)
    sys.exit(code if isinstance(code, int) else 0)


if __name__ == "__main__":
    main()
