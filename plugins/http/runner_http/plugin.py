"""The ``http`` job: one HTTP request from a worker, for API sync jobs.

``runner submit http --url https://api.example.com/sync --method POST --json-body '{"a": 1}'
--credential example --expect 200 --expect 202``

It is a function job (:func:`runner_http.job.request`) run in a child interpreter, the only
first-party job type whose sandbox allows the network.  Configuration lives in the worker's
``[jobs.http]`` table (docs/plugins/http.md): allowed hosts, credentials, retry settings.

How the worker's configuration reaches the job: the child interpreter receives only the job's
parameters, so the job type declares a hidden ``worker_config`` parameter whose click type
*always* yields the configuration this process read at start-up, whatever value a message
carries.  The worker validates every message against its own job types before running it, so
the job sees the worker's allowed hosts and credential file paths, never a submitter's.  The
dict holds no secret: a credential is named in the message (``--credential github``), and the
job reads its value from the ``value_file`` the worker's config names, and only sends it to the
hosts that credential lists.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from typing import Any
from urllib.parse import urlsplit

import click

from runner import JobType, RetryPolicy, SandboxProfile, hookimpl
from runner_http.config import CREDENTIAL_NAME, HEADER_NAME, host_allowed, read_config

__all__ = ["METHODS", "http_job", "register_jobs"]
METHODS = ("GET", "HEAD", "POST", "PUT", "PATCH", "DELETE", "OPTIONS")


class UrlType(click.ParamType):
    """An http(s) URL without user info, to a host the configuration allows."""

    name = "url"

    def __init__(self, allowed_hosts: list[str] | None) -> None:
        self.allowed_hosts = allowed_hosts

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or len(value) > 8000 or re.search(r"[\x00-\x20\x7f]", value):
            self.fail("expected a URL without spaces or control characters", param, ctx)
        parts = urlsplit(value)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            self.fail(f"{value!r} is not an http:// or https:// URL", param, ctx)
        if parts.username is not None or parts.password is not None:
            self.fail("user:password@ in a URL is refused; name a --credential instead", param, ctx)
        if not host_allowed(parts.hostname, self.allowed_hosts):
            self.fail(f"host {parts.hostname} is not in [jobs.http] allowed_hosts", param, ctx)
        return value


class HeaderType(click.ParamType):
    """``"Name: value"``, one line."""

    name = "header"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        name, sep, text = str(value).partition(":")
        if not sep or not HEADER_NAME.match(name.strip()) or re.search(r"[\x00-\x1f\x7f]", text):
            self.fail(f"{value!r} is not one 'Name: value' header line", param, ctx)
        return f"{name.strip()}: {text.strip()}"


class JsonText(click.ParamType):
    """JSON text (from the CLI) or any JSON value (from Python); kept as JSON text."""

    name = "json"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if isinstance(value, str):
            try:
                json.loads(value)
            except ValueError as exc:
                self.fail(f"not valid JSON: {exc}", param, ctx)
            return value
        try:
            return json.dumps(value, separators=(",", ":"))
        except (TypeError, ValueError) as exc:
            self.fail(f"not JSON-serialisable: {exc}", param, ctx)


class CredentialName(click.ParamType):
    """The name of a credential; whether the worker has it is checked by the job."""

    name = "name"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> str:
        if not isinstance(value, str) or not CREDENTIAL_NAME.match(value):
            self.fail(f"{value!r} is not a credential name", param, ctx)
        return value


class WorkerConfig(click.ParamType):
    """The hidden parameter: any value a message carries is replaced by this process's config."""

    name = "worker-config"

    def __init__(self, config: dict[str, Any]) -> None:
        self.config = config

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> Any:
        return self.config


def http_job(config: dict[str, Any]) -> JobType:
    """The ``http`` job type for a checked ``[jobs.http]`` config (see :func:`read_config`)."""
    worker_config = {k: config[k] for k in (
        "allowed_hosts", "credentials", "request_timeout", "tries", "wait", "max_wait",
        "max_retry_after", "max_body",
    )}
    return JobType(
        name="http",
        help="Make one HTTP request (API sync). Retries connection errors, 5xx and 429; "
             "4xx fails at once. The response (status, headers, capped body) is the result.",
        params=(
            click.Option(["--url"], type=UrlType(config["allowed_hosts"]), required=True,
                         help="http:// or https:// URL."),
            click.Option(["--method"], type=click.Choice(METHODS, case_sensitive=False),
                         default="GET", show_default=True),
            click.Option(["--header"], type=HeaderType(), multiple=True, default=(),
                         help="'Name: value' (repeatable)."),
            click.Option(["--json-body"], type=JsonText(), default=None, help="JSON request body."),
            click.Option(["--expect"], type=click.IntRange(100, 599), multiple=True, default=(),
                         help="Status that counts as success (repeatable) [default: any 2xx]."),
            click.Option(["--credential"], type=CredentialName(), default=None,
                         help="Name of a credential in the worker's [jobs.http.credentials]."),
            click.Option(["--worker-config", "worker_config"], type=WorkerConfig(worker_config),
                         default=lambda: worker_config, hidden=True),
        ),
        function="runner_http.job:request",
        timeout=config["timeout"],
        retry=RetryPolicy(
            attempts=config["retries"] + 1, backoff=config["backoff"],
            jitter=min(1.0, config["backoff"]),
        ),
        route=config["route"],
        sandbox=SandboxProfile(network=True),
    )


@hookimpl
def register_jobs(register: Callable[[JobType], None], settings: Any) -> None:
    """Register ``http``, configured by the ``[jobs.http]`` table."""
    register(http_job(read_config(settings.jobs.get("http"))))
