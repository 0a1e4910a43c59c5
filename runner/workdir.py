"""Job work directories on the host: a disk quota per job, removal that cannot be defeated,
and the sweep of what a killed worker left behind.

* **Quota.**  A worker running as root mounts a size-limited tmpfs (``nosuid,nodev``, capped
  inodes) on each attempt's work dir before the job starts, and another on the directory of
  its captured stdout, stderr and result file, each of ``SandboxProfile.disk`` bytes (apart, so
  that a job that filled its work dir can still report).  The pages are charged to the job's
  memory cgroup too.  ``runner worker`` mounts them in a mount namespace of its own
  (:func:`private_mounts`), so they vanish with the worker however it ends.
  Without the right to mount (an unprivileged worker) there is no per-job quota: only the
  per-file ``file_size`` rlimit bounds what a job writes (docs/security.md says so).
* **Removal.**  A tmpfs is detached in one call, whatever the job built in it.  A plain
  directory is removed with :func:`shutil.rmtree` (descriptor-based, never follows a symlink);
  when that fails (a tree deeper than Python's recursion limit, a directory the job made
  unreadable), ``chmod -R u+rwx`` and ``rm -rf --one-file-system`` finish the job: both walk
  iteratively with fts, never follow symlinks and are not limited by depth.
* **Sweep.**  Each worker holds an ``flock`` on ``<its work root>.lock`` while it runs.  At
  start-up :func:`sweep` removes every sibling work root whose lock nobody holds: its worker
  is gone, and so are its jobs (killed with it through the parent-death signal).  Quota
  mounts under it are detached first (found in ``/proc/self/mountinfo``).
"""

from __future__ import annotations

import ctypes
import functools
import fcntl
import logging
import os
import shutil
import subprocess
from pathlib import Path

log = logging.getLogger(__name__)
LOCK_SUFFIX = ".lock"
MAX_INODES = 262144  # files and directories one job may create in its quota
MS_NOSUID, MS_NODEV, MS_BIND, MS_REC, MS_PRIVATE, MS_SHARED = 2, 4, 1 << 12, 1 << 14, 1 << 18, 1 << 20
MNT_DETACH = 2
CLONE_NEWNS = 0x00020000


def claim(workroot: Path) -> int:
    """Create ``workroot`` and hold its lock (``<workroot>.lock`` beside it) while the returned
    descriptor is open."""
    workroot.mkdir(parents=True, exist_ok=True)
    lock = workroot.parent / (workroot.name + LOCK_SUFFIX)
    fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC | os.O_NOFOLLOW, 0o600)
    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # a fresh name per worker: never contended
    return fd


def release(workroot: Path, fd: int) -> None:
    """Remove ``workroot`` and its lock; the end of :func:`claim`."""
    remove(workroot)
    os.unlink(workroot.parent / (workroot.name + LOCK_SUFFIX))
    os.close(fd)


def sweep(parent: Path) -> int:
    """Remove the work roots under ``parent`` whose worker is gone; return how many."""
    swept = 0
    try:
        names = [n for n in os.listdir(parent) if n.endswith(LOCK_SUFFIX)]
    except OSError:
        return 0
    for name in names:
        lock = os.path.join(parent, name)
        try:
            fd = os.open(lock, os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC)
        except OSError:
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            continue  # its worker is alive
        root = Path(parent) / name[: -len(LOCK_SUFFIX)]
        log.info("removing %s, left by a worker that is gone", root)
        remove(root)
        os.unlink(lock)  # while still locked: a worker starting now cannot pick this name
        os.close(fd)
        swept += 1
    return swept


def private_mounts() -> bool:
    """Give this process a mount namespace of its own, where nothing propagates to the host.

    Called by ``runner worker`` at start, while it has one thread (``unshare`` refuses
    otherwise) and as root: the quota mounts then live and die with the worker, so even a
    SIGKILLed worker leaves no mount behind (only empty directories for :func:`sweep`).
    False (and nothing changed) where that is not allowed.
    """
    if os.geteuid() != 0:
        return False
    libc = _libc()
    if libc.unshare(CLONE_NEWNS) != 0:
        log.debug("no private mount namespace: %s", os.strerror(ctypes.get_errno()))
        return False
    if libc.mount(b"none", b"/", None, MS_REC | MS_PRIVATE, None) != 0:
        log.warning("mounts may propagate to the host: %s", os.strerror(ctypes.get_errno()))
    return True


