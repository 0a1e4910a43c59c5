"""The sandbox of one worker: the layers this host allows, composed into each job's exec chain.

The chain is built from small programs, so no Python runs between fork and exec in the
(multithreaded) worker, and the exact argv can be logged (``--debug``) and replayed::

    [sh: join cgroups] -> prlimit -> bwrap (namespaces, binds, seccomp) -> setpriv (slot uid) -> job
    [sh: join cgroups] -> prlimit -> [unshare --net] -> setpriv (slot uid, pdeathsig) -> job   # no bwrap

When the worker runs as root each job slot gets its own unprivileged uid (``uid_base`` + n),
claimed with a lock file so that several workers on one box never share one.
"""

from __future__ import annotations

import fcntl
import logging
import os
import shlex
import signal
import sys
import tempfile
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from runner import workdir
from runner.sandbox import bwrap, seccomp
from runner.sandbox.cgroup import JobCgroup
from runner.errors import ConfigError, RunnerError
from runner.jobs import SandboxProfile
from runner.sandbox.probe import HostReport, check_required, summary
from runner.sandbox.run import ALIVE_CHECK

log = logging.getLogger(__name__)
DEFAULT_UID_BASE = 61000
DEFAULT_UID_COUNT = 4000
PID_HEADROOM = 4  # bwrap, its PID-1 helper, setpriv and the cgroup shim count as tasks too


@dataclass
class Launch:
    """One job's prepared exec chain and what must be cleaned up after it."""

    argv: list[str]
    pass_fds: list[int] = field(default_factory=list)
    uid: int | None = None
    cgroup: JobCgroup | None = None

    def close(self) -> None:
        """Close the descriptors that only the spawn needed."""
        for fd in self.pass_fds:
            try:
                os.close(fd)
            except OSError:
                pass
        self.pass_fds.clear()


class UidLease:
    """Slot uids held by this worker through lock files (``flock``) until released."""

    def __init__(self, uids: list[int], fds: list[int]) -> None:
        self.uids = uids
        self._fds = fds

    def release(self) -> None:
        for fd in self._fds:
            os.close(fd)
        self._fds.clear()


