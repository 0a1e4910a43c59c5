"""Per-job control groups: a memory and process cap, and a handle that kills the whole job.

Works with cgroup v2 (``memory.max``, ``pids.max``, ``cgroup.kill``), with v1 controllers
(``memory.limit_in_bytes``, ``pids.max``, the freezer) and with hybrid hosts, where v1 holds the
controllers and the controller-less v2 tree still offers ``cgroup.kill``.  Every job gets a group
``runner/w<worker pid>-s<slot>-<random>`` in each hierarchy; the job joins it through a tiny
``sh`` shim before anything else runs (Python 3.11 cannot spawn straight into a cgroup).
"""

from __future__ import annotations

import logging
import os
import signal
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path

log = logging.getLogger(__name__)
PARENT = "runner"
# Joins every cgroup.procs file named before "--", then executes the rest.
JOIN_SCRIPT = 'while [ "$1" != -- ]; do echo $$ > "$1" || exit 125; shift; done; shift; exec "$@"'


@dataclass(frozen=True)
class CgroupHost:
    """Where this host lets runner create job groups (``None``: not available)."""

    memory: Path | None = None
    pids: Path | None = None
    kill: Path | None = None  # v2 tree with cgroup.kill
    freezer: Path | None = None  # v1 freezer
    memory_v2: bool = False
    swap_file: str | None = None  # v1 memory.memsw.limit_in_bytes or v2 memory.swap.max

    @property
    def limits(self) -> bool:
        return self.memory is not None and self.pids is not None

    def roots(self) -> list[Path]:
        return list(dict.fromkeys(p for p in (self.memory, self.pids, self.kill, self.freezer) if p))


def _mounts() -> list[tuple[str, str, set[str]]]:
    out = []
    try:
        with open("/proc/self/mounts") as fh:
            for line in fh:
                parts = line.split()
                if len(parts) >= 4 and parts[2] in ("cgroup", "cgroup2"):
                    out.append((parts[2], parts[1], set(parts[3].split(","))))
    except OSError:
        pass
    return out


def _prepare(root: Path, controllers: str = "") -> Path | None:
    """Create and test ``root/runner``; ``None`` when the host does not let us."""
    parent = root / PARENT
    try:
        parent.mkdir(exist_ok=True)
        if controllers:  # v2: hand the controllers down to our groups
            for where in (root, parent):
                (where / "cgroup.subtree_control").write_text(controllers)
        probe = parent / f"probe-{os.getpid()}-{uuid.uuid4().hex[:6]}"
        probe.mkdir()
        probe.rmdir()
    except OSError as exc:
        log.debug("cgroup %s not usable: %s", parent, exc)
        return None
    return parent


def _killable(parent: Path) -> Path | None:
    return parent if (parent / "cgroup.kill").exists() else None


def detect() -> tuple[CgroupHost, str]:
    """Find usable hierarchies; return them and a one-line description."""
    v1: dict[str, Path] = {}
    v2: Path | None = None
    for kind, path, opts in _mounts():
        if kind == "cgroup2":
            v2 = Path(path)
        else:
            for ctl in ("memory", "pids", "freezer"):
                if ctl in opts:
                    v1[ctl] = Path(path)
    host = CgroupHost()
    parts = []
    if v2 is not None:
        listed = v2 / "cgroup.controllers"
        available = set(listed.read_text().split()) if listed.exists() else set()
        if {"memory", "pids"} <= available:
            parent = _prepare(v2, "+memory +pids")
            if parent:
                host = CgroupHost(memory=parent, pids=parent, kill=_killable(parent),
                                  memory_v2=True, swap_file="memory.swap.max")
                parts.append(f"v2 memory+pids at {parent}")
        else:
            parent = _prepare(v2)
            if parent and _killable(parent):
                host = CgroupHost(kill=parent)
                parts.append(f"v2 cgroup.kill at {parent}")
    if not host.limits and "memory" in v1 and "pids" in v1:
        memory, pids = _prepare(v1["memory"]), _prepare(v1["pids"])
        freezer = _prepare(v1["freezer"]) if "freezer" in v1 else None
        if memory and pids:
            swap = "memory.memsw.limit_in_bytes" if (v1["memory"] / "memory.memsw.limit_in_bytes").exists() else None
            host = CgroupHost(memory=memory, pids=pids, kill=host.kill, freezer=freezer, swap_file=swap)
            parts.insert(0, f"v1 memory+pids{'+freezer' if freezer else ''}")
    if not host.roots():
        return host, "no writable cgroup hierarchy (run as root, or delegate a subtree)"
    return host, "; ".join(parts)


