"""Landlock confinement, the file-system (and TCP) fallback where bubblewrap cannot run.

An exec-chain element, not a library: the worker runs
``python -I -S runner/sandbox/landlock.py --rw WORKDIR --ro PATH ... [--list DIR] [--no-tcp] -- ARGV`` after the uid
drop, so no Python runs between fork and exec in the (multithreaded) worker.  It restricts
itself (no_new_privs, then a Landlock ruleset: read and execute beneath the ``--ro`` paths,
everything beneath the ``--rw`` ones, only the entries of the ``--list`` directories (the one
holding the runner package, which the child interpreter puts on its path), nothing elsewhere;
with ``--no-tcp`` no TCP bind or connect at all) and execs the job.  Standard library only: ``-S`` keeps site-packages out.
UDP is not covered by Landlock: the network namespace (``unshare --net``) handles it.
"""

from __future__ import annotations

import ctypes
import os
import sys

SYS_CREATE, SYS_ADD_RULE, SYS_RESTRICT = 444, 445, 446  # x86_64 and aarch64 share these
PR_SET_NO_NEW_PRIVS = 38
RULE_PATH_BENEATH, RULE_NET_PORT = 1, 2
# Access rights by ABI version (Documentation/userspace-api/landlock.rst).
FS_EXECUTE, FS_WRITE, FS_READ_FILE, FS_READ_DIR = 1 << 0, 1 << 1, 1 << 2, 1 << 3
FS_ALL_V1 = (1 << 13) - 1
FS_REFER, FS_TRUNCATE, FS_IOCTL_DEV = 1 << 13, 1 << 14, 1 << 15
FILE_RIGHTS = FS_EXECUTE | FS_WRITE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV
NET_BIND_TCP, NET_CONNECT_TCP = 1 << 0, 1 << 1


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("fs", ctypes.c_uint64), ("net", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _fail(what: str) -> None:
    err = ctypes.get_errno()
    sys.stderr.write(f"runner-landlock: {what}: {os.strerror(err)}\n")
    sys.exit(126)


def _add(libc: ctypes.CDLL, ruleset: int, fd: int, rights: int, path: str) -> None:
    rule = _PathBeneath(rights, fd)
    if libc.syscall(SYS_ADD_RULE, ruleset, RULE_PATH_BENEATH, ctypes.byref(rule), 0) != 0:
        _fail(f"landlock_add_rule {path}")
    os.close(fd)


def restrict(rw: list[str], ro: list[str], no_tcp: bool, listed: tuple[str, ...] | list[str] = ()) -> None:
    """Apply the ruleset to this process (and everything it execs)."""
    libc = ctypes.CDLL(None, use_errno=True)
    abi = libc.syscall(SYS_CREATE, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    if abi < 1:
        _fail("Landlock is not available")
    fs = FS_ALL_V1 | (FS_REFER if abi >= 2 else 0) | (FS_TRUNCATE if abi >= 3 else 0)
    fs |= FS_IOCTL_DEV if abi >= 5 else 0
    net = NET_BIND_TCP | NET_CONNECT_TCP if no_tcp and abi >= 4 else 0
    attr = _RulesetAttr(fs, net)
    size = ctypes.sizeof(_RulesetAttr) if net else 8  # ABI < 4 knows only the fs field
    ruleset = libc.syscall(SYS_CREATE, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0))
    if ruleset < 0:
        _fail("landlock_create_ruleset")
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    for paths, allowed in ((ro, read), (rw, fs), (listed, FS_READ_DIR)):
        for path in paths:
            try:
                fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
            except OSError:
                continue  # a path this host does not have
            is_dir = os.path.isdir(path)
            _add(libc, ruleset, fd, (allowed if is_dir else allowed & FILE_RIGHTS) & fs, path)
            if not is_dir and allowed == read:
                # A single module file: its directory may be listed (the import system looks),
                # not its other files read.
                parent = os.open(os.path.dirname(os.path.abspath(path)), os.O_PATH | os.O_CLOEXEC)
                _add(libc, ruleset, parent, FS_READ_DIR, path)
    if libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) != 0:
        _fail("no_new_privs")
    if libc.syscall(SYS_RESTRICT, ruleset, 0) != 0:
        _fail("landlock_restrict_self")
    os.close(ruleset)


def main(argv: list[str]) -> None:
    rw: list[str] = []
    ro: list[str] = []
    listed: list[str] = []
    no_tcp = False
    args = iter(argv)
    for arg in args:
        if arg == "--rw":
            rw.append(next(args))
        elif arg == "--ro":
            ro.append(next(args))
        elif arg == "--list":
            listed.append(next(args))
        elif arg == "--no-tcp":
            no_tcp = True
        elif arg == "--":
            break
    command = list(args)
    if not command:
        sys.stderr.write("runner-landlock: no command after --\n")
        sys.exit(126)
    program = _resolve(command[0])  # before restricting: later imports may be refused
    restrict(rw, ro, no_tcp, listed)
    os.execv(program, command)


def _resolve(name: str) -> str:
    if "/" in name:
        return name
    for folder in os.environ.get("PATH", "/usr/bin:/bin").split(os.pathsep):
        candidate = os.path.join(folder, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    sys.stderr.write(f"runner-landlock: {name}: command not found\n")
    sys.exit(127)


if __name__ == "__main__":
    main(sys.argv[1:])
