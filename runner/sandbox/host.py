"""The slot host: started once per warm slot inside the slot's sandbox, it forks every job.

``python -I [-S] host.py CTL_FD --domain pidns|uid:N [--private-tmp] [--path DIR]... [--preload MODULE]...``

The worker builds the sandbox once (the exec chain of :mod:`runner.sandbox.chain`: cgroup,
rlimits, bubblewrap or Landlock, seccomp, the slot uid) and runs this program at its end.  It
imports what function jobs need (``--preload``), then waits on the control socket ``CTL_FD``
(``SOCK_SEQPACKET``) for jobs.  For each job it forks (an argv job that needs no set-up of
its own is started with ``posix_spawn`` instead: the same result, without copying the host's
page tables); the child gets the job's own stdout,
stderr (and, for a function job, spec and result descriptors), a fresh work directory and
``TMPDIR``, a reset environment and signal dispositions, no other descriptor, a new session,
reseeded random generators and the job's rlimits, then runs the function or execs the argv.
With ``handshake`` the child first waits until the worker has moved it into the job's own
cgroup (the worker learns its pid from ``SCM_CREDENTIALS``).  When the child exits the host
reports it, then kills every other process it can signal (``kill(-1)``: in the slot's PID
namespace, or as the slot uid, those are the job's leftovers only), reaps them (it is their
subreaper) and, with ``--private-tmp``, empties the sandbox's own ``/tmp`` and ``/dev/shm``.

``kill(-1)`` is only safe inside a kill domain of the slot's own, so ``--domain`` names it and
the host checks it before anything else, and refuses to start if it does not hold: ``pidns``,
a fresh PID namespace (not the initial one) in which the host is the first process after
bubblewrap's init; ``uid:N``, the host's real and effective uid are the slot uid ``N`` (never
0).  Outside such a domain the same call would signal every process of the uid, or as root
every process of the machine.

The host is a zygote: its memory is every job's starting memory, so it holds nothing secret
(it never sees a message signature, key or broker URL: only what one job needs).  It stays
single-threaded (fork copies only the calling thread) and non-dumpable, so a job running as the
same uid can neither ptrace it nor read ``/proc/<host>/mem``.  Standard library only: argv hosts
run under ``-S`` from the system interpreter.
"""

from __future__ import annotations

import ctypes
import fcntl
import gc
import json
import os
import random
import resource
import select
import signal
import socket
import sys
import time
from typing import Any

PR_SET_DUMPABLE, PR_SET_CHILD_SUBREAPER = 4, 36
MAX_MESSAGE = 1 << 18
SWEEP_SECONDS = 5.0
LIMITS = {
    "core": resource.RLIMIT_CORE, "cpu": resource.RLIMIT_CPU, "fsize": resource.RLIMIT_FSIZE,
    "nofile": resource.RLIMIT_NOFILE, "nproc": resource.RLIMIT_NPROC, "as": resource.RLIMIT_AS,
}
RESET_SIGNALS = ("SIGPIPE", "SIGXFSZ", "SIGINT", "SIGTERM", "SIGCHLD", "SIGHUP", "SIGQUIT")


_LIBC: list[ctypes.CDLL] = []


def _libc() -> ctypes.CDLL | None:
    if not _LIBC:
        try:
            _LIBC.append(ctypes.CDLL(None, use_errno=True))
        except OSError:
            return None
    return _LIBC[0]


def _prctl(option: int, value: int) -> bool:
    libc = _libc()
    try:
        return libc is not None and libc.prctl(option, ctypes.c_ulong(value), 0, 0, 0) == 0
    except AttributeError:
        return False


INITIAL_PID_NAMESPACE = "pid:[4026531836]"  # PROC_PID_INIT_INO, the same on every Linux
_domain_checked = False


def check_domain(domain: str) -> str | None:
    """Why ``kill(-1)`` would reach beyond this slot's own processes (None: it would not)."""
    if domain == "pidns":
        try:
            namespace = os.readlink("/proc/self/ns/pid")
        except OSError as exc:
            return f"cannot read the PID namespace: {exc}"
        if namespace == INITIAL_PID_NAMESPACE:
            return "not in a PID namespace of its own"
        if os.getppid() != 1 or os.getpid() > 2:
            return "not the first process of its PID namespace"
        return None
    kind, _, value = domain.partition(":")
    if kind == "uid" and value.isdigit() and int(value) != 0:
        if os.getuid() == os.geteuid() == int(value):
            return None
        return f"runs as uid {os.getuid()}/{os.geteuid()}, not the slot uid {value}"
    return f"no kill domain {domain!r}"


def _kill_all(sig: int) -> None:
    """Signal every process of the slot's kill domain but the host (``kill(-1)``)."""
    if not _domain_checked:
        raise RuntimeError("kill(-1) outside a checked kill domain")
    try:
        os.kill(-1, sig)  # never the caller itself, nor PID 1
    except OSError:
        pass


