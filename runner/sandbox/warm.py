"""Warm slots, worker side: a slot host per job slot and sandbox profile, forking every job.

Each slot keeps its sandbox built once (the exec chain of :class:`~runner.sandbox.chain.Jail`
around :mod:`runner.sandbox.host`) and hands it one job at a time over a ``SOCK_SEQPACKET``
socket: the job's stdout, stderr, spec and result descriptors travel with the request
(``SCM_RIGHTS``), so output still lands in files outside the job's reach.  Where the cgroup
layer is active, the slot's group (memory and process caps) holds the host and its one job,
and the OOM kills and process-cap hits it counts during a job are that job's.  With ``[sandbox]
job_cgroups = true`` each job gets a group of its own instead: the host's child announces
itself on a per-job socket, the worker reads its real pid from ``SCM_CREDENTIALS``, moves it
into the group, and only then lets it run (about 3-7 ms more per job on a v1 hierarchy).

Hosts are kept per slot in a small cache keyed by what the sandbox itself fixes (network,
binds, limits; argv or function) and rebuilt when one dies, after ``max_jobs_per_slot`` jobs,
or when a preloaded plugin module changes on disk.  Only where a job's kill domain is sound
(a PID namespace from bubblewrap, or a slot uid of its own) do slots run warm; otherwise jobs
take the cold path, an exec chain per job (:func:`runner.sandbox.run.run`).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import queue
import select
import shlex
import shutil
import signal
import socket
import struct
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from runner import workdir
from runner.jobs import JobType, SandboxProfile
from runner.sandbox import reaper
from runner.sandbox.cgroup import JobCgroup
from runner.sandbox.chain import PID_HEADROOM, Jail, sweep_uids
from runner.sandbox.hostproc import HostProcess, HostSpec
from runner.sandbox.run import Completed, ProgressWatch, tail

log = logging.getLogger(__name__)
DEFAULT_MAX_JOBS = 1000
CACHE_PER_SLOT = 3
SIGNATURE_EVERY = 2.0  # seconds between checks that preloaded plugin files are unchanged
KILL_WAIT = 5.0  # after SIGKILL, how long a host may take to report before it is rebuilt
_UCRED = struct.Struct("3i")


@dataclass(frozen=True)
class HostKey:
    """What a slot host's sandbox fixes: its kind and the profile without per-job limits."""

    kind: str  # "argv" or "function"
    profile: SandboxProfile

    @classmethod
    def of(cls, job: JobType) -> HostKey:
        kind = "function" if job.function is not None else "argv"
        return cls(kind, replace(job.sandbox, cpu_seconds=None, output_limit=0))


@contextlib.contextmanager
def _created(path: Path) -> Iterator[int]:
    """A descriptor of ``path``, created or truncated (the job's output file), closed after."""
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_CLOEXEC, 0o600)
    try:
        yield fd
    finally:
        os.close(fd)


