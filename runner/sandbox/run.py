"""Running one job process, contained, and waiting for it.

The basic layer (DESIGN §7.1), always on: the job gets its own session and process group (the
whole tree is killed on timeout: SIGTERM, a grace period, then SIGKILL, and any process the job
left behind is killed when it exits), a scrubbed environment, stdin closed and output captured
to files with a size cap.  The other layers (rlimits, parent-death signal, slot uid, bubblewrap,
seccomp, cgroups) are an exec chain that :class:`runner.sandbox.chain.Jail` prepares; without one,
:func:`limit_chain` gives the basic rlimits and parent-death signal.

No Python code runs between fork and exec in the (multithreaded) worker: everything is done by
the programs of the chain, and the session is created by :class:`subprocess.Popen` itself.
"""

from __future__ import annotations

import contextlib
import logging
import os
import select
import shutil
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from runner.sandbox import reaper
from runner.errors import RunnerError
from runner.jobs import SandboxProfile

if TYPE_CHECKING:
    from runner.sandbox.chain import Launch

log = logging.getLogger(__name__)
SAFE_PATH = "/usr/local/bin:/usr/bin:/bin"
PASSED_ENV = ("PYTHONPATH", "LANG", "TZ")


@dataclass(frozen=True)
class Completed:
    """How a job process ended."""

    exit_code: int | None  # None when killed by a signal
    signal: int | None
    timed_out: bool
    cancelled: bool
    stdout: str
    stderr: str
    duration: float
    usage: dict[str, int] = field(default_factory=dict)  # cgroup figures: oom_kills, ...
    direct_status: bool = False  # the job's own status (a warm slot), not one bwrap relayed


def _tool(name: str) -> str:
    path = shutil.which(name, path=SAFE_PATH) or shutil.which(name)
    if not path:
        raise RunnerError(f"{name} (util-linux) is required by the sandbox but was not found")
    return path


# Parent death, without a window.  Each program of the chain that sets the parent-death signal
# (setpriv, bwrap and bwrap's child inside its namespaces) does so a few ms after its fork; a
# worker killed before that left a job running with no worker (bwrap issue #633).  So the
# last link before the job checks that the worker still lives: its stdin is the read end of a
# pipe that only the worker holds open (non-blocking: EOF once the worker is gone, "try again"
# while it lives).  If the worker died before a signal was set, the job gives up unstarted;
# if after, the signal kills it.  The job itself gets /dev/null as its stdin.
ALIVE_CHECK = [
    "/bin/sh", "-c", 'if cat >/dev/null 2>&1; then exit 125; fi; exec "$@" </dev/null', "runner-job",
]
_alive: tuple[int, int] | None = None
_alive_lock = threading.Lock()


def liveness_fd() -> int:
    """The read end of this process's liveness pipe (made once; the write end never closes)."""
    global _alive
    with _alive_lock:
        if _alive is None:
            read, write = os.pipe()  # both close-on-exec: no child holds the write end
            os.set_blocking(read, False)
            _alive = (read, write)
        return _alive[0]


def limit_chain(profile: SandboxProfile) -> list[str]:
    """The exec chain that applies rlimits and the parent-death signal before the job runs."""
    limits = ["--core=0"]
    for flag, value in (
        ("as", profile.memory),
        ("cpu", profile.cpu_seconds),
        ("nproc", profile.processes),
        ("fsize", profile.file_size),
        ("nofile", profile.open_files),
    ):
        if value is not None:
            limits.append(f"--{flag}={value}")
    return [_tool("prlimit"), *limits, "--", _tool("setpriv"), "--pdeathsig", "KILL", "--"]


