"""runner: a distributed job runner for system-command and media-processing jobs.

The public API for plugins and applications is re-exported here, lazily: a job's child
interpreter that only needs ``Reject`` or ``JobContext`` does not pay for click and pluggy.
"""

# ruff: noqa: F401 - the TYPE_CHECKING imports document the lazy exports for type checkers
from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

_EXPORTS = {
    "BrokerError": "runner.errors",
    "ConfigError": "runner.errors",
    "JobError": "runner.errors",
    "JobFailed": "runner.errors",
    "MessageError": "runner.errors",
    "PluginError": "runner.errors",
    "Reject": "runner.errors",
    "Retry": "runner.errors",
    "RunnerError": "runner.errors",
    "UnroutableError": "runner.errors",
    "JobContext": "runner.context",
    "JobType": "runner.jobs",
    "RetryPolicy": "runner.jobs",
    "SandboxProfile": "runner.jobs",
    "parse_duration": "runner.config",
    "parse_size": "runner.config",
    "redact_url": "runner.config",
    "Notifier": "runner.systemd",
    "hookimpl": "runner.hookspecs",
    "describe_group": "runner.results",
    "open_store": "runner.results",
    "store_url": "runner.results",
}

__all__ = sorted(_EXPORTS)

if TYPE_CHECKING:
    from runner.config import parse_duration, parse_size, redact_url
    from runner.context import JobContext
    from runner.errors import (
        BrokerError,
        ConfigError,
        JobError,
        JobFailed,
        MessageError,
        PluginError,
        Reject,
        Retry,
        RunnerError,
        UnroutableError,
    )
    from runner.hookspecs import hookimpl
    from runner.jobs import JobType, RetryPolicy, SandboxProfile
    from runner.systemd import Notifier
    from runner.results import describe_group, open_store, store_url


def __getattr__(name: str) -> Any:
    module = _EXPORTS.get(name)
    if module is None:
        raise AttributeError(f"module 'runner' has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value