class SlotHost:
    """One running slot host and the jobs it has run."""

    def __init__(self, process: HostProcess, job_cgroups: bool, uid: int | None) -> None:
        self.process = process
        self.cgroups = job_cgroups
        self.uid = uid
        self.jobs = 0
        self.broken = False
        group = process.launch.cgroup if process.launch is not None else None
        self.slot_group = None if job_cgroups else group
        self._counted = self.slot_group.counters() if self.slot_group is not None else {}

    def _slot_usage(self) -> dict[str, int]:
        """What the slot's own group counted during the last job (OOM kills, process-cap hits)."""
        if self.slot_group is None:
            return {}
        now = self.slot_group.counters()
        usage = {k: now[k] - self._counted.get(k, 0) for k in ("oom_kills", "pids_max_hits") if k in now}
        self._counted = now
        return {k: v for k, v in usage.items() if v > 0}

    def usable(self, max_jobs: int) -> bool:
        return not self.broken and self.process.alive() and self.jobs < max_jobs

    def run(
        self, kind: str, argv: Sequence[str], fds: Sequence[int], *, cwd: Path, env: Mapping[str, str],
        logs: Path, profile: SandboxProfile, limits: dict[str, int], timeout: float, grace: float,
        cancel: threading.Event | None, progress: Callable[[str], None] | None, slot: int,
        jail: Jail,
    ) -> Completed:
        """Run one job in this host and wait for it, at most ``timeout`` seconds."""
        self.jobs += 1
        if kind == "argv":
            log.debug("slot %d: the slot host forks and execs: %s", slot, shlex.join(argv))
        started = time.monotonic()
        out_path, err_path = logs / "stdout", logs / "stderr"
        cgroup = None
        if self.cgroups:
            processes = profile.processes + PID_HEADROOM if profile.processes else None
            cgroup = JobCgroup.create(jail.report.cgroups, slot, profile.memory, processes)
        link = None
        try:
            with _created(out_path) as out, _created(err_path) as err:
                sent = [out, err, *fds]
                request = {"op": "run", "kind": kind, "argv": list(argv), "cwd": str(cwd),
                           "env": dict(env), "limits": limits, "handshake": cgroup is not None}
                if cgroup is not None:
                    link, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
                    link.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
                    sent.append(theirs.fileno())
                try:
                    socket.send_fds(self.process.ctl, [json.dumps(request).encode()], sent)
                finally:
                    if cgroup is not None:
                        theirs.close()
            if link is not None and cgroup is not None:
                self._place(link, cgroup, started + timeout)
            watch = ProgressWatch(out_path, progress) if progress is not None else None
            status, timed_out, cancelled = self._wait(started + timeout, grace, cancel, watch, cgroup)
        except OSError as exc:
            log.warning("slot %d: the slot host failed (%s)", slot, exc)
            self.broken = True
            status, timed_out, cancelled = None, False, False
        finally:
            if link is not None:
                link.close()
        usage = self._slot_usage()
        if cgroup is not None:
            cgroup.kill()
            usage = cgroup.stats()
            cgroup.remove()
        stderr = tail(err_path, profile.output_limit)
        if status is None:
            stderr += "\nrunner: the slot host died during the job; the slot is rebuilt"
            log.warning("slot %d: the slot host died during a job (%s); it is rebuilt for the next",
                        slot, self.process.describe_end())
            self.close()  # at once: nothing the job started outlives it
        code = status if status is not None else -signal.SIGKILL
        return Completed(
            exit_code=code if code >= 0 else None, signal=-code if code < 0 else None,
            timed_out=timed_out, cancelled=cancelled, stdout=tail(out_path, profile.output_limit),
            stderr=stderr, duration=time.monotonic() - started, usage=usage, direct_status=True,
        )

    def _place(self, link: socket.socket, cgroup: JobCgroup, deadline: float) -> None:
        """Move the job's process into its cgroup before it runs anything of its own."""
        if not select.select([link], [], [], max(0.0, deadline - time.monotonic()))[0]:
            raise OSError("the job process did not announce itself")
        data, ancdata, _flags, _addr = link.recvmsg(16, socket.CMSG_SPACE(_UCRED.size))
        pid = next((_UCRED.unpack(bytes(payload[: _UCRED.size]))[0] for level, kind, payload in ancdata
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS), None)
        if data != b"ready" or not pid:
            raise OSError("the job process did not announce itself")
        cgroup.attach(pid)
        link.send(b"go")

    def _wait(
        self, deadline: float, grace: float, cancel: threading.Event | None,
        watch: ProgressWatch | None, cgroup: JobCgroup | None,
    ) -> tuple[int | None, bool, bool]:
        """The job's exit status (None: the host died), timed out, cancelled."""
        ctl = self.process.ctl
        timed_out = cancelled = False
        kill_at: float | None = None
        stop_at: float | None = None
        while True:
            now = time.monotonic()
            if stop_at is None and (now >= deadline or (cancel is not None and cancel.is_set())):
                timed_out, cancelled = now >= deadline, not now >= deadline
                self._signal(signal.SIGTERM, cgroup)
                kill_at, stop_at = now + grace, now + grace + KILL_WAIT
            if kill_at is not None and now >= kill_at:
                self._signal(signal.SIGKILL, cgroup)
                kill_at = None
            if stop_at is not None and now >= stop_at:
                self.broken = True  # the host does not answer: rebuilt before the next job
                return None, timed_out, cancelled
            limit = min(x for x in (deadline, kill_at, stop_at) if x is not None) if stop_at else deadline
            step = max(0.0, limit - now)
            if cancel is not None or watch is not None:
                step = min(step, 0.25)
            if select.select([ctl], [], [], step)[0]:
                data = ctl.recv(4096)
                if not data:
                    self.broken = True
                    return None, timed_out, cancelled
                message = json.loads(data)
                if message.get("op") == "done":
                    return int(message["status"]), timed_out, cancelled
            if watch is not None:
                watch.check()

    def _signal(self, sig: int, cgroup: JobCgroup | None) -> None:
        try:
            self.process.ctl.send(json.dumps({"op": "signal", "sig": int(sig)}).encode())
        except OSError:
            pass
        if sig == signal.SIGKILL and cgroup is not None:
            cgroup.kill()

    def close(self) -> None:
        self.process.stop()
        if self.uid is not None and not self.process.namespaced:
            sweep_uids([self.uid])  # a slot uid's leftovers, if the host could not sweep them


