"""``runner notify test``: send a test e-mail with the current configuration, say what happened."""

from __future__ import annotations

import click

from runner import ConfigError
from runner.config import load
from runner_notify.config import addresses, email_settings
from runner_notify.mail import test_email
from runner_notify.smtp import Refused, Unreachable, close, open_smtp, send


@click.group()
def notify() -> None:
    """Failure e-mails: check the configuration."""


@notify.command("test")
@click.option("--to", "to", multiple=True, help="Send to this address instead (repeatable).")
def notify_test(to: tuple[str, ...]) -> None:
    """Send a test e-mail through the configured SMTP server, now (not through the spool)."""
    cfg = email_settings(load())
    if cfg is None:
        raise ConfigError("no [notify.email] section is configured (or it has enabled = false)")
    recipients = addresses(list(to), "--to") if to else cfg.to
    try:
        conn = open_smtp(cfg)
        try:
            refused = send(conn, test_email(cfg, recipients))
        finally:
            close(conn)
    except (Refused, Unreachable) as exc:
        raise Unreachable(f"test e-mail not sent via {cfg.endpoint()}: {exc}") from exc
    note = f" (but refused for {', '.join(refused)})" if refused else ""
    waiting = len(list(cfg.spool_dir.glob("*.eml"))) if cfg.spool_dir.is_dir() else 0
    if waiting:
        note += f"; {waiting} failure e-mail(s) wait in {cfg.spool_dir} for a worker to send them"
    click.echo(f"test e-mail to {', '.join(recipients)} accepted by {cfg.endpoint()}{note}")