def _send(ctl: socket.socket, **message: Any) -> None:
    ctl.send(json.dumps(message).encode())


def _child(request: dict[str, Any], fds: list[int], ctl: socket.socket) -> None:
    """In the forked child: become the job, then exec it or call it.  Never returns."""
    ctl.close()
    os.setsid()
    if request.get("handshake"):
        link = socket.socket(fileno=fds.pop())
        link.send(b"ready")
        if link.recv(8) != b"go":  # the worker could not place us in the job's cgroup
            os._exit(125)
        link.close()
    for name in RESET_SIGNALS:
        signal.signal(getattr(signal, name), signal.SIG_DFL)
    # 0: /dev/null, 1: stdout, 2: stderr, 3, 4: spec and result of a function job.  Moved
    # above every target number first, so that no dup2 overwrites a descriptor still needed.
    high = [fcntl.fcntl(fd, fcntl.F_DUPFD, 64) for fd in fds]
    for fd in fds:
        os.close(fd)
    null = os.open("/dev/null", os.O_RDONLY)
    if null != 0:
        os.dup2(null, 0)
        os.close(null)
    for target, fd in enumerate(high, start=1):
        os.dup2(fd, target)
    os.closerange(1 + len(high), 1 << 20)
    os.chdir(request["cwd"])
    env = {str(k): str(v) for k, v in request["env"].items()}
    for name, value in request.get("limits", {}).items():
        resource.setrlimit(LIMITS[name], (value, value))
    if request["kind"] == "argv":
        argv = [str(a) for a in request["argv"]]
        try:
            os.execvpe(argv[0], argv, env)
        except OSError as exc:
            os.write(2, f"runner: cannot run {argv[0]}: {exc.strerror}\n".encode())
            os._exit(127 if isinstance(exc, FileNotFoundError) else 126)
    os.environ.clear()
    os.environ.update(env)
    sys.argv = ["-c", "3", "4"]  # as in a cold child (python -c BOOT SPEC_FD RESULT_FD), not the host's
    random.seed()  # the host's generator state is every fork's: a function job gets its own
    os._exit(_call_function())


def _call_function() -> int:
    from runner.sandbox.child import main  # imported by the host already (``--preload``)

    code = 1
    try:
        code = main(["host", "3", "4"])
    finally:
        for stream in (sys.stdout, sys.stderr):
            try:
                stream.flush()
            except Exception:  # noqa: BLE001 - the job may have closed it
                pass
    return code


def _sweep() -> bool:
    """Kill and reap every process the host may signal; False if some would not go."""
    deadline = time.monotonic() + SWEEP_SECONDS
    while time.monotonic() < deadline:
        _kill_all(signal.SIGKILL)
        try:
            while (pid := os.waitpid(-1, os.WNOHANG)[0]) != 0:
                pass
        except ChildProcessError:
            return True
        time.sleep(0.0005)  # a killed child not yet a zombie
    return False


def _clear_sysv_ipc() -> None:
    """Remove the System V shared memory, semaphores and message queues a job left.

    They outlive their creator, in the slot's IPC namespace (or, without one, under the slot
    uid, which only the worker's own sweep may see): the next job must not find them.
    """
    libc = _libc()
    if libc is None:
        return
    removers = (("shm", libc.shmctl), ("sem", libc.semctl), ("msg", libc.msgctl))
    for kind, control in removers:
        try:
            with open(f"/proc/sysvipc/{kind}") as fh:
                rows = fh.read().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            fields = row.split()
            if len(fields) > 1 and fields[1].isdigit():
                control(int(fields[1]), 0, None)  # IPC_RMID; EPERM for what is not the slot's


def _wipe(path: str) -> None:
    """Remove everything under ``path`` that a job left (modes it changed included).

    Never into a mount point: the slot's jobs directory (bound read-write) may lie under /tmp,
    and the worker is already preparing the next job there; read-only binds stay too.  An
    explicit stack, not recursion: a job may leave a tree thousands of levels deep.
    """
    stack = [(path, False)]
    while stack:
        current, emptied = stack.pop()
        if emptied:
            if current != path:
                try:
                    os.rmdir(current)
                except OSError:
                    pass  # a skeleton directory that holds a mount point stays
            continue
        stack.append((current, True))
        try:
            entries = list(os.scandir(current))
        except OSError:
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    if os.path.ismount(entry.path):
                        continue
                    stack.append((entry.path, False))
                    os.chmod(entry.path, 0o700)
                else:
                    os.unlink(entry.path)
            except OSError:
                pass


def _spawn(request: dict[str, Any], fds: list[int]) -> int | None:
    """Start an argv job with ``posix_spawn`` (vfork: no copy of the host's page tables).

    Only where the child needs nothing ``posix_spawn`` cannot give: no cgroup handshake, and
    rlimits equal to the host's own (the chain set them; a CPU limit of its own needs the fork
    path).  Every descriptor of the host is close-on-exec (:func:`_no_inheritance`), so the job
    gets exactly stdin (``/dev/null``), stdout and stderr.  None: take the fork path.
    """
    if request["kind"] != "argv" or request.get("handshake") or len(fds) != 2:
        return None
    for name, value in request.get("limits", {}).items():
        if resource.getrlimit(LIMITS[name]) != (value, value):
            return None
    argv = [str(a) for a in request["argv"]]
    env = {str(k): str(v) for k, v in request["env"].items()}
    actions = [(os.POSIX_SPAWN_OPEN, 0, "/dev/null", os.O_RDONLY, 0),
               (os.POSIX_SPAWN_DUP2, fds[0], 1), (os.POSIX_SPAWN_DUP2, fds[1], 2)]
    defaults = {getattr(signal, name) for name in RESET_SIGNALS}
    home = os.getcwd()
    try:
        os.chdir(request["cwd"])  # posix_spawn has no chdir: the single-threaded host moves
        return os.posix_spawnp(argv[0], argv, env, file_actions=actions, setsid=True,
                               setsigdef=defaults)
    except OSError:
        return None  # the fork path reports it on the job's stderr
    finally:
        os.chdir(home)


def _no_inheritance() -> None:
    """Make every descriptor above stderr close-on-exec (the control socket came inheritable)."""
    for name in os.listdir("/proc/self/fd"):
        if name.isdigit() and int(name) > 2:
            try:
                os.set_inheritable(int(name), False)
            except OSError:
                pass  # the directory's own descriptor, closed already


def _run(ctl: socket.socket, request: dict[str, Any], fds: list[int], private_tmp: bool) -> bool:
    """One job: spawn or fork, wait (obeying signal requests), report, clean up.  False: stop."""
    pid = _spawn(request, fds)
    if pid is None:
        pid = os.fork()
    if pid == 0:
        try:
            _child(request, fds, ctl)
        except BaseException as exc:  # noqa: BLE001 - reported on the job's stderr, if it has one
            try:
                os.write(2, f"runner: the job could not start: {exc!r}\n".encode())
            finally:
                os._exit(126)
    for fd in fds:
        os.close(fd)
    pidfd = os.pidfd_open(pid)
    poller = select.poll()
    poller.register(ctl, select.POLLIN)
    poller.register(pidfd, select.POLLIN)
    alive = True
    while True:
        ready = {fd for fd, _ in poller.poll()}
        if pidfd in ready:
            break
        if ctl.fileno() in ready:
            data = ctl.recv(MAX_MESSAGE)
            if not data:  # the worker is gone: so is the job
                alive = False
                poller.unregister(ctl)
                _kill_all(signal.SIGKILL)
                continue
            message = json.loads(data)
            if message.get("op") == "signal":
                _kill_all(int(message["sig"]))  # the job and all it started
    os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    if alive:
        _send(ctl, op="done", status=os.waitstatus_to_exitcode(status))
    clean = _sweep()
    _clear_sysv_ipc()
    if private_tmp:
        for path in ("/tmp", "/dev/shm"):
            _wipe(path)
    return alive and clean


def main(argv: list[str]) -> int:
    global _domain_checked
    ctl = socket.socket(fileno=int(argv[1]))
    paths: list[str] = []
    preload: list[str] = []
    args = iter(argv[2:])
    private_tmp = False
    domain = ""
    for arg in args:
        if arg == "--domain":
            domain = next(args)
        elif arg == "--path":
            paths.append(next(args))
        elif arg == "--preload":
            preload.append(next(args))
        elif arg == "--private-tmp":
            private_tmp = True
    unsafe = check_domain(domain)
    if unsafe is not None:
        sys.stderr.write(f"runner slot host: refusing to start: {unsafe}\n")
        return 2
    _domain_checked = True
    _no_inheritance()
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    sys.path[0:0] = [p for p in paths if p not in sys.path]
    failed = {}
    for module in preload:
        try:
            __import__(module)
        except BaseException as exc:  # noqa: BLE001 - a broken plugin fails its own jobs, later
            failed[module] = f"{type(exc).__name__}: {exc}"
    # What the host imported stays put: a forked job's garbage collector then never walks
    # (and writes to) those objects, so it does not copy the host's pages one by one.
    gc.freeze()
    _send(ctl, op="ready", failed=failed)
    while True:
        data, ancdata, _flags, _addr = ctl.recvmsg(MAX_MESSAGE, socket.CMSG_SPACE(8 * 4))
        if not data:
            return 0
        fds: list[int] = []
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                usable = len(payload) - len(payload) % 4
                fds += list(memoryview(payload)[:usable].cast("i"))
        for fd in fds:
            os.set_inheritable(fd, False)  # a spawned job gets them only as 0-2, by dup2
        request = json.loads(data)
        if request.get("op") != "run" or not _run(ctl, request, fds, private_tmp):
            return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
