"""Failure e-mails for runner: a first-party plugin on the public hooks (docs/notify.md).

Without a ``[notify.email]`` section this plugin does nothing: no thread, no file, no log line.
With one, each worker validates it when it starts, and the job hooks hand failures to the
notifier of its spool directory, which sends them from its own thread.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any
from weakref import WeakKeyDictionary

import click

from runner import ConfigError, hookimpl
from runner_notify.config import EmailSettings, JobRule, email_settings, job_rules

if TYPE_CHECKING:
    from runner_notify.sender import Notifier

__all__ = ["Notifier", "notifier_for"]
log = logging.getLogger(__name__)
DEFAULT_RULE = JobRule()


@dataclass(frozen=True)
class _Binding:
    """What one worker notifies with: its settings, and the notifier of its spool directory."""

    cfg: EmailSettings
    rules: dict[str, JobRule]
    notifier: Notifier

    def rule(self, job: str | None) -> JobRule:
        return self.rules.get(job or "", DEFAULT_RULE)


_bindings: WeakKeyDictionary[Any, _Binding] = WeakKeyDictionary()
_last_final = threading.local()  # job_failed(final=True) is followed by job_dead in the same thread


def notifier_for(worker: Any) -> Notifier | None:
    """The notifier a worker hands its failures to (``None`` when e-mail is off)."""
    binding = _bindings.get(worker)
    return binding.notifier if binding else None


@hookimpl
def worker_started(worker: Any) -> None:
    try:
        cfg = email_settings(worker.settings)
        if cfg is None:
            return
        rules = job_rules(worker.settings)
        # Imported only when e-mail is on: smtplib, ssl and the mail modules cost every
        # process that loads the plugin (each `runner run`) a noticeable part of its start.
        from runner_notify.sender import NOTIFIERS

        notifier = NOTIFIERS.acquire(cfg)
    except ConfigError as exc:
        log.error("notify: %s; failure e-mails are off for worker %s", exc, worker.name)
        return
    except OSError as exc:
        log.error("notify: cannot use the spool directory (%s); failure e-mails are off for "
                  "worker %s", exc, worker.name)
        return
    _bindings[worker] = _Binding(cfg, rules, notifier)
    if cfg.username and cfg.security == "none":
        log.warning("notify: [notify.email] security = none sends the SMTP password unencrypted")
    log.info("notify: failure e-mails (on %s) to %s via %s, spooled in %s",
             cfg.on, ", ".join(cfg.to), cfg.endpoint(), cfg.spool_dir)


@hookimpl
def worker_stopping(worker: Any) -> None:
    binding = _bindings.get(worker)
    if binding is not None:  # jobs finishing during the grace period still spool their mail
        from runner_notify.sender import NOTIFIERS

        NOTIFIERS.release(binding.notifier, linger=worker.settings.grace)


@hookimpl
def job_failed(job: Any, message: Any, result: Any, final: bool, worker: Any) -> None:
    binding = _bindings.get(worker)
    if binding is None:
        return
    if final:  # job_dead follows with the reason; it sends the e-mail
        _last_final.job = (message.id, job)
        return
    rule = binding.rule(job.name)
    if rule.enabled and (rule.on or binding.cfg.on) == "every_failure":
        _notify(binding, "failed", rule, job=job, message=message, result=result, worker=worker.name)


@hookimpl
def job_dead(message: Any, reason: str, result: Any, worker: Any) -> None:
    binding = _bindings.get(worker)
    if binding is None:
        return
    last, _last_final.job = getattr(_last_final, "job", None), None
    job = last[1] if last and message is not None and last[0] == message.id else None
    rule = binding.rule(message.job if message is not None else None)
    if rule.enabled:
        _notify(binding, "dead", rule, job=job, message=message, result=result, reason=reason,
                worker=worker.name)


@hookimpl
def register_commands(cli: click.Group) -> None:
    from runner_notify.cli import notify

    cli.add_command(notify)


def _notify(binding: _Binding, kind: str, rule: JobRule, **about: Any) -> None:
    from runner_notify.report import describe

    failure = describe(kind, binding.cfg, rule, **about)
    try:
        binding.notifier.notify(failure)
    except OSError as exc:
        log.error("notify: could not spool the e-mail about job %s %s: %s",
                  failure.job, failure.job_id, exc)


def __getattr__(name: str) -> Any:
    # ``from runner_notify import Notifier`` still works; the import happens on first use.
    if name == "Notifier":
        from runner_notify.sender import Notifier

        return Notifier
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