@dataclass
class JobCgroup:
    """The groups of one job; create with :meth:`create`, always :meth:`remove` after."""

    host: CgroupHost
    name: str
    dirs: list[Path] = field(default_factory=list)
    # (counter, file, key in it): read after every warm job, so built once, as plain strings.
    _counter_files: list[tuple[str, str, str]] | None = field(default=None, repr=False, compare=False)

    @classmethod
    def create(cls, host: CgroupHost, slot: int, memory: int | None, processes: int | None) -> JobCgroup:
        group = cls(host, f"w{os.getpid()}-s{slot}-{uuid.uuid4().hex[:8]}")
        try:
            for root in host.roots():
                path = root / group.name
                path.mkdir()
                group.dirs.append(path)
            if memory is not None and host.memory is not None:
                mem = host.memory / group.name
                if host.memory_v2:
                    (mem / "memory.max").write_text(str(memory))
                    if host.swap_file:
                        _try_write(mem / host.swap_file, "0")
                else:
                    (mem / "memory.limit_in_bytes").write_text(str(memory))
                    if host.swap_file:
                        _try_write(mem / host.swap_file, str(memory))
            if processes is not None and host.pids is not None:
                (host.pids / group.name / "pids.max").write_text(str(processes))
        except OSError:
            group.remove()
            raise
        return group

    def join_argv(self) -> list[str]:
        """``sh -c JOIN_SCRIPT`` arguments that move the job into every group, then exec."""
        procs = [str(d / "cgroup.procs") for d in self.dirs]
        return ["/bin/sh", "-c", JOIN_SCRIPT, "runner-cgroup", *procs, "--"]

    def attach(self, pid: int) -> None:
        """Move process ``pid`` (and its threads) into every group of the job."""
        for d in self.dirs:
            (d / "cgroup.procs").write_text(str(pid))

    def pids(self) -> set[int]:
        found: set[int] = set()
        for d in self.dirs:
            try:
                found.update(int(p) for p in (d / "cgroup.procs").read_text().split())
            except (OSError, ValueError):
                pass
        return found

    def signal(self, sig: int, uid: int) -> None:
        """Send ``sig`` to the job's processes that run as ``uid`` (not bwrap's own)."""
        for pid in self.pids():
            try:
                if os.stat(f"/proc/{pid}").st_uid == uid:
                    os.kill(pid, sig)
            except (OSError, ProcessLookupError):
                pass

    def kill(self) -> None:
        """SIGKILL every process of the job, daemons and re-parented orphans included."""
        if self.host.kill is not None and _try_write(self.host.kill / self.name / "cgroup.kill", "1"):
            return
        frozen = self.host.freezer is not None and _try_write(
            self.host.freezer / self.name / "freezer.state", "FROZEN"
        )
        for _ in range(50):  # without a freezer, forks may race the sweep: repeat until empty
            pids = self.pids()
            if not pids:
                break
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except (ProcessLookupError, PermissionError):
                    pass
            if frozen:
                break
        if frozen:
            _try_write(self.host.freezer / self.name / "freezer.state", "THAWED")  # type: ignore[operator]

    def counters(self) -> dict[str, int]:
        """``oom_kills`` and ``pids_max_hits`` so far: :meth:`stats` without the memory peak."""
        if self._counter_files is None:
            files = []
            if self.host.memory is not None:
                name = "memory.events" if self.host.memory_v2 else "memory.oom_control"
                files.append(("oom_kills", str(self.host.memory / self.name / name), "oom_kill"))
            if self.host.pids is not None:
                files.append(("pids_max_hits", str(self.host.pids / self.name / "pids.events"), "max"))
            self._counter_files = files
        out = {}
        for counter, path, key in self._counter_files:
            value = _read_key(path, key)
            if value is not None:
                out[counter] = value
        return out

    def stats(self, peak: bool = True) -> dict[str, int]:
        """``oom_kills``, ``pids_max_hits`` and ``memory_peak`` (bytes), where the host tells."""
        out: dict[str, int] = {}
        if self.host.memory is not None:
            mem = self.host.memory / self.name
            events = _read_kv(mem / ("memory.events" if self.host.memory_v2 else "memory.oom_control"))
            if "oom_kill" in events:
                out["oom_kills"] = events["oom_kill"]
            top = _read_int(mem / ("memory.peak" if self.host.memory_v2 else "memory.max_usage_in_bytes")) if peak else None
            if top is not None:
                out["memory_peak"] = top
        if self.host.pids is not None:
            events = _read_kv(self.host.pids / self.name / "pids.events")
            if "max" in events:
                out["pids_max_hits"] = events["max"]
        return out

    def remove(self, wait: float = 2.0) -> None:
        """Kill what is left and remove the groups (waits briefly for the tasks to exit)."""
        deadline = time.monotonic() + wait
        while self.pids() and time.monotonic() < deadline:
            self.kill()
            time.sleep(0.001)
        for d in reversed(self.dirs):
            try:
                d.rmdir()
            except OSError as exc:
                log.warning("cgroup %s not removed: %s", d, exc)
        self.dirs.clear()


def remove_stale(host: CgroupHost) -> int:
    """Kill and remove job groups left by workers that no longer run; return how many."""
    removed = 0
    for root in host.roots():
        for child in root.iterdir() if root.exists() else ():
            if not child.is_dir() or not child.name.startswith("w"):
                continue
            pid = child.name[1:].split("-", 1)[0]
            if pid.isdigit() and not _alive(int(pid)):
                group = JobCgroup(host, child.name, [child])
                group.remove(wait=1.0)
                removed += 1
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def _try_write(path: Path, value: str) -> bool:
    try:
        path.write_text(value)
        return True
    except OSError:
        return False


def _read_int(path: Path) -> int | None:
    try:
        return int(path.read_text().split()[0])
    except (OSError, ValueError, IndexError):
        return None


def _read_key(path: str, key: str) -> int | None:
    """The value of ``key`` in a flat-keyed cgroup file (``key value`` lines), or None."""
    try:
        fd = os.open(path, os.O_RDONLY)
        try:
            data = os.read(fd, 4096)
        finally:
            os.close(fd)
    except OSError:
        return None
    for line in data.split(b"\n"):
        name, _, value = line.partition(b" ")
        if name == key.encode() and value.strip().isdigit():
            return int(value)
    return None


def _read_kv(path: Path) -> dict[str, int]:
    out = {}
    try:
        for line in path.read_text().splitlines():
            key, _, value = line.partition(" ")
            if value.strip().isdigit():
                out[key] = int(value)
    except OSError:
        pass
    return out
