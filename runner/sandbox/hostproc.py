"""Starting and stopping one slot host process (:mod:`runner.sandbox.host`) in its sandbox."""

from __future__ import annotations

import importlib.util
import json
import logging
import os
import select
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from runner.jobs import SandboxProfile
from runner.sandbox import reaper
from runner.sandbox.chain import Jail, Launch
from runner.sandbox.run import job_environment, liveness_fd, tail

HOST_SCRIPT = str(Path(__file__).resolve().with_name("host.py"))
RUNNER_PARENT = str(Path(__file__).resolve().parent.parent.parent)
log = logging.getLogger(__name__)
SYSTEM_PYTHON = "/usr/bin/python3"
START_TIMEOUT = 60.0
STOP_WAIT = 2.0


@dataclass(frozen=True)
class HostSpec:
    """How a host is started: interpreter, the paths it must see, the modules it preloads."""

    kind: str
    python: tuple[str, ...]
    read_only: tuple[str, ...]
    paths: tuple[str, ...] = ()
    modules: tuple[str, ...] = ()
    private_tmp: bool = False
    domain: str = ""  # the host's kill domain: "pidns" or "uid:N" (runner.sandbox.host)

    @classmethod
    def build(cls, kind: str, modules: list[str], private_tmp: bool, domain: str) -> HostSpec:
        if kind == "argv":
            # The system interpreter, standard library only: an argv job's view gains nothing
            # but this one script (its /usr is bound anyway).
            python = SYSTEM_PYTHON if os.access(SYSTEM_PYTHON, os.X_OK) else sys.executable
            return cls(kind, (python, "-I", "-S"), (HOST_SCRIPT,), private_tmp=private_tmp, domain=domain)
        from runner.execution import python_paths  # the same view a cold function job gets

        binds: list[str] = [HOST_SCRIPT]
        paths: list[str] = [RUNNER_PARENT]
        for module in modules:
            more_binds, more_paths = python_paths(f"{module}:_")
            binds += more_binds
            paths += more_paths
        return cls(kind, (sys.executable, "-I"), tuple(dict.fromkeys(binds)),
                   tuple(dict.fromkeys(paths)), ("runner.sandbox.child", *modules), private_tmp, domain)

    def argv(self, ctl_fd: int) -> list[str]:
        argv = [*self.python, HOST_SCRIPT, str(ctl_fd), "--domain", self.domain]
        if self.private_tmp:
            argv.append("--private-tmp")
        for path in self.paths:
            argv += ["--path", path]
        for module in self.modules:
            argv += ["--preload", module]
        return argv

    def signature(self) -> tuple[tuple[str, int], ...]:
        """Modification times of the preloaded modules' files: a change means new plugin code."""
        found = []
        for module in self.modules:
            try:
                spec = importlib.util.find_spec(module)
                origin = spec.origin if spec is not None else None
                if origin and os.path.isabs(origin):
                    found.append((origin, os.stat(origin).st_mtime_ns))
            except (ImportError, ValueError, OSError):
                found.append((module, 0))
        return tuple(found)


class HostProcess:
    """The host's process tree (its exec chain) and the worker's end of its control socket."""

    def __init__(self, spec: HostSpec, proc: subprocess.Popen[bytes], ctl: socket.socket,
                 launch: Launch | None, log_path: Path, namespaced: bool) -> None:
        self.spec = spec
        self.proc = proc
        self.ctl = ctl
        self.launch = launch
        self.log_path = log_path
        self.namespaced = namespaced
        self.signature = spec.signature()

    @classmethod
    def start(cls, spec: HostSpec, jail: Jail, profile: SandboxProfile, slot: int,
              jobs_dir: Path, log_path: Path) -> HostProcess:
        """Build the slot's sandbox around a new host and wait until it is ready."""
        ctl, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        argv = spec.argv(theirs.fileno())
        # The host itself has no CPU limit (each job gets its own): rlimits in the chain are the
        # ceiling every job's own limits are set under.
        launch = jail.prepare(replace(profile, cpu_seconds=None), argv, jobs_dir, slot, spec.read_only)
        try:
            with log_path.open("ab") as out:
                proc = reaper.spawn(
                    lambda: subprocess.Popen(  # noqa: S603 - argv list, never a shell
                        launch.argv, cwd=jobs_dir, env=job_environment(jobs_dir),
                        # The chain's last link checks the worker still lives (ALIVE_CHECK):
                        # like a cold job, the host starts only if it does.
                        stdin=liveness_fd(), stdout=out, stderr=out, start_new_session=True,
                        close_fds=True, pass_fds=(theirs.fileno(), *launch.pass_fds),
                    ),
                    lambda p: p.pid,
                )
        except BaseException:
            ctl.close()
            if launch.cgroup is not None:
                launch.cgroup.remove()
            raise
        finally:
            theirs.close()
            launch.close()
        host = cls(spec, proc, ctl, launch, log_path, "bwrap" in jail.layers)
        try:
            host._ready()
        except BaseException:
            host.stop()
            raise
        return host

    def _ready(self) -> None:
        if not select.select([self.ctl], [], [], START_TIMEOUT)[0]:
            raise OSError(f"the slot host did not start within {START_TIMEOUT:g}s")
        data = self.ctl.recv(1 << 16)
        if not data:
            raise OSError(f"the slot host exited at start: {self.describe_end()}")
        failed = json.loads(data).get("failed") or {}
        for module, error in failed.items():
            # Its jobs fail with the import error, as they would cold.
            log.warning("slot host could not preload %s: %s", module, error)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def describe_end(self) -> str:
        code = self.proc.poll()
        last = tail(self.log_path, 500).strip().splitlines()[-1:]
        state = "running" if code is None else f"exit status {code}"
        return state + (f": {last[0]}" if last else "")

    def stop(self) -> None:
        """End the host and everything in its sandbox; remove its cgroup."""
        try:
            self.ctl.close()  # the host exits when its control socket closes
        except OSError:
            pass
        try:
            self.proc.wait(STOP_WAIT)
        except subprocess.TimeoutExpired:
            pass
        try:
            os.killpg(self.proc.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
        if self.launch is not None and self.launch.cgroup is not None:
            self.launch.cgroup.kill()
        deadline = time.monotonic() + STOP_WAIT
        while self.proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.01)
        if self.launch is not None and self.launch.cgroup is not None:
            reaper.reap()
            self.launch.cgroup.remove()
        with reaper.tracking(self.proc.pid):
            pass
