"""What a killed worker leaves behind on disk, swept by the next worker to start on the box.

A worker keeps its jobs' directories under ``<workdir>/<host>.<pid>``; it removes each one when
the job ends, but a worker killed with SIGKILL (or by the OOM killer) cannot.  The next worker
on the same host removes the directories of workers of this host whose process is gone.
"""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

log = logging.getLogger(__name__)


def sweep_workdirs(root: Path, host: str, own_pid: int | None = None) -> list[Path]:
    """Remove ``root/<host>.<pid>`` for every ``pid`` of this host no longer running.

    A directory whose pid is alive is kept, even if that pid now belongs to another program:
    a wrong guess must never delete the work of a running worker.
    """
    own = os.getpid() if own_pid is None else own_pid
    removed: list[Path] = []
    try:
        entries = list(root.iterdir())
    except OSError:
        return removed
    for path in entries:
        name, dot, pid_text = path.name.rpartition(".")
        if not dot or name != host or not pid_text.isdigit() or int(pid_text) == own:
            continue
        if _alive(int(pid_text)) or not path.is_dir() or path.is_symlink():
            continue
        shutil.rmtree(path, ignore_errors=True)
        removed.append(path)
    if removed:
        log.info("removed the job directories of %d workers that are gone: %s",
                 len(removed), ", ".join(p.name for p in removed))
    return removed


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OverflowError):
        return True  # someone else's process, or not a pid we can ask about: keep it
    return True