def mount_quota(path: Path, size: int) -> bool:
    """Mount a tmpfs of ``size`` bytes on the (empty) directory ``path``; False if not allowed."""
    options = f"size={max(size, 1 << 20)},nr_inodes={MAX_INODES},mode=0700".encode()
    libc = _libc()
    if libc.mount(b"tmpfs", os.fsencode(path), b"tmpfs", MS_NOSUID | MS_NODEV, options) != 0:
        log.debug("no quota mount on %s: %s", path, os.strerror(ctypes.get_errno()))
        return False
    return True


def share(path: Path) -> bool:
    """Make ``path`` a mount point with shared propagation, so that mounts made beneath it
    later (a job's quota tmpfs) reach sandboxes that bound it earlier (a warm slot host)."""
    if not _mounts_under(path)[-1:] == [str(path).rstrip("/")]:
        libc = _libc()
        if libc.mount(os.fsencode(path), os.fsencode(path), None, MS_BIND, None) != 0:
            log.warning("cannot bind %s onto itself: %s", path, os.strerror(ctypes.get_errno()))
            return False
    libc = _libc()
    if libc.mount(b"none", os.fsencode(path), None, MS_SHARED, None) != 0:
        log.warning("cannot share mounts under %s: %s", path, os.strerror(ctypes.get_errno()))
        return False
    return True


def unmount(mounts: list[Path]) -> None:
    """Unmount quota mounts (deepest first), leaving their directories."""
    for point in sorted(mounts, key=lambda p: len(str(p)), reverse=True):
        _unmount(point)


def can_mount_quota(scratch: Path) -> bool:
    """Whether this process may mount a quota tmpfs (tried once, in ``scratch``)."""
    probe = scratch / ".quota-probe"
    try:
        probe.mkdir(parents=True, exist_ok=True)
    except OSError:
        return False
    try:
        if not mount_quota(probe, 1 << 20):
            return False
        _unmount(probe)
        return True
    finally:
        remove(probe, [])


def used_up(path: Path, size: int) -> bool:
    """Whether the quota tmpfs on ``path`` is (nearly) full."""
    try:
        st = os.statvfs(path)
    except OSError:
        return False
    return st.f_bavail * st.f_frsize < min(size // 100, 1 << 20) or st.f_favail == 0


def remove(path: Path, mounts: list[Path] | None = None) -> None:
    """Remove ``path`` and everything under it: unmount quota tmpfs mounts, or walk the tree.

    ``mounts`` are the quota mounts under ``path``; ``None`` looks them up.
    """
    points = _mounts_under(path) if mounts is None else [str(m) for m in mounts]
    for point in points:
        _unmount(Path(point))
    if not os.path.lexists(path):
        return
    try:
        shutil.rmtree(path)
        return
    except (OSError, RecursionError) as exc:
        log.debug("rmtree %s failed (%s); removing with rm", path, type(exc).__name__)
    # fts walks iteratively and never follows symlinks; chmod first makes a 000 dir readable.
    subprocess.run(["chmod", "-R", "u+rwx", "--", str(path)], capture_output=True, check=False)
    done = subprocess.run(["rm", "-rf", "--one-file-system", "--", str(path)],
                          capture_output=True, check=False)
    if os.path.lexists(path):
        log.warning("could not remove %s: %s", path, done.stderr.decode(errors="replace")[-300:])


@functools.cache
def _libc() -> ctypes.CDLL:
    """libc, loaded once: loading it costs more than the mount a warm job's quota needs."""
    return ctypes.CDLL(None, use_errno=True)


def _unmount(path: Path) -> None:
    libc = _libc()
    if libc.umount2(os.fsencode(path), MNT_DETACH) != 0:
        log.warning("could not unmount %s: %s", path, os.strerror(ctypes.get_errno()))


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or below ``path`` (deepest first), from /proc/self/mountinfo."""
    prefix = str(path).rstrip("/")
    found = []
    try:
        with open("/proc/self/mountinfo") as fh:
            for line in fh:
                point = line.split()[4].replace("\\040", " ")
                if point == prefix or point.startswith(prefix + "/"):
                    found.append(point)
    except (OSError, IndexError):
        return []
    return sorted(found, key=len, reverse=True)
