"""One attempt of one job: a private work directory, the sandboxed process, the verdict.

The worker calls :func:`execute` from a job slot thread; it never raises for a job's own
failure: the :class:`Attempt` it returns says whether the job succeeded, deserves another try
or failed for good, with the error, traceback and output tails for the result.
"""

from __future__ import annotations

import enum
import functools
import importlib.util
import json
import logging
import os
import stat
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

from runner import workdir
from runner.jobs import JobContext, JobType, SandboxProfile, parse_progress
from runner.sandbox import run as sandbox
from runner.message import FileData, JobMessage, JobResult, JobStatus
from runner.outcome import ERROR_LIMIT, BadOutcome
from runner.outcome import read as read_outcome
from runner.shared import fetch, store_output
from runner.untrusted import name_problem, printable

if TYPE_CHECKING:
    from runner.sandbox.chain import Jail
    from runner.sandbox.warm import SlotHost, WarmSlots

log = logging.getLogger(__name__)


# The child interpreter runs isolated (-I: no PYTHON* variables, no user site, no script or cwd
# directory on sys.path); the runner package's own parent is put first explicitly.
CHILD_BOOT = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); "
    "from runner.sandbox.child import main; sys.exit(main(sys.argv))"
)


MAX_OUTPUTS = 256  # output files one job may hand back


class OutputTooLarge(Exception):
    """The job's outputs cannot go back: too large, too many, or a name that is not plain."""


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
    jail: Jail | None = None,
    slot: int = 0,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    shared: Path | None = None,
    warm: WarmSlots | None = None,
    extra_inputs: tuple[FileData, ...] = (),
) -> Attempt:
    """Run one attempt of ``message`` as ``job`` in a fresh directory under ``root``.

    With a ``jail`` the job runs in its sandbox, as the uid of job slot ``slot`` when the
    worker is root; without one, only the basic layer applies.  ``on_progress`` receives the
    progress records (:func:`runner.jobs.parse_progress`) the job reports while it runs.
    ``shared`` is the shared storage directory: inputs sent by reference are copied from it,
    and outputs past the inline limit go back through it.  With ``warm`` slots the job is
    forked by the slot's warm host (:mod:`runner.sandbox.warm`) instead of a new exec chain.
    ``extra_inputs`` are more files for the job's input directory (a group callback's
    ``members.json`` and member outputs).
    """
    host = warm.host_for(slot, job) if warm is not None else None
    host_logs = warm.logs_dir(slot) if warm is not None and host is not None else None
    if host is not None and warm is not None:
        root = warm.jobs_dir(slot)  # made with the host
    else:
        root.mkdir(parents=True, exist_ok=True)
    base = Path(tempfile.mkdtemp(prefix=f"{message.id[:12]}-", dir=root))
    # The job's disk quota: its work dir is a tmpfs of that size, and so (separately, so that
    # a full work dir leaves room for the result) are its captured output and result file.  A
    # warm host sees the work dir's tmpfs through the slot directory's shared propagation.
    disk = job.sandbox.disk
    mounts: list[Path] = []
    try:
        if jail is not None and jail.quota and disk:
            places = [base / "job"]
            if host_logs is None or warm is None:
                places.append(base / "log")
            else:  # the slot's log dir keeps its quota tmpfs: each job's files truncate theirs
                warm.quota_logs(slot, disk)
            for place in places:
                place.mkdir(mode=0o700, exist_ok=True)
                if workdir.mount_quota(place, disk):
                    mounts.append(place)
        attempt = _attempt(
            job, message, params, base, worker, grace, output_limit, cancel, jail, slot,
            on_progress, shared, host, host_logs, extra_inputs,
        )
        full = bool(mounts) and disk and workdir.used_up(base / "job", disk)
        if full and attempt.verdict is not Verdict.SUCCEEDED:
            error = f"disk quota of {disk} bytes used up; {attempt.result.error}"
            attempt = replace(attempt, result=replace(attempt.result, error=error))
        return attempt
    finally:
        if host is not None and warm is not None:
            workdir.unmount(mounts)
            warm.discard(base)
            warm.clean(slot)
        else:
            workdir.remove(base, mounts)