def claim_uids(count: int, base: int, span: int, lock_dir: Path | None = None) -> UidLease:
    """Claim ``count`` free uids from ``base`` .. ``base + span``; kill leftovers of each."""
    lock_dir = lock_dir or Path(tempfile.gettempdir()) / "runner-uids"
    lock_dir.mkdir(mode=0o700, exist_ok=True)
    uids: list[int] = []
    fds: list[int] = []
    for uid in range(base, base + span):
        fd = os.open(lock_dir / str(uid), os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue
        uids.append(uid)
        fds.append(fd)
        if len(uids) == count:
            break
    else:
        for fd in fds:
            os.close(fd)
        raise RunnerError(f"no {count} free slot uids in {base}..{base + span - 1} ([sandbox] uid_base)")
    sweep_uids(uids)
    return UidLease(uids, fds)


def sweep_uids(uids: Iterable[int]) -> int:
    """SIGKILL every process whose real uid is one of ``uids`` (leftovers of a crashed worker)."""
    wanted = {str(u) for u in uids}
    killed = 0
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit():
            continue
        try:
            with open(f"/proc/{entry.name}/status") as fh:
                uid_line = next((ln for ln in fh if ln.startswith("Uid:")), "")
            if uid_line.split()[1:2] and uid_line.split()[1] in wanted:
                os.kill(int(entry.name), signal.SIGKILL)
                killed += 1
        except (OSError, IndexError):
            continue
    return killed


class Jail:
    """Builds exec chains from a probe report and the ``[sandbox]`` settings.

    Args:
        report: what the host allows (:func:`runner.sandbox.probe.probe`).
        config: the ``[sandbox]`` table: ``require``, ``disable``, ``uid_base``, ``uid_count``,
            ``read_only`` (extra host paths jobs may read).
        slots: job slots of the worker (one uid each when the worker is root).
    """

    def __init__(
        self, report: HostReport, config: Mapping[str, Any], slots: int,
        workroot: Path | None = None,
    ) -> None:
        self.report = report
        unknown = sorted(set(config) - {"require", "disable", "uid_base", "uid_count", "read_only",
                                        "warm", "max_jobs_per_slot", "job_cgroups"})
        if unknown:
            raise ConfigError(f"[sandbox]: unknown setting {unknown[0]!r}")
        disabled = set(_names(config.get("disable", ()), "disable"))
        check_required(report, sorted(disabled))  # validates the names
        self.layers = {n for n, layer in report.layers.items() if layer.active} - disabled
        self.notes: dict[str, str] = {}
        if "uid" in self.layers and "bwrap" not in self.layers:
            # Without bwrap's binds a slot uid must reach the interpreter and the work dir itself.
            paths = [sys.prefix, sys.base_prefix, str(Path(__file__).resolve().parent.parent)]
            blocked = next((b for p in [*paths, str(workroot or "")] if p and (b := _closed(p))), None)
            if blocked:
                self.layers.discard("uid")
                self.notes["uid"] = f"{blocked} is closed to other uids (no bwrap to bind around it)"
        if "network" in self.layers and "bwrap" not in self.layers and not report.unshare_net:
            self.layers.discard("network")
        if "bwrap" in self.layers and "landlock" in self.layers:
            self.layers.discard("landlock")
            self.notes["landlock"] = "not needed: bwrap confines the file system"
        required = _names(config.get("require", ()), "require")
        missing = check_required(report, required) + [n for n in required if n not in self.layers]
        if missing:
            reasons = "; ".join(
                f"{n}: {self.notes.get(n) or ('disabled' if n in disabled else report.layers[n].detail)}"
                for n in dict.fromkeys(missing)
            )
            raise ConfigError(f"[sandbox] require names layers that are not active here: {reasons}")
        self.read_only = [str(p) for p in config.get("read_only", ())]
        # A per-job disk quota needs the right to mount (root); tried once, here.
        self.quota = bool(report.root and workroot is not None and workdir.can_mount_quota(workroot))
        self.lease: UidLease | None = None
        if "uid" in self.layers:
            self.lease = claim_uids(
                slots, int(config.get("uid_base", DEFAULT_UID_BASE)),
                int(config.get("uid_count", DEFAULT_UID_COUNT)),
            )

    def describe(self) -> str:
        active = [n for n in self.report.layers if n in self.layers]
        off = [n for n in self.report.layers if n not in self.layers]
        text = f"sandbox layers active: {', '.join(active)}; not active: {', '.join(off) or 'none'}"
        text += "".join(f" ({name}: {note})" for name, note in self.notes.items())
        text += "; disk quota: " + ("a tmpfs per job" if self.quota else "none (needs root to mount)")
        return text if active else summary(self.report)

    def close(self) -> None:
        if self.lease is not None:
            self.lease.release()
            self.lease = None

    def uid_for(self, slot: int) -> int | None:
        return self.lease.uids[slot] if self.lease is not None else None

    def prepare(
        self, profile: SandboxProfile, argv: Sequence[str], workdir: Path, slot: int,
        read_only: Sequence[str] = (),
    ) -> Launch:
        """The full exec chain for one job; :meth:`Launch.close` after spawning it."""
        tools = self.report.tools
        launch = Launch(argv=[], uid=self.uid_for(slot))
        chain: list[str] = []
        try:
            if "cgroup" in self.layers:
                processes = profile.processes + PID_HEADROOM if profile.processes else None
                launch.cgroup = JobCgroup.create(self.report.cgroups, slot, profile.memory, processes)
                chain += launch.cgroup.join_argv()
            if "rlimits" in self.layers:
                chain += [tools["prlimit"], *self._limits(profile, launch), "--"]
            drop = _setpriv_drop(tools.get("setpriv"), launch.uid)
            if "bwrap" in self.layers:
                seccomp_fd = None
                if "seccomp" in self.layers:
                    seccomp_fd = seccomp.filter_fd(profile.network)
                    launch.pass_fds.append(seccomp_fd)
                root = self.report.bwrap_mode == "root"
                if not root and "setpriv" in tools:
                    chain += [tools["setpriv"], "--no-new-privs", "--pdeathsig", "KILL", "--"]
                share_net = profile.network or "network" not in self.layers
                chain += bwrap.command(
                    tools["bwrap"], mode=self.report.bwrap_mode,
                    disable_userns=self.report.bwrap_disable_userns, network=share_net,
                    workdir=workdir, read_only=bwrap.collapse([*self.read_only, *read_only]),
                    binds=profile.binds,
                    seccomp_fd=seccomp_fd, tmp_size=profile.file_size,
                    inner=drop if root else (),
                )
            else:
                isolate = not profile.network and "network" in self.layers
                if isolate and self.report.root:
                    chain += [*self.report.unshare_net, "--"]
                if "setpriv" in tools:
                    base = drop[:-1] if drop else [tools["setpriv"], "--no-new-privs"]
                    if not drop and self.report.root:
                        # No slot uid: the job keeps uid 0, but with an empty bounding set
                        # its next exec gets no capability at all.
                        base += ["--inh-caps=-all", "--ambient-caps=-all", "--bounding-set=-all"]
                    chain += [*base, "--pdeathsig", "KILL", "--"]
                if isolate and not self.report.root:
                    chain += [*self.report.unshare_net, "--"]
                if "landlock" in self.layers:
                    chain += landlock_chain(
                        workdir, [*self.read_only, *read_only, *profile_sources(profile)],
                        no_tcp=not profile.network,
                    )
        except BaseException:
            launch.close()
            if launch.cgroup is not None:
                launch.cgroup.remove()
            raise
        launch.argv = [*chain, *ALIVE_CHECK, *argv]  # last: the worker still lives
        log.debug("exec %s", shlex.join(launch.argv))
        return launch

    def _limits(self, profile: SandboxProfile, launch: Launch) -> list[str]:
        limits = ["--core=0"]
        values: list[tuple[str, int | None]] = [
            ("cpu", profile.cpu_seconds), ("fsize", profile.file_size), ("nofile", profile.open_files),
        ]
        if launch.uid is not None:  # RLIMIT_NPROC counts every process of the real uid
            values.append(("nproc", profile.processes))
        if launch.cgroup is None:  # a cgroup limit is exact; RLIMIT_AS breaks big mappings
            values.append(("as", profile.memory))
        limits += [f"--{flag}={value}" for flag, value in values if value is not None]
        return limits


def _closed(path: str) -> str | None:
    """The first directory on the way to ``path`` that other uids cannot traverse."""
    current = Path(path).resolve()
    for directory in [*reversed(current.parents), current]:
        try:
            if directory.is_dir() and not directory.stat().st_mode & 0o001:
                return str(directory)
        except OSError:
            return str(directory)
    return None


def _setpriv_drop(setpriv: str | None, uid: int | None) -> list[str]:
    if setpriv is None or uid is None:
        return []
    return [setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all",
            "--bounding-set=-all", "--no-new-privs", "--"]


def _names(value: Any, where: str) -> list[str]:
    if isinstance(value, str):
        value = [value]
    if not isinstance(value, (list, tuple)) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"[sandbox] {where}: expected a list of layer names")
    return list(value)


