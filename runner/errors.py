"""The error hierarchy.

Every error a user can cause or meet derives from :class:`RunnerError` and is shown by the CLI as
one line.  Control flow that a job uses to steer its own retries (:class:`Retry`, :class:`Reject`)
stays outside that hierarchy on purpose: it is not an error of runner.
"""

from __future__ import annotations


class RunnerError(Exception):
    """Root of every error runner raises on purpose."""


class ConfigError(RunnerError):
    """The configuration (file, environment or flags) is invalid."""


class PluginError(RunnerError):
    """A plugin failed to load or registered something invalid."""


class BrokerError(RunnerError):
    """The broker could not be reached or refused an operation."""


class UnroutableError(BrokerError):
    """No queue is bound to a job's routing key; the job was not accepted."""

    def __init__(self, routing_key: str) -> None:
        route = routing_key.split(".", 1)[0]
        super().__init__(
            f"no worker queue is bound to route {route!r} (routing key {routing_key!r}); "
            f"start one with: runner worker --queue {route} --bind '{route}.#'"
        )
        self.routing_key = routing_key


class MessageError(RunnerError):
    """A message cannot be decoded, validated or verified; it is dead-lettered, never run."""


class JobError(RunnerError):
    """A job is unknown, or its parameters are invalid."""


class JobFailed(RunnerError):
    """A job that a client waited on failed for good."""

    def __init__(self, job_id: str, error: str, result: object = None) -> None:
        super().__init__(f"job {job_id} failed: {error}")
        self.job_id = job_id
        self.error = error
        self.result = result


class Retry(Exception):  # noqa: N818 - control flow, named for what the job asks
    """Raised by a job to ask for another attempt, optionally after ``delay`` seconds."""

    def __init__(self, reason: str = "retry requested", delay: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.delay = delay


class Reject(Exception):  # noqa: N818
    """Raised by a job to fail for good, without further attempts."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason
