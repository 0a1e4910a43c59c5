"""A seccomp deny-list for job processes, compiled to BPF once with libseccomp (ctypes).

The filter allows by default and refuses the system calls a batch job has no business making:
tracing and reading other processes, kernel keyrings, BPF, io_uring, namespace creation and
mounting, module and kexec loading, terminal input injection (``TIOCSTI``).  Offline jobs are
also refused every socket family but ``AF_UNIX``.  Plugins run arbitrary binaries, so this is a
deny-list, a hardening layer on top of the namespaces, not the boundary itself.

bubblewrap loads the BPF program from a file descriptor (``bwrap --seccomp FD``) right before
it executes the job; nothing is loaded into the worker.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import errno
import functools
import logging
import os

log = logging.getLogger(__name__)

_ACT_ALLOW = 0x7FFF0000
_CMP_NE = 1
_CMP_EQ = 4
_CMP_MASKED_EQ = 7
_AF_UNIX = 1
_CLONE_NEWUSER = 0x10000000
_TIOCSTI = 0x5412
_TIOCLINUX = 0x541C

DENIED = (
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    "bpf", "perf_event_open", "userfaultfd",
    "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key",
    # POSIX message queues outlive their creator in the IPC namespace, which the jobs of a warm
    # slot share, and cannot be listed without mounting mqueue: no job may create one.
    "mq_open",
    "unshare", "setns", "mount", "umount2", "pivot_root", "move_mount", "open_tree", "fsopen",
    "fsmount", "fsconfig", "fspick", "mount_setattr",
    "init_module", "finit_module", "delete_module", "kexec_load", "kexec_file_load",
    "open_by_handle_at", "name_to_handle_at", "swapon", "swapoff", "reboot", "acct",
    "quotactl", "syslog", "lookup_dcookie", "iopl", "ioperm",
)


class _Cmp(ctypes.Structure):
    _fields_ = [
        ("arg", ctypes.c_uint),
        ("op", ctypes.c_int),
        ("datum_a", ctypes.c_uint64),
        ("datum_b", ctypes.c_uint64),
    ]


class SeccompUnavailable(Exception):
    """libseccomp cannot be loaded or refused to build the filter."""


def _errno_action(code: int) -> int:
    return 0x00050000 | (code & 0xFFFF)


@functools.lru_cache(maxsize=1)
def _lib() -> ctypes.CDLL:
    name = ctypes.util.find_library("seccomp")
    if not name:
        raise SeccompUnavailable("libseccomp is not installed (Debian: libseccomp2)")
    lib = ctypes.CDLL(name, use_errno=True)
    lib.seccomp_init.restype = ctypes.c_void_p
    lib.seccomp_init.argtypes = [ctypes.c_uint32]
    lib.seccomp_release.argtypes = [ctypes.c_void_p]
    lib.seccomp_syscall_resolve_name.argtypes = [ctypes.c_char_p]
    lib.seccomp_rule_add_array.argtypes = [
        ctypes.c_void_p, ctypes.c_uint32, ctypes.c_int, ctypes.c_uint, ctypes.POINTER(_Cmp)
    ]
    lib.seccomp_export_bpf.argtypes = [ctypes.c_void_p, ctypes.c_int]
    return lib


def _rule(lib: ctypes.CDLL, ctx: int, action: int, name: str, *cmps: _Cmp) -> None:
    nr = lib.seccomp_syscall_resolve_name(name.encode())
    if nr < 0:  # not a system call on this architecture (e.g. iopl on arm64)
        return
    array = (_Cmp * len(cmps))(*cmps) if cmps else None
    rc = lib.seccomp_rule_add_array(ctx, action, nr, len(cmps), array)
    if rc < 0:
        raise SeccompUnavailable(f"libseccomp refused the rule for {name}: {os.strerror(-rc)}")


@functools.lru_cache(maxsize=2)
def compile_filter(network: bool) -> bytes:
    """The BPF program for a job, with or without network access.

    Raises:
        SeccompUnavailable: libseccomp is missing or failed.
    """
    lib = _lib()
    ctx = lib.seccomp_init(_ACT_ALLOW)
    if not ctx:
        raise SeccompUnavailable("seccomp_init failed")
    eperm = _errno_action(errno.EPERM)
    try:
        for name in DENIED:
            _rule(lib, ctx, eperm, name)
        # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall back
        # to clone, whose flags it can check.
        _rule(lib, ctx, _errno_action(errno.ENOSYS), "clone3")
        _rule(lib, ctx, eperm, "clone", _Cmp(0, _CMP_MASKED_EQ, _CLONE_NEWUSER, _CLONE_NEWUSER))
        for request in (_TIOCSTI, _TIOCLINUX):
            _rule(lib, ctx, eperm, "ioctl", _Cmp(1, _CMP_EQ, request, 0))
        if not network:
            _rule(
                lib, ctx, _errno_action(errno.EAFNOSUPPORT), "socket",
                _Cmp(0, _CMP_NE, _AF_UNIX, 0),
            )
        fd = os.memfd_create("runner-seccomp", os.MFD_CLOEXEC)
        try:
            rc = lib.seccomp_export_bpf(ctx, fd)
            if rc < 0:
                raise SeccompUnavailable(f"seccomp_export_bpf failed: {os.strerror(-rc)}")
            os.lseek(fd, 0, os.SEEK_SET)
            size = os.fstat(fd).st_size
            return os.read(fd, size)
        finally:
            os.close(fd)
    finally:
        lib.seccomp_release(ctx)


def filter_fd(network: bool) -> int:
    """A fresh descriptor holding the compiled filter, for one ``bwrap --seccomp FD``.

    The caller passes it to the child (``pass_fds``) and closes it after the spawn.
    """
    program = compile_filter(network)
    fd = os.memfd_create("runner-seccomp", os.MFD_CLOEXEC)
    os.write(fd, program)
    os.lseek(fd, 0, os.SEEK_SET)
    return fd
