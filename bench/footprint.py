"""Memory of a worker's whole process tree: the sum of PSS (proportional set size).

PSS splits each shared page among the processes that map it, so the sum over a tree counts
memory the tree shares (the interpreter, libraries, a zygote's pages shared with its forks)
once: it is what the tree costs the machine.  Used by ``throughput.py`` for the idle-memory row.
"""

from __future__ import annotations

import os


def descendants(pid: int) -> list[int]:
    """``pid`` and every process below it, by the kernel's children lists."""
    found, todo = [], [pid]
    while todo:
        current = todo.pop()
        found.append(current)
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children") as fh:
                    todo += [int(p) for p in fh.read().split()]
            except OSError:
                continue
    return found


def pss_kib(pid: int) -> int:
    try:
        with open(f"/proc/{pid}/smaps_rollup") as fh:
            for line in fh:
                if line.startswith("Pss:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return 0


def tree_pss_mib(pid: int) -> tuple[float, int]:
    """(PSS of the tree in MiB, number of processes)."""
    pids = descendants(pid)
    return sum(pss_kib(p) for p in pids) / 1024, len(pids)
