"""Worker process hygiene: child subreaper, orphan reaping, no core dumps or ptrace by jobs.

* ``PR_SET_CHILD_SUBREAPER``: processes a job leaves behind are re-parented to the worker
  rather than to PID 1 (which may reap late, or never in a container), and the worker reaps
  them, so they do not linger as zombies holding a slot uid's process quota.
* ``PR_SET_DUMPABLE 0``: a job running under the worker's own uid (unprivileged worker) can
  neither ``ptrace`` the worker nor read ``/proc/<worker>/environ`` or its memory.

Reaping must not steal the exit status of a child someone else waits for (``Popen.wait``):
orphans are looked at with ``waitid(P_ALL, WNOHANG | WNOWAIT)`` first, and a zombie is reaped
only if it is not a tracked job leader and not in the worker's own process group (children
spawned by ordinary ``subprocess`` calls stay in it; every job starts its own session).
"""

from __future__ import annotations

import ctypes
import logging
import os
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TypeVar

log = logging.getLogger(__name__)
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
T = TypeVar("T")

_lock = threading.Lock()
_tracked: set[int] = set()
_thread: threading.Thread | None = None
_wake = threading.Event()


def _prctl(option: int, value: int) -> bool:
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        return libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0
    except (OSError, AttributeError):
        return False


def install(interval: float = 1.0) -> bool:
    """Make this process a non-dumpable subreaper and start the reaping thread (idempotent)."""
    global _thread
    dumpable = _prctl(PR_SET_DUMPABLE, 0)
    subreaper = _prctl(PR_SET_CHILD_SUBREAPER, 1)
    with _lock:
        if _thread is None and subreaper:
            _thread = threading.Thread(target=_loop, args=(interval,), name="reaper", daemon=True)
            _thread.start()
    if not (dumpable and subreaper):
        log.warning("prctl failed: non-dumpable=%s subreaper=%s", dumpable, subreaper)
    return dumpable and subreaper


def spawn(start: Callable[[], T], pid_of: Callable[[T], int]) -> T:
    """Start a job leader and track it, atomically with respect to the reaper."""
    with _lock:
        child = start()
        _tracked.add(pid_of(child))
    return child


@contextmanager
def tracking(pid: int) -> Iterator[None]:
    """Keep ``pid`` out of the reaper's hands until its owner has waited for it."""
    try:
        yield
    finally:
        with _lock:
            _tracked.discard(pid)
        _wake.set()  # a job just ended: its orphans are worth a look now


def reap() -> int:
    """Reap every finished orphan now; return how many."""
    own_group = os.getpgrp()
    reaped = 0
    with _lock:
        while True:
            try:
                info = os.waitid(os.P_ALL, 0, os.WEXITED | os.WNOHANG | os.WNOWAIT)
            except ChildProcessError:
                return reaped
            if info is None:
                return reaped
            pid = info.si_pid
            if pid in _tracked or _group(pid) == own_group:
                # Someone waits for it.  waitid(P_ALL) would keep returning it, so look
                # further through the zombie list with P_PID on each candidate instead.
                return reaped + _reap_others(own_group, skip=pid)
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            reaped += 1


def _reap_others(own_group: int, skip: int) -> int:
    reaped = 0
    for pid in _zombie_children():
        if pid == skip or pid in _tracked or _group(pid) == own_group:
            continue
        try:
            os.waitid(os.P_PID, pid, os.WEXITED | os.WNOHANG)
            reaped += 1
        except ChildProcessError:
            pass
    return reaped


def _zombie_children() -> list[int]:
    me = str(os.getpid())
    found = []
    try:
        tasks = os.listdir(f"/proc/{me}/task")
    except OSError:
        tasks = [me]
    for tid in tasks:
        try:
            with open(f"/proc/{me}/task/{tid}/children") as fh:
                found += [int(p) for p in fh.read().split()]
        except OSError:
            continue
    zombies = []
    for pid in found:
        try:
            with open(f"/proc/{pid}/stat") as fh:
                if fh.read().rsplit(")", 1)[1].split()[0] == "Z":
                    zombies.append(pid)
        except (OSError, IndexError):
            continue
    return zombies


def _group(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return int(fh.read().rsplit(")", 1)[1].split()[2])
    except (OSError, ValueError, IndexError):
        return None


def _loop(interval: float) -> None:
    while True:
        _wake.wait(interval)
        _wake.clear()
        try:
            count = reap()
        except Exception:  # never let the reaper die
            log.exception("reaping failed")
            continue
        if count:
            log.debug("reaped %d orphaned job processes", count)