def job_environment(home: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """A clean environment: nothing of the worker's (broker URLs, keys) leaks into a job."""
    env = {"PATH": SAFE_PATH, "HOME": str(home), "TMPDIR": str(home), "LANG": "C.UTF-8"}
    for name in PASSED_ENV:
        if name in os.environ:
            env[name] = os.environ[name]
    env.update(extra or {})
    return env


def run(
    argv: Sequence[str],
    *,
    cwd: Path,
    logs: Path,
    profile: SandboxProfile,
    timeout: float,
    grace: float = 5.0,
    env: Mapping[str, str] | None = None,
    pass_fds: Sequence[int] = (),
    cancel: threading.Event | None = None,
    launch: Launch | None = None,
    progress: Callable[[str], None] | None = None,
) -> Completed:
    """Run ``argv`` in the sandbox and wait for it, at most ``timeout`` seconds.

    ``logs`` is a directory outside the job's reach where stdout and stderr are captured.
    Setting ``cancel`` ends the job early the same way a timeout does.  ``progress`` gets each
    progress marker line the job prints on stdout, while it runs.  With ``launch`` (from
    :meth:`runner.sandbox.chain.Jail.prepare`) its chain replaces the basic one, and its cgroup is
    killed and its figures read when the job ends.
    """
    if launch is None:
        chain = [*limit_chain(profile), *ALIVE_CHECK, *argv]
        log.debug("exec %s", chain)
    else:
        chain = launch.argv
    fds = tuple(pass_fds) + tuple(launch.pass_fds if launch else ())
    logs.mkdir(parents=True, exist_ok=True)
    out_path, err_path = logs / "stdout", logs / "stderr"
    started = time.monotonic()
    with out_path.open("wb") as out, err_path.open("wb") as err, _cleanup_on_error(launch):
        proc = reaper.spawn(
            lambda: subprocess.Popen(  # noqa: S603 - argv list, never a shell
                chain,
                cwd=cwd,
                env=dict(env) if env is not None else job_environment(cwd),
                stdin=liveness_fd(),  # the chain's last link checks it (ALIVE_CHECK)
                stdout=out,
                stderr=err,
                start_new_session=True,
                close_fds=True,
                pass_fds=fds,
            ),
            lambda p: p.pid,
        )
    if launch is not None:
        launch.close()
    with reaper.tracking(proc.pid):
        watch = ProgressWatch(out_path, progress) if progress is not None else None
        return _wait(proc, timeout, grace, cancel, launch, profile, out_path, err_path, started, watch)


def _wait(
    proc: subprocess.Popen[bytes], timeout: float, grace: float, cancel: threading.Event | None,
    launch: Launch | None, profile: SandboxProfile, out_path: Path, err_path: Path, started: float,
    watch: ProgressWatch | None = None,
) -> Completed:
    timed_out = cancelled = False
    deadline = started + timeout
    # A pidfd turns readable when the job exits but before it is reaped, so its process group
    # id cannot be reused while we sweep the group below.
    pidfd = os.pidfd_open(proc.pid)
    poller = select.poll()
    poller.register(pidfd, select.POLLIN)
    try:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                timed_out = True
                break
            step = min(remaining, 0.25) if cancel is not None or watch else remaining
            if poller.poll(step * 1000):
                break
            if watch is not None:
                watch.check()
            if cancel is not None and cancel.is_set():
                cancelled = True
                break
        if timed_out or cancelled:
            _terminate(proc, poller, grace, launch)
        # Anything the job left running in its process group goes too, and with a cgroup,
        # anything it started anywhere (a daemon in a new session included).
        _killpg(proc.pid, signal.SIGKILL)
        if launch is not None and launch.cgroup is not None:
            launch.cgroup.kill()
    finally:
        os.close(pidfd)
        proc.wait()
        usage: dict[str, int] = {}
        if launch is not None and launch.cgroup is not None:
            usage = launch.cgroup.stats()
            # bwrap's PID-1 helper is re-parented to the worker; as a zombie it still counts
            # in the cgroup, which cannot be removed until it is reaped.
            reaper.reap()
            launch.cgroup.remove()
    code = proc.returncode
    return Completed(
        exit_code=code if code >= 0 else None,
        signal=-code if code < 0 else None,
        timed_out=timed_out,
        cancelled=cancelled,
        stdout=tail(out_path, profile.output_limit),
        stderr=tail(err_path, profile.output_limit),
        duration=time.monotonic() - started,
        usage=usage,
    )


@contextlib.contextmanager
def _cleanup_on_error(launch: Launch | None) -> Iterator[None]:
    try:
        yield
    except BaseException:
        if launch is not None:
            launch.close()
            if launch.cgroup is not None:
                launch.cgroup.remove()
        raise


class ProgressWatch:
    """Reads what a job appended to its stdout file and passes on the progress marker lines."""

    def __init__(self, path: Path, report: Callable[[str], None]) -> None:
        self.path = path
        self.report = report
        self.offset = 0
        self.partial = b""

    def check(self) -> None:
        try:
            with self.path.open("rb") as fh:
                fh.seek(self.offset)
                data = fh.read(1 << 20)
        except OSError:
            return
        self.offset += len(data)
        *lines, self.partial = (self.partial + data).split(b"\n")
        self.partial = self.partial[-4096:]
        last = None
        for raw in lines:
            if raw.startswith(b"runner-progress:"):
                last = raw.decode("utf-8", errors="replace")
        if last is not None:  # only the latest matters
            try:
                self.report(last)
            except Exception:  # a reporting problem must not disturb the job
                log.debug("progress report failed", exc_info=True)


def _terminate(
    proc: subprocess.Popen[bytes], poller: select.poll, grace: float, launch: Launch | None
) -> None:
    if launch is not None and launch.cgroup is not None and launch.uid is not None:
        # Inside bwrap the job is not in our process group, and bwrap itself would answer
        # SIGTERM by killing the sandbox at once: signal the job's own processes instead.
        launch.cgroup.signal(signal.SIGTERM, launch.uid)
    else:
        _killpg(proc.pid, signal.SIGTERM)
    if not poller.poll(grace * 1000):
        _killpg(proc.pid, signal.SIGKILL)


def _killpg(pgid: int, sig: int) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def tail(path: Path, limit: int) -> str:
    """The last ``limit`` bytes of a file, decoded leniently."""
    try:
        with path.open("rb") as fh:
            size = fh.seek(0, os.SEEK_END)
            fh.seek(max(0, size - limit))
            data = fh.read()
    except OSError:
        return ""
    text = data.decode("utf-8", errors="replace")
    return ("…" + text) if size > limit else text
