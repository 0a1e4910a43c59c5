"""One attempt of one job: a private work directory, the sandboxed process, the verdict.

The worker calls :func:`execute` from a job slot thread; it never raises for a job's own
failure: the :class:`Attempt` it returns says whether the job succeeded, deserves another try
or failed for good, with the error, traceback and output tails for the result.
"""

from __future__ import annotations

import enum
import json
import logging
import os
import shutil
import stat
import sys
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from runner import sandbox
from runner.jobs import JobContext, JobType
from runner.message import FileData, JobMessage, JobResult, JobStatus

log = logging.getLogger(__name__)


class OutputTooLarge(Exception):
    """The job wrote more output than a result message may carry."""


class Verdict(str, enum.Enum):
    SUCCEEDED = "succeeded"
    RETRY = "retry"  # failed, worth another attempt if the policy allows
    FATAL = "fatal"  # failed for good
    CANCELLED = "cancelled"  # stopped by the worker (shutdown); goes back to the queue


@dataclass(frozen=True)
class Attempt:
    verdict: Verdict
    result: JobResult
    delay: float | None = None  # a delay the job asked for with Retry(delay=...)


def execute(
    job: JobType,
    message: JobMessage,
    params: dict[str, Any],
    *,
    root: Path,
    worker: str,
    grace: float = 5.0,
    output_limit: int = 16 * 1024 * 1024,
    cancel: threading.Event | None = None,
) -> Attempt:
    """Run one attempt of ``message`` as ``job`` in a fresh directory under ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"{message.id[:12]}-", dir=root))
    try:
        return _attempt(job, message, params, base, worker, grace, output_limit, cancel)
    finally:
        shutil.rmtree(base, ignore_errors=True)


def _attempt(
    job: JobType,
    message: JobMessage,
    params: dict[str, Any],
    base: Path,
    worker: str,
    grace: float,
    output_limit: int,
    cancel: threading.Event | None,
) -> Attempt:
    ctx = JobContext(job_id=message.id, job=job.name, attempt=message.attempt, workdir=base / "job")
    for d in (ctx.in_dir, ctx.out_dir, ctx.tmp_dir):
        d.mkdir(parents=True)
    logs = base / "log"
    logs.mkdir()
    args = dict(params)
    for name in job.inputs:
        if name in message.files:
            f = message.files[name]
            path = ctx.in_dir / f.name
            path.write_bytes(f.data)
            args[name] = str(path)
    timeout = message.options.timeout or job.timeout
    env = sandbox.job_environment(ctx.tmp_dir)

    def finish(verdict: Verdict, completed: sandbox.Completed, **fields: Any) -> Attempt:
        delay = fields.pop("delay", None)
        result = JobResult(
            id=message.id,
            job=job.name,
            status=JobStatus.SUCCEEDED if verdict is Verdict.SUCCEEDED else JobStatus.FAILED,
            attempts=message.attempt,
            exit_code=completed.exit_code,
            stdout=completed.stdout,
            stderr=completed.stderr,
            duration=completed.duration,
            worker=worker,
            **fields,
        )
        return Attempt(verdict, result, delay)

    if job.function is not None:
        spec_path, result_path = logs / "spec.json", logs / "result.json"
        spec_path.write_text(
            json.dumps(
                {
                    "function": job.function,
                    "params": args,
                    "context": {
                        "job_id": ctx.job_id,
                        "job": ctx.job,
                        "attempt": ctx.attempt,
                        "workdir": str(ctx.workdir),
                    },
                }
            )
        )
        spec_fd = os.open(spec_path, os.O_RDONLY)
        result_fd = os.open(result_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            argv = [sys.executable, "-m", "runner.child", str(spec_fd), str(result_fd)]
            done = sandbox.run(
                argv, cwd=ctx.workdir, logs=logs, profile=job.sandbox, timeout=timeout,
                grace=grace, env=env, pass_fds=(spec_fd, result_fd), cancel=cancel,
            )
        finally:
            os.close(spec_fd)
            os.close(result_fd)
        outcome = _read_outcome(result_path)
    else:
        assert job.argv is not None
        argv = [str(a) for a in job.argv(args, ctx)]
        done = sandbox.run(
            argv, cwd=ctx.workdir, logs=logs, profile=job.sandbox, timeout=timeout,
            grace=grace, env=env, cancel=cancel,
        )
        outcome = None

    if done.cancelled:
        return finish(Verdict.CANCELLED, done, error="cancelled: the worker is shutting down")
    if done.timed_out:
        return finish(Verdict.RETRY, done, error=f"timed out after {timeout:g}s")
    succeeded = (outcome is not None and outcome.get("ok")) or (
        outcome is None and job.function is None and done.exit_code == 0
    )
    if succeeded:
        try:
            outputs = collect_outputs(ctx.out_dir, output_limit)
        except OutputTooLarge as exc:
            return finish(Verdict.FATAL, done, error=str(exc))
        value = outcome.get("value") if outcome else None
        return finish(Verdict.SUCCEEDED, done, value=value, outputs=outputs)
    if outcome is not None:
        kind = outcome.get("kind")
        if kind == "reject":
            verdict = Verdict.FATAL
        elif kind == "retry":
            verdict = Verdict.RETRY
        else:
            retryable = job.retry.exception_is_retryable(str(outcome.get("exc_type", "")))
            verdict = Verdict.RETRY if retryable else Verdict.FATAL
        return finish(
            verdict, done, error=outcome.get("error"), traceback=outcome.get("traceback"),
            delay=outcome.get("delay"),
        )
    if done.signal is not None:
        error = f"killed by signal {done.signal}"
        verdict = Verdict.RETRY
    else:
        code = done.exit_code if done.exit_code is not None else -1
        error = f"exited with status {code}"
        retryable = job.function is not None or job.retry.exit_is_retryable(code)
        verdict = Verdict.RETRY if retryable else Verdict.FATAL
    last = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
    return finish(verdict, done, error=error + (f": {last[0]}" if last else ""))


def _read_outcome(path: Path) -> dict[str, Any] | None:
    try:
        data = path.read_bytes()
        return json.loads(data) if data else None
    except (OSError, ValueError):
        return None


def collect_outputs(out_dir: Path, limit: int) -> tuple[FileData, ...]:
    """Regular files at the top of ``out/``, never following a symlink; at most ``limit`` bytes.

    A job could plant a symlink to a file only the worker can read; opening with O_NOFOLLOW and
    checking the opened file's type makes that a skipped entry, not a leak.
    """
    files: list[FileData] = []
    total = 0
    for entry in sorted(os.scandir(out_dir), key=lambda e: e.name):
        try:
            fd = os.open(entry.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK)
        except OSError:
            log.warning("output %s skipped: not a regular file", entry.name)
            continue
        with os.fdopen(fd, "rb") as fh:
            st = os.fstat(fh.fileno())
            if not stat.S_ISREG(st.st_mode):
                log.warning("output %s skipped: not a regular file", entry.name)
                continue
            total += st.st_size
            if total > limit:
                raise OutputTooLarge(f"outputs exceed the inline limit of {limit} bytes")
            files.append(FileData(name=entry.name, data=fh.read()))
    return tuple(files)
