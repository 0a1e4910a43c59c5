"""The Python API for submitting jobs; the CLI is a thin layer over it.

Example::

    from runner.client import Client, save_outputs

    with Client.from_settings() as client:
        handle = client.submit("resize", {"size": "200x200"}, files={"image": "photo.jpg"},
                               wait=True)
        result = handle.wait(timeout=60)          # JobResult; raises JobFailed if it failed
        save_outputs(result, "thumbs/")             # writes thumbs/photo_200x200.jpg
"""

from __future__ import annotations

import json
import os
import time
import uuid
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from runner.broker import Broker, Envelope, ReplyInbox, connect
from runner.config import Settings, load
from runner.errors import ConfigError, JobError, JobFailed, MessageError, RunnerError
from runner.jobs import ROUTE_RE, JobType
from runner import fields
from runner.message import PROGRESS_SUFFIX, FileData, JobMessage, JobOptions, JobResult, check_file_name, check_url
from runner.plugins import Plugins, make_plugins
from runner.results.groups import GroupBuilder, GroupHandle, JobSpec, submit_chain
from runner.results.store import ResultStore
from runner.shared import fetch, remove, store_input
from runner.signing import Signer, signer_from_settings
from runner.untrusted import name_problem, printable
from runner.timing import schedule


class WaitTimeout(RunnerError):
    """A waited-on job did not finish in time (it may still be queued or running)."""


