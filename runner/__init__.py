"""runner: a distributed job runner for system-command and media-processing jobs.

The public API for plugins and applications is re-exported here.
"""

from __future__ import annotations

import pluggy

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
from runner.config import parse_duration, parse_size
from runner.jobs import JobContext, JobType, RetryPolicy, SandboxProfile

hookimpl = pluggy.HookimplMarker("runner")

__all__ = [
    "BrokerError",
    "ConfigError",
    "JobContext",
    "JobError",
    "JobFailed",
    "JobType",
    "MessageError",
    "PluginError",
    "Reject",
    "RetryPolicy",
    "Retry",
    "RunnerError",
    "SandboxProfile",
    "UnroutableError",
    "hookimpl",
    "parse_duration",
    "parse_size",
]