class WarmSlots:
    """The slot hosts of one worker: per slot, a small cache keyed by :class:`HostKey`."""

    def __init__(
        self, jail: Jail, jobs: Mapping[str, JobType], workroot: Path, slots: int,
        max_jobs: int = DEFAULT_MAX_JOBS, job_cgroups: bool = False,
    ) -> None:
        self.jail = jail
        self.job_cgroups = job_cgroups and "cgroup" in jail.layers
        self.workroot = workroot
        self.max_jobs = max_jobs
        self._hosts: list[OrderedDict[HostKey, SlotHost]] = [OrderedDict() for _ in range(slots)]
        self._signature_at = [0.0] * slots
        self._modules: dict[HostKey, set[str]] = {}
        for job in jobs.values():
            if job.function is not None:
                self._modules.setdefault(HostKey.of(job), set()).add(job.function.partition(":")[0])
        self._lock = threading.Lock()
        self._shared: set[int] = set()  # slots whose jobs dir propagates mounts to the host
        self._log_quota: dict[int, int] = {}  # slot -> size of the quota tmpfs on its log dir
        self._dirs = [(workroot / f"slot-{n}", workroot / f"log-{n}") for n in range(slots)]
        self._keys: dict[str, tuple[JobType, HostKey]] = {}  # job type -> its host key
        self._trash = workroot / "trash"
        self._trash_made = False
        self._doomed: queue.SimpleQueue[Path | None] = queue.SimpleQueue()
        self._janitor = threading.Thread(target=self._sweep_trash, name="janitor", daemon=True)
        self._janitor.start()

    def discard(self, base: Path) -> None:
        """Take a finished job's directory out of the slot at once; remove it off the job path.

        One rename instead of a dozen directory removals before the outcome goes out: on a disk
        that RabbitMQ keeps busy with fsyncs, each removal can cost a millisecond.  Where the
        slot's jobs dir is a mount of its own (shared for quota mounts) the rename cannot leave
        it; the job's tree was then a quota tmpfs, unmounted already, and two ``rmdir`` remove
        what is left.  Its quota mounts are unmounted before: nothing is mounted under it.
        """
        if not self._trash_made:
            self._trash.mkdir(mode=0o700, exist_ok=True)
            self._trash_made = True
        path = str(base)
        try:
            gone = f"{self._trash}/{base.name}"
            os.rename(path, gone)
        except OSError:
            try:
                os.rmdir(f"{path}/job")
                os.rmdir(path)
            except OSError:
                workdir.remove(base, [])
            return
        self._doomed.put(Path(gone))

    def _sweep_trash(self) -> None:
        while (path := self._doomed.get()) is not None:
            # No recursion limit: a job may leave a very deep tree.  Nothing is mounted there
            # (:meth:`discard`), so the mount table is not read.
            workdir.remove(path, [])

    @staticmethod
    def supported(jail: Jail | None) -> str | None:
        """Why jobs cannot run warm under ``jail`` (None: they can)."""
        if jail is None:
            return "no sandbox"
        if "bwrap" not in jail.layers and "uid" not in jail.layers:
            return "no PID namespace (bwrap) and no slot uid: a job's leftovers could not be told apart"
        return None

    def domain(self, slot: int) -> str:
        """The kill domain a slot's host sweeps: its PID namespace, else its slot uid."""
        if "bwrap" in self.jail.layers:
            return "pidns"
        uid = self.jail.uid_for(slot)
        if not uid:
            raise AssertionError("warm slots without a PID namespace need a slot uid")
        return f"uid:{uid}"

    def quota_logs(self, slot: int, size: int) -> None:
        """Mount a quota tmpfs of ``size`` on the slot's log dir, once (again if the size changes).

        Only the worker reaches that dir (the job holds descriptors to its own output files);
        each job's output files are truncated when they are opened for it, so the space the
        last job used is free again: no mount and unmount per job.
        """
        if self._log_quota.get(slot) == size:
            return
        path = self.logs_dir(slot)
        if self._log_quota.pop(slot, None) is not None:
            workdir.unmount([path])
        path.mkdir(mode=0o700, parents=True, exist_ok=True)
        if workdir.mount_quota(path, size):
            self._log_quota[slot] = size

    def jobs_dir(self, slot: int) -> Path:
        return self._dirs[slot][0]

    def logs_dir(self, slot: int) -> Path:
        return self._dirs[slot][1]

    def host_for(self, slot: int, job: JobType) -> SlotHost | None:
        """The warm host that runs ``job`` in ``slot``, started or rebuilt as needed."""
        known = self._keys.get(job.name)
        if known is None or known[0] is not job:  # one key per job type, not one per job
            known = self._keys[job.name] = (job, HostKey.of(job))
        key = known[1]
        cache = self._hosts[slot]
        host = cache.get(key)
        if host is not None and not self._fresh(slot, key, host):
            self._drop(slot, key)
            host = None
        if host is None:
            for directory in (self.jobs_dir(slot), self.logs_dir(slot)):
                directory.mkdir(mode=0o711 if directory.name.startswith("slot") else 0o700,
                                parents=True, exist_ok=True)
            if self.jail.quota and slot not in self._shared:
                # A job's quota tmpfs is mounted under the jobs dir after the host has bound it.
                if workdir.share(self.jobs_dir(slot)):
                    self._shared.add(slot)
            spec = HostSpec.build(key.kind, sorted(self._modules.get(key, ())), "bwrap" in self.jail.layers,
                                  self.domain(slot))
            try:
                process = HostProcess.start(spec, self.jail, key.profile, slot, self.jobs_dir(slot),
                                            self.logs_dir(slot) / "host.log")
            except OSError as exc:
                log.warning("slot %d: no warm host (%s): the job runs cold", slot, exc)
                return None
            host = SlotHost(process, self.job_cgroups, self.jail.uid_for(slot))
            with self._lock:
                cache[key] = host
                while len(cache) > CACHE_PER_SLOT:
                    _old_key, old = cache.popitem(last=False)
                    old.close()
        cache.move_to_end(key)
        return host

    def _fresh(self, slot: int, key: HostKey, host: SlotHost) -> bool:
        if host.broken or not host.process.alive():
            log.warning("slot %d: the %s slot host is gone (%s); rebuilding it",
                        slot, key.kind, host.process.describe_end())
            return False
        if host.jobs >= self.max_jobs:
            log.info("slot %d: the %s slot host ran %d jobs (max_jobs_per_slot); rebuilding it",
                     slot, key.kind, host.jobs)
            return False
        now = time.monotonic()
        if host.process.spec.modules and now - self._signature_at[slot] > SIGNATURE_EVERY:
            self._signature_at[slot] = now
            if host.process.spec.signature() != host.process.signature:
                log.info("slot %d: plugin modules changed on disk; rebuilding the slot host", slot)
                return False
        return True

    def _drop(self, slot: int, key: HostKey) -> None:
        with self._lock:
            host = self._hosts[slot].pop(key, None)
        if host is not None:
            host.close()

    def clean(self, slot: int) -> None:
        """Remove anything a job left in its slot's jobs directory (the work root it sees)."""
        try:
            entries = list(os.scandir(self.jobs_dir(slot)))
        except OSError:
            return
        for entry in entries:
            log.warning("slot %d: a job left %s in the work root; removed", slot, entry.name)
            if entry.is_dir(follow_symlinks=False):
                workdir.remove(Path(entry.path))
            else:
                try:
                    os.unlink(entry.path)
                except OSError:
                    pass

    def close(self) -> None:
        with self._lock:
            hosts = [h for cache in self._hosts for h in cache.values()]
            for cache in self._hosts:
                cache.clear()
        for host in hosts:
            host.close()
        reaper.reap()
        self._doomed.put(None)
        self._janitor.join(30)
        workdir.remove(self._trash)