LANDLOCK_SHIM = str(Path(__file__).resolve().parent / "landlock.py")
# System paths a job may read and execute under Landlock (the same view bwrap gives).
LANDLOCK_READ = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32",
                 "/dev/urandom", "/dev/random", "/dev/zero", "/proc/self", "/proc/cpuinfo",
                 "/proc/meminfo")


def landlock_chain(workdir: Path, read_only: Sequence[str], no_tcp: bool) -> list[str]:
    """The Landlock shim: only the work dir writable, the system and ``read_only`` readable.

    The shim is a stdlib-only script run by the system interpreter when there is one (a slot
    uid may not reach a Python under ``/root``).
    """
    python = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable
    etc = [f"/etc/{name}" for name in bwrap.ETC_FILES]
    if not no_tcp:
        etc += [f"/etc/{name}" for name in bwrap.NETWORK_ETC_FILES]
    chain = [python, "-I", "-S", LANDLOCK_SHIM, "--rw", str(workdir), "--rw", "/dev/null"]
    for path in (*LANDLOCK_READ, *etc, *read_only):
        chain += ["--ro", str(path)]
    # The child interpreter finds runner by listing the package's parent (a source checkout's
    # root; site-packages when installed): entries only, never a file's contents.
    chain += ["--list", str(Path(__file__).resolve().parent.parent)]
    return [*chain, *(["--no-tcp"] if no_tcp else []), "--"]


def profile_sources(profile: SandboxProfile) -> list[str]:
    """Read-only sources a job type's profile asks for (its ``binds``)."""
    return [source for source, _dest in getattr(profile, "binds", ())]