def _attempt(
    job: JobType,
    message: JobMessage,
    params: dict[str, Any],
    base: Path,
    worker: str,
    grace: float,
    output_limit: int,
    cancel: threading.Event | None,
    jail: Jail | None,
    slot: int,
    on_progress: Callable[[dict[str, Any]], None] | None = None,
    shared: Path | None = None,
    host: SlotHost | None = None,
    host_logs: Path | None = None,
    extra_inputs: tuple[FileData, ...] = (),
) -> Attempt:
    ctx = JobContext(job_id=message.id, job=job.name, attempt=message.attempt, workdir=base / "job")
    owner = jail.uid_for(slot) if jail is not None else None
    work = f"{base}/job"  # plain strings: this runs for every job
    for d in (work, f"{work}/in", f"{work}/out", f"{work}/tmp"):
        try:
            os.mkdir(d, 0o700)
        except FileExistsError:
            if d != work:  # the work dir may be a quota mount
                raise
        if owner is not None:
            os.chown(d, owner, owner)
    if owner is not None:
        # The slot uid (and bwrap, a capability-less root until it drops to that uid) must
        # traverse to the work dir; nobody may list ``base`` or enter its ``log``.
        os.chmod(work, 0o711)
        os.chmod(base, 0o711)
    if host_logs is not None:  # the slot's own, outside every job's reach
        logs = host_logs
    else:
        logs = base / "log"
        logs.mkdir(mode=0o700, exist_ok=True)  # may be a quota mount
    args = dict(params)
    for f in extra_inputs:
        _place(f, ctx.in_dir / f.name, shared, owner)
    for name in job.inputs:
        if name in message.files:
            f = message.files[name]
            path = ctx.in_dir / f.name
            _place(f, path, shared, owner)
            args[name] = str(path)
    # A submitter may ask for less time than the job type (as the operator tightened it with
    # ``[jobs.NAME.sandbox] timeout``) allows, never more: the operator's cap wins.
    timeout = job.timeout if message.options.timeout is None else min(message.options.timeout, job.timeout)
    env = sandbox.job_environment(ctx.tmp_dir)
    progress = None
    if on_progress is not None:
        report = on_progress

        def progress(line: str) -> None:
            record = parse_progress(line)
            if record is not None:
                report(record)

    def run(argv: list[str], read_only: tuple[str, ...] = (), fds: tuple[int, ...] = ()) -> sandbox.Completed:
        if host is not None and jail is not None:
            return host.run(
                "function" if job.function is not None else "argv", argv, fds, cwd=ctx.workdir,
                env=env, logs=logs, profile=job.sandbox, limits=job_limits(job.sandbox, jail, slot),
                timeout=timeout, grace=grace, cancel=cancel, progress=progress, slot=slot, jail=jail,
            )
        launch = jail.prepare(job.sandbox, argv, ctx.workdir, slot, read_only) if jail else None
        return sandbox.run(
            argv, cwd=ctx.workdir, logs=logs, profile=job.sandbox, timeout=timeout, grace=grace,
            env=env, pass_fds=fds, cancel=cancel, launch=launch, progress=progress,
        )

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

    malformed = ""
    if job.function is not None:
        spec_path, result_path = logs / "spec.json", logs / "result.json"
        binds, import_path = python_paths(job.function)
        spec_path.write_text(
            json.dumps(
                {
                    "function": job.function,
                    "path": list(import_path),
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
            argv = [sys.executable, "-I", "-c", CHILD_BOOT, runner_parent(), str(spec_fd), str(result_fd)]
            done = run(argv, binds, (spec_fd, result_fd))
        finally:
            os.close(spec_fd)
            os.close(result_fd)
        try:
            outcome = read_outcome(result_path)
        except BadOutcome as exc:
            outcome, malformed = None, f"the job returned a malformed result: {exc}"
    else:
        assert job.argv is not None
        argv = [str(a) for a in job.argv(args, ctx)]
        done = run(argv)
        outcome = None

    if done.cancelled:
        return finish(Verdict.CANCELLED, done, error="cancelled: the worker is shutting down")
    if done.timed_out:
        return finish(Verdict.RETRY, done, error=f"timed out after {timeout:g}s")
    if malformed:
        return finish(Verdict.FATAL, done, error=malformed)
    succeeded = (outcome is not None and outcome.ok) or (
        outcome is None and job.function is None and done.exit_code == 0
    )
    if done.usage.get("oom_kills"):
        return finish(Verdict.FATAL, done, error=f"killed: out of memory (limit {job.sandbox.memory} bytes)")
    if succeeded:
        try:
            outputs = collect_outputs(
                ctx.out_dir, output_limit, owner, shared=shared, job_id=message.id
            )
        except OutputTooLarge as exc:
            return finish(Verdict.FATAL, done, error=str(exc))
        value = outcome.value if outcome else None
        return finish(Verdict.SUCCEEDED, done, value=value, outputs=outputs)
    if outcome is not None:
        if outcome.kind == "reject":
            verdict = Verdict.FATAL
        elif outcome.kind == "retry":
            verdict = Verdict.RETRY
        else:
            retryable = job.retry.exception_is_retryable(outcome.exc_type)
            verdict = Verdict.RETRY if retryable else Verdict.FATAL
        return finish(
            verdict, done, error=outcome.error, traceback=outcome.traceback, delay=outcome.delay,
        )
    # bwrap reports a job killed by a signal as exit status 128 + signal.
    bwrap_signal = (
        jail is not None and "bwrap" in jail.layers and not done.direct_status and (done.exit_code or 0) > 128
    )
    if done.signal is not None or bwrap_signal:
        sig = done.signal if done.signal is not None else (done.exit_code or 0) - 128
        error = f"killed by signal {sig}"
        verdict = Verdict.RETRY
    else:
        code = done.exit_code if done.exit_code is not None else -1
        error = f"exited with status {code}"
        retryable = job.function is not None or job.retry.exit_is_retryable(code)
        verdict = Verdict.RETRY if retryable else Verdict.FATAL
    last = done.stderr.strip().splitlines()[-1:] if done.stderr.strip() else []
    if last and len(last[0]) > ERROR_LIMIT:  # the job's own text: the error line stays short
        last = [last[0][:ERROR_LIMIT] + "…"]
    return finish(verdict, done, error=error + (f": {last[0]}" if last else ""))


def job_limits(profile: SandboxProfile, jail: Jail, slot: int) -> dict[str, int]:
    """The rlimits a warm slot's job sets for itself (as the cold chain's prlimit would)."""
    if "rlimits" not in jail.layers:
        return {}
    limits = {"core": 0}
    values: list[tuple[str, int | None]] = [
        ("cpu", profile.cpu_seconds), ("fsize", profile.file_size), ("nofile", profile.open_files),
    ]
    if jail.uid_for(slot) is not None:  # RLIMIT_NPROC counts every process of the real uid
        values.append(("nproc", profile.processes))
    if "cgroup" not in jail.layers:  # a cgroup limit is exact; RLIMIT_AS breaks big mappings
        values.append(("as", profile.memory))
    limits.update({name: value for name, value in values if value is not None})
    return limits


def _place(f: FileData, path: Path, shared: Path | None, owner: int | None) -> None:
    """Write one input file into the job's input directory, owned by the job's uid."""
    if f.ref:
        path.unlink(missing_ok=True)
        fetch(shared, f, path)  # verified against the (signed) digest
    else:
        path.write_bytes(f.data)
    if owner is not None:
        os.chown(path, owner, owner)


def collect_outputs(
    out_dir: Path,
    limit: int,
    owner: int | None = None,
    shared: Path | None = None,
    job_id: str = "",
) -> tuple[FileData, ...]:
    """Regular files at the top of ``out/``, never following a symlink; at most ``limit`` bytes.

    With ``shared`` storage, files past the inline ``limit`` go back by reference through it
    instead of failing the job.

    Everything the job wrote is hostile: ``out/`` itself may have been replaced by a symlink,
    an entry may be a symlink or hard link to a file only the worker can read, or a FIFO that
    would block a read.  Directories and files are opened relative to descriptors with
    ``O_NOFOLLOW``, and only regular files with one link, owned by the job's uid (``owner``,
    default the worker's), are taken; anything else is skipped with a warning.
    """
    owner = os.geteuid() if owner is None else owner
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    try:
        job_fd = os.open(out_dir.parent, flags | os.O_DIRECTORY)
    except OSError:
        return ()
    try:
        out_fd = os.open(out_dir.name, flags | os.O_DIRECTORY, dir_fd=job_fd)
    except OSError:
        log.warning("%s is not a directory; no outputs collected", out_dir.name)
        return ()
    finally:
        os.close(job_fd)
    files: list[FileData] = []
    total = 0
    try:
        for name in _output_names(out_fd):
            try:
                fd = os.open(name, flags | os.O_NONBLOCK, dir_fd=out_fd)
            except OSError:
                log.warning("output %s skipped: not a regular file", name)
                continue
            with os.fdopen(fd, "rb") as fh:
                st = os.fstat(fh.fileno())
                if not stat.S_ISREG(st.st_mode) or st.st_nlink != 1 or st.st_uid != owner:
                    log.warning("output %s skipped: not a regular file of the job's own", name)
                    continue
                if total + st.st_size > limit and shared is not None:
                    files.append(store_output(shared, job_id, name, fh.fileno()))
                    continue
                total += st.st_size
                if total > limit:
                    raise OutputTooLarge(f"outputs exceed the inline limit of {limit} bytes")
                files.append(FileData(name=name, data=fh.read(limit + 1)))
    finally:
        os.close(out_fd)
    return tuple(files)


def _output_names(out_fd: int) -> list[str]:
    """The names in ``out/``, at most :data:`MAX_OUTPUTS`, each one plain file name."""
    names: list[str] = []
    with os.scandir(out_fd) as entries:
        for entry in entries:  # scandir streams: a million entries are never all in memory
            if len(names) == MAX_OUTPUTS:
                raise OutputTooLarge(f"more than {MAX_OUTPUTS} output files")
            problem = name_problem(entry.name)
            if problem is not None:
                raise OutputTooLarge(f"output name {printable(entry.name)[:80]!r} refused: {problem}")
            names.append(entry.name)
    return sorted(names)


def runner_parent() -> str:
    """The directory that holds the ``runner`` package."""
    return str(Path(__file__).resolve().parent.parent)


@functools.lru_cache(maxsize=None)
def python_paths(function: str) -> tuple[tuple[str, ...], tuple[str, ...]]:
    """What a function job's interpreter must see: (paths to bind read-only, import path).

    The interpreter's installation (standard library, site-packages), the runner package and
    the package or module that holds ``function``; nothing else of the host.
    """
    binds = [sys.prefix, sys.base_prefix, sys.exec_prefix, str(Path(__file__).resolve().parent)]
    import_path: list[str] = []
    top = function.partition(":")[0].split(".")[0]
    try:
        spec = importlib.util.find_spec(top)
    except (ImportError, ValueError):
        spec = None
    if spec is not None and spec.submodule_search_locations:
        for location in spec.submodule_search_locations:
            binds.append(location)
            import_path.append(os.path.dirname(location))
    elif spec is not None and spec.origin and os.path.isabs(spec.origin):
        binds.append(spec.origin)
        import_path.append(os.path.dirname(spec.origin))
    return tuple(binds), tuple(dict.fromkeys(import_path))