@dataclass
class JobHandle:
    """A submitted job."""

    id: str
    job: str
    route: str
    _inbox: ReplyInbox | None
    _poll: Callable[[str], JobResult | None] | None = None  # the result store, if there is one

    def wait(
        self,
        timeout: float | None = None,
        raise_on_failure: bool = True,
        on_progress: Callable[[dict[str, Any]], None] | None = None,
    ) -> JobResult:
        """Wait for the job's final result.

        Args:
            timeout: seconds to wait at most (``None``: no limit).
            raise_on_failure: raise :class:`JobFailed` when the job failed for good.
            on_progress: called with each progress record the job reports while it runs
                (``percent``, ``message``, and ``done``/``total``).

        Raises:
            WaitTimeout: nothing arrived within ``timeout`` seconds.
            JobFailed: the job failed for good (unless ``raise_on_failure`` is false).
        """
        if self._inbox is None:
            if self._poll is None:
                raise RunnerError(f"job {self.id} was submitted without wait=True and there is "
                                  "no result store ([results] url); no result will come")
            return self._wait_stored(self._poll, timeout, raise_on_failure)
        if on_progress is None:
            env = self._inbox.get(self.id, timeout)
        else:
            env = self._wait_reporting(self._inbox, timeout, on_progress)
        self._latest_progress(self._inbox)  # leftovers are of no use any more
        if env is None:
            raise WaitTimeout(
                f"job {self.id} did not finish within {timeout:g}s; it is still queued or running"
            )
        result = JobResult.from_envelope(env)
        if raise_on_failure and not result.ok:
            raise JobFailed(self.id, result.error or "unknown error", result)
        return result


    def _wait_stored(self, poll: Callable[[str], JobResult | None], timeout: float | None,
                     raise_on_failure: bool) -> JobResult:
        """Poll the result store (from 50 ms up to every second) until the result is there."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while (result := poll(self.id)) is None:
            left = None if deadline is None else deadline - time.monotonic()
            if left is not None and left <= 0:
                raise WaitTimeout(f"job {self.id} has no result after {timeout:g}s; it is still "
                                  "queued or running, or the id is unknown or expired")
            time.sleep(pause if left is None else min(pause, left))  # an external store: poll
            pause = min(1.0, pause * 1.5)
        if raise_on_failure and not result.ok:
            raise JobFailed(self.id, result.error or "unknown error", result)
        return result

    def _wait_reporting(
        self, inbox: ReplyInbox, timeout: float | None, report: Callable[[dict[str, Any]], None]
    ) -> Envelope | None:
        deadline = None if timeout is None else time.monotonic() + timeout
        while True:
            left = 0.2 if deadline is None else min(0.2, deadline - time.monotonic())
            env = inbox.get(self.id, max(0.0, left))
            latest = self._latest_progress(inbox)
            if latest is not None:
                try:
                    report(json.loads(latest.body))
                except ValueError:
                    pass  # a malformed progress update is not worth failing the wait
            if env is not None or (deadline is not None and time.monotonic() >= deadline):
                return env

    def _latest_progress(self, inbox: ReplyInbox) -> Envelope | None:
        latest = None
        while (update := inbox.get(self.id + PROGRESS_SUFFIX, 0)) is not None:
            latest = update
        return latest


class Client:
    """Submits jobs through a broker, validating them against the installed job types.

    With ``[signing] key`` configured (or a ``signer`` given) every job is signed.
    """

    def __init__(
        self, broker: Broker, plugins: Plugins, settings: Settings, signer: Signer | None = None
    ) -> None:
        self.broker = broker
        self.plugins = plugins
        self.settings = settings
        self.signer = signer or signer_from_settings(settings.signing, settings.base_dir("signing"))
        self._inbox: ReplyInbox | None = None
        self._store: ResultStore | None = None

    @classmethod
    def from_settings(cls, settings: Settings | None = None) -> Client:
        """A client from the merged configuration (file, environment) and installed plugins."""
        settings = settings or load()
        plugins = make_plugins(
            settings.load_plugins, settings.trace_plugins, modules=settings.plugins, settings=settings
        )
        return cls(connect(settings.broker_url), plugins, settings)

    def submit(
        self,
        job: str,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, str | os.PathLike[str] | FileData] | None = None,
        *,
        route: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float = 0.0,
        priority: int = 0,
        webhook: str | None = None,
        eta: Any = None,
        expires: Any = None,
        group: str | None = None,
        job_id: str | None = None,
        after: str | None = None,
    ) -> JobHandle:
        """Submit one job; returns once the broker has confirmed it.

        Args:
            job: job type name.
            params: the job's own parameters (JSON values).
            files: input files by parameter name: a path, or :class:`FileData`.
            route: where it goes (default: ``[routes]`` config, plugin hook, the job's own).
            wait: prepare to receive the result, for :meth:`JobHandle.wait`.
            timeout: the job's wall-clock limit in seconds (default: the job type's).
            retries: retries after the first attempt (default: the job type's policy).
            delay: seconds the broker holds the job before a worker may start it.
            priority: 0 (default) to 9, higher first.
            webhook: an http(s) URL the worker POSTs the final result to (signed).
            eta: the earliest start, an ISO 8601 time or a ``datetime`` (instead of ``delay``).
            expires: drop the job if no worker started it by then: seconds or a duration from
                now (``"10m"``), or an ISO 8601 time / ``datetime``.
            group: a group id shared by jobs submitted together (a batch).
            job_id: the job's id (default: a random one); ``runner beat`` derives it from
                the slot, so every beat process gives a slot the same id.
            after: (groups only) this job is the callback of group ``after``.
        """
        envelope, delay, handle = self._prepare(
            job, params, files, route=route, wait=wait, timeout=timeout, retries=retries,
            delay=delay, priority=priority, webhook=webhook, eta=eta, expires=expires,
            group=group, job_id=job_id, after=after,
        )
        self.broker.publish(envelope, delay=delay)
        return handle

    def submit_many(self, jobs: Iterable[Mapping[str, Any]]) -> list[JobHandle]:
        """Submit several jobs; returns once the broker has confirmed them all.

        Each item holds :meth:`submit`'s arguments by name (``job`` required).  Every job is
        validated before any is sent; the broker then gets them in one go, its confirms
        pipelined rather than awaited one by one.  On an error, jobs before the failing one
        may have been accepted, as with one :meth:`submit` each.
        """
        prepared = [self._prepare(**dict(item)) for item in jobs]
        self.broker.publish_many([(envelope, delay) for envelope, delay, _ in prepared])
        return [handle for _, _, handle in prepared]

    def envelope(self, job: str, *args: Any, **kwargs: Any) -> tuple[Envelope, float]:
        """The job as :meth:`submit` would publish it (validated, signed), with its delay."""
        envelope, delay, _ = self._prepare(job, *args, **kwargs)
        return envelope, delay

    def _prepare(
        self,
        job: str,
        params: Mapping[str, Any] | None = None,
        files: Mapping[str, str | os.PathLike[str] | FileData] | None = None,
        *,
        route: str | None = None,
        wait: bool = False,
        timeout: float | None = None,
        retries: int | None = None,
        delay: float = 0.0,
        priority: int = 0,
        webhook: str | None = None,
        eta: Any = None,
        expires: Any = None,
        group: str | None = None,
        job_id: str | None = None,
        after: str | None = None,
    ) -> tuple[Envelope, float, JobHandle]:
        """Validate one job and build its (signed) envelope, its delay and its handle."""
        job_type = self.plugins.jobs.get(job)
        job_id = job_id or uuid.uuid4().hex
        data = self._files(job_type, files or {}, job_id)
        # A group's callback gets its input files from the members, when it runs.
        given = data if after is None else {**{n: FileData(n) for n in job_type.inputs}, **data}
        checked = job_type.validate(dict(params or {}), given)
        payload = {k: v for k, v in checked.items() if k not in job_type.inputs}
        if not 0 <= priority <= 9:
            raise JobError("priority must be from 0 to 9")
        delay, expires_at = schedule(delay, eta, expires)
        options = JobOptions(
            timeout=timeout, retries=retries, priority=priority, webhook=webhook,
            expires=expires_at, group=group, after=after,
        )
        try:
            # The checks a worker makes, made here first: a NaN timeout is an error at submit.
            check_url(webhook, "webhook")
            fields.number(timeout, "timeout", positive=True, high=fields.MAX_TIMEOUT)
            fields.check_id(job_id, "job id")
        except MessageError as exc:
            raise JobError(str(exc)) from exc
        message = JobMessage(job=job, params=payload, files=data, options=options, id=job_id)
        message = replace(message, route=route or self._route(job_type, message))
        if not ROUTE_RE.match(message.route):
            raise JobError(f"route {message.route!r} must be one lower-case word (a-z, 0-9, _ -)")
        inbox = None
        if wait:
            if self._inbox is None:
                self._inbox = self.broker.reply_inbox()
            inbox = self._inbox
        envelope = message.to_envelope(reply_to=inbox.address if inbox else None)
        if self.signer is not None:
            envelope = self.signer.sign(envelope, delay=delay)
        handle = JobHandle(id=message.id, job=job, route=message.route, _inbox=inbox,
                           _poll=self.result if self._store_url() else None)
        return envelope, delay, handle

    # --- results that outlive the client (docs/results.md) -----------------------------------
    def _store_url(self) -> str | None:
        from runner.results import store_url

        return store_url(self.settings)

    @property
    def keeps_results(self) -> bool:
        """Whether results go to a store (then outputs on the share stay for it)."""
        return self._store_url() is not None

    @property
    def store(self) -> ResultStore:
        """The result store (opened on first use).

        Raises:
            ConfigError: ``[results] url = "off"``.
        """
        if self._store is None:
            from runner.results import open_store

            url = self._store_url()
            if url is None:
                raise ConfigError('there is no result store ([results] url = "off")')
            self._store = open_store(url)
        return self._store

    def result(self, job_id: str) -> JobResult | None:
        """A job's final result from the store; None while it is queued or running, or when
        the id is unknown or its result expired (``[results] keep``)."""
        return self.store.get(job_id)

    # --- groups, maps, chains (runner/results/groups.py) -----------------------------------
    def group(self, members: Sequence[JobSpec]) -> GroupBuilder:
        """Jobs that finish together: ``.then(job, params)`` submits them with a callback that
        runs once all ended; ``.submit()`` without one."""
        return GroupBuilder(self, members)

    def map(self, job: str, params: Sequence[Mapping[str, Any]],
            files: Sequence[Mapping[str, Any]] | None = None, **options: Any) -> GroupBuilder:
        """One ``job`` per parameter set (and file set), as a group: ``.then(...)`` or
        ``.submit()``."""
        if files is not None and len(files) != len(params):
            raise JobError("map: give as many file sets as parameter sets")
        sets = files if files is not None else [{}] * len(params)
        return GroupBuilder(self, [JobSpec(job, p, f, options) for p, f in zip(params, sets)])

    def chain(self, *steps: JobSpec) -> GroupHandle:
        """Submit ``a -> b -> ...``: each step runs once the one before succeeded, with its
        outputs as input files; ``.wait()`` on the handle waits for the last step."""
        return submit_chain(self, steps)

    def handle(self, job_id: str) -> JobHandle:
        """A handle on a job submitted earlier, by any process: ``handle(id).wait()``."""
        return JobHandle(id=job_id, job="", route="", _inbox=None, _poll=self.result)

    def _route(self, job_type: JobType, message: JobMessage) -> str:
        configured = self.settings.routes.get(job_type.name)
        if configured:
            return str(configured)
        return self.plugins.route_job(job_type, message) or job_type.route

    def _files(
        self,
        job_type: JobType,
        files: Mapping[str, str | os.PathLike[str] | FileData],
        job_id: str,
    ) -> dict[str, FileData]:
        out: dict[str, FileData] = {}
        total = 0
        shared = self.shared_root
        for name, src in files.items():
            if name not in job_type.inputs:
                raise JobError(f"job {job_type.name!r} takes no input file {name!r}")
            if isinstance(src, FileData):
                item = src
            else:
                path = Path(src)
                try:
                    size = path.stat().st_size
                    if shared is not None and total + size > self.settings.inline_limit:
                        # Too large to travel inline: by reference, through the share.
                        out[name] = store_input(shared, job_id, path)
                        continue
                    item = FileData(name=path.name, data=path.read_bytes())
                except OSError as exc:
                    raise JobError(f"cannot read input {path}: {exc.strerror}") from exc
            try:
                check_file_name(item.name, name)
            except MessageError as exc:
                raise JobError(str(exc)) from exc
            total += item.size if not item.ref else 0
            if total > self.settings.inline_limit:
                raise JobError(
                    f"input {item.name} brings the job to {total} bytes, over the inline limit "
                    f"of {self.settings.inline_limit} bytes (setting inline_limit; or set "
                    "shared_storage to send large files by reference)"
                )
            out[name] = item
        return out

    @property
    def shared_root(self) -> Path | None:
        return Path(self.settings.shared_storage) if self.settings.shared_storage else None

    def close(self) -> None:
        if self._inbox is not None:
            self._inbox.close()
        if self._store is not None:
            self._store.close()
        self.broker.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class OutputRefused(RunnerError):
    """An output file was not written: its name is not plain, or it would replace a file."""


def save_outputs(
    result: JobResult,
    directory: str | os.PathLike[str],
    shared: Path | None = None,
    consume: bool = True,
    *,
    overwrite: bool = False,
    inputs: Sequence[str | os.PathLike[str]] = (),
) -> list[Path]:
    """Write a result's output files into ``directory``; return their paths.

    The names come from the job, so they are checked before anything is written: each must be
    one plain, visible file name (no separator, no dot file, no control character).  An
    existing file is never replaced unless ``overwrite`` is set, and one of ``inputs`` never.
    Outputs that came back by reference are copied from ``shared`` (the ``shared_storage``
    directory), verified against their digests, and then removed from it, unless
    ``consume`` is false: a result store refers to them until its retention removes them.

    Raises:
        OutputRefused: a name is not plain, or a file is in the way; nothing was written.
    """
    target = Path(directory)
    target.mkdir(parents=True, exist_ok=True)
    paths = [target / _plain_output_name(item.name) for item in result.outputs]
    if len(set(paths)) != len(paths):
        raise OutputRefused("the job returned two outputs of one name; nothing written")
    protected = [Path(p) for p in inputs]
    for path in paths:
        if any(_same_file(path, p) for p in protected):
            raise OutputRefused(f"output {path} would replace an input; nothing written")
        if os.path.lexists(path) and not overwrite:
            raise OutputRefused(f"output {path} exists (--overwrite replaces it); nothing written")
    for item, path in zip(result.outputs, paths):
        # Written beside, then renamed over: a symlink at ``path`` is replaced, never followed.
        temp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.part")
        try:
            if item.ref:
                fetch(shared, item, temp)
            else:
                fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
                with os.fdopen(fd, "wb") as fh:
                    fh.write(item.data)
            if overwrite:
                os.replace(temp, path)
            else:
                try:
                    os.link(temp, path)  # fails if a file appeared meanwhile: never replaced
                except FileExistsError:
                    raise OutputRefused(f"output {path} appeared while writing; not replaced") from None
        finally:
            temp.unlink(missing_ok=True)
    if consume and any(item.ref for item in result.outputs):
        remove(shared, result.id, "out")
    return paths


def _plain_output_name(name: str) -> str:
    problem = name_problem(name)
    if problem is not None:
        raise OutputRefused(f"output name {printable(name, False)[:80]!r} refused: {problem}; nothing written")
    return name


def _same_file(a: Path, b: Path) -> bool:
    try:
        return os.path.samefile(a, b)
    except OSError:
        return os.path.abspath(a) == os.path.abspath(b)
