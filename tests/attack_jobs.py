"""Hostile job types for the attack suite (loaded with RUNNER_PLUGINS=attack_jobs).

Every payload is bounded in count and time, writes only under /tmp or its work dir, and talks
only to the 127.0.0.1 listeners the test opens.  Each reports what it managed to do, so the test
can assert that the attack failed rather than guess from an exit status.
"""

from __future__ import annotations

import os
import socket
import sys
import time

import click

from runner import JobContext, JobType, RetryPolicy, SandboxProfile, hookimpl

ONCE = RetryPolicy(attempts=1)
SLEEPER_SECONDS = 20  # forked sleepers exit by themselves even if nothing kills them


def fork_bomb(ctx: JobContext, tries: int) -> dict:
    created = failed = 0
    for _ in range(tries):
        try:
            pid = os.fork()
        except OSError:
            failed += 1
            continue
        if pid == 0:
            time.sleep(SLEEPER_SECONDS)
            os._exit(0)
        created += 1
    return {"created": created, "failed": failed}


def memory_hog(ctx: JobContext, megabytes: int) -> int:
    chunks = []
    for i in range(megabytes // 16):
        chunk = bytearray(16 << 20)
        chunk[::4096] = b"x" * len(chunk[::4096])  # touch every page
        chunks.append(chunk)
        print(f"reached {(i + 1) * 16} MiB", flush=True)
    return len(chunks) * 16


def write_outside(ctx: JobContext, targets: str) -> dict:
    done = {}
    for path in targets.split(","):
        try:
            with open(path, "w") as fh:
                fh.write("written by a job\n")
            done[path] = "written"
        except OSError as exc:
            done[path] = f"refused: {exc.strerror}"
    return done


def read_file(ctx: JobContext, path: str) -> str:
    try:
        with open(path) as fh:
            return "read: " + fh.read(200)
    except OSError as exc:
        return f"refused: {exc.strerror}"


def find_secret(ctx: JobContext, secret: str, worker_pid: int) -> dict:
    found = [f"env {k}" for k, v in os.environ.items() if secret in v]
    tried = {}
    pids = {str(worker_pid), *(p for p in os.listdir("/proc") if p.isdigit())}
    for pid in sorted(pids):
        try:
            with open(f"/proc/{pid}/environ", "rb") as fh:
                if secret.encode() in fh.read():
                    found.append(f"/proc/{pid}/environ")
            tried[pid] = "read"
        except OSError as exc:
            tried[pid] = exc.strerror or "error"
    return {"found": found, "worker": tried.get(str(worker_pid), "absent")}


def network(ctx: JobContext, tcp_port: int, udp_port: int) -> dict:
    out = {}
    try:
        with socket.create_connection(("127.0.0.1", tcp_port), timeout=3):
            out["tcp"] = "connected"
    except OSError as exc:
        out["tcp"] = f"refused: {exc.strerror or exc}"
    try:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.sendto(b"from the job", ("127.0.0.1", udp_port))
            out["udp"] = "sent"
    except OSError as exc:
        out["udp"] = f"refused: {exc.strerror or exc}"
    return out


def forged_result(ctx: JobContext, forgery: str) -> None:
    """Write the result file by hand, as a compromised job can, and leave without a word."""
    fd = int(sys.argv[2])  # python -I -c <boot> SPEC_FD RESULT_FD (runner.execution.CHILD_BOOT)
    fail = '{"ok": false, "kind": "retry", "exc_type": "Retry", "error": "forged", "traceback": null, '
    if forgery == "delay-soon":
        os.write(fd, (fail + '"delay": "soon"}').encode())
    elif forgery == "delay-infinity":
        os.write(fd, (fail + '"delay": Infinity}').encode())
    elif forgery in ("huge-error", "huge-value"):
        head, size = ((fail + '"delay": null, "error": "', 64) if forgery == "huge-error"
                      else ('{"ok": true, "value": "', 160))
        os.write(fd, head.encode())
        chunk = b"\xc3\xa9" * (1 << 19)  # 1 MiB of UTF-8 text per write, never held whole
        for _ in range(size):
            os.write(fd, chunk)
        os.write(fd, b'"}')
    elif forgery == "deep":
        os.write(fd, b'{"ok": true, "value": ' + b"[" * 100_000 + b"]" * 100_000 + b"}")
    os._exit(0)


def deep_tree(ctx: JobContext, depth: int) -> int:
    """Nest ``depth`` directories in the work dir (one chdir at a time: no path is too long)."""
    os.chdir(ctx.tmp_dir)
    for _ in range(depth):
        os.mkdir("d")
        os.chdir("d")
    with open("bottom", "w") as fh:
        fh.write("the bottom\n")
    return depth


def fill_disk(ctx: JobContext, files: int, megabytes: int) -> dict:
    """Write ``files`` files of ``megabytes`` MiB each (every one under file_size)."""
    written, error = 0, None
    block = b"x" * (1 << 20)
    try:
        for i in range(files):
            with open(ctx.tmp_dir / f"fill{i}", "wb") as fh:
                for _ in range(megabytes):
                    fh.write(block)
                    written += len(block)
    except OSError as exc:
        error = exc.strerror
    return {"written": written, "error": error}


def name_outputs(ctx: JobContext, names: str, source: str | None = None) -> str:
    """Write one output per name in ``names`` (separated by '|')."""
    for name in names.split("|"):
        (ctx.out_dir / name).write_text(f"written by a job as {name!r}\n")
    return "done"


def capabilities(ctx: JobContext) -> dict:
    with open("/proc/self/status") as fh:
        return {k: v.strip() for k, _, v in (ln.partition(":") for ln in fh) if k.startswith("Cap")}


def error_text(ctx: JobContext, chars: int, text: str = "") -> None:
    raise RuntimeError(text + "é" * chars)


def linger(ctx: JobContext, seconds: int) -> None:
    (ctx.tmp_dir / "left-behind").write_text("work of a worker that will be killed\n")
    print("runner-progress: 1/2 lingering", flush=True)
    time.sleep(seconds)


def _sh(script: str):
    return lambda p, ctx: ["sh", "-c", script.format(**p), f"attack-{p.get('marker', 'x')}"]


@hookimpl
def register_jobs(register):
    capped = SandboxProfile(processes=64, memory=256 << 20)
    register(JobType(name="attack-forkbomb", function="attack_jobs:fork_bomb", retry=ONCE,
                     params=[click.Option(["--tries"], type=int, default=2000)], sandbox=capped,
                     timeout=60))
    register(JobType(name="attack-memory", function="attack_jobs:memory_hog", retry=ONCE,
                     params=[click.Option(["--megabytes"], type=int, default=1024)], sandbox=capped,
                     timeout=60))
    register(JobType(
        name="attack-spinners", help="Busy loop with two busy grandchildren; 1 s timeout.",
        argv=_sh("(while :; do :; done) & (while :; do :; done) & "
                 "end=$(( $(date +%s) + 120 )); while [ $(date +%s) -lt $end ]; do :; done"),
        params=[click.Option(["--marker"], required=True)], timeout=1.0, retry=ONCE,
    ))
    register(JobType(
        name="attack-daemon", help="Double fork + setsid, then exit.",
        argv=_sh("(setsid sleep {marker} &) ; sleep 0.5; exit 0"),
        params=[click.Option(["--marker"], required=True)], retry=ONCE,
    ))
    register(JobType(name="attack-write", function="attack_jobs:write_outside", retry=ONCE,
                     params=[click.Option(["--targets"], required=True)]))
    register(JobType(name="attack-read", function="attack_jobs:read_file", retry=ONCE,
                     params=[click.Option(["--path"], required=True)]))
    register(JobType(name="attack-secret", function="attack_jobs:find_secret", retry=ONCE,
                     params=[click.Option(["--secret"], required=True),
                             click.Option(["--worker-pid"], type=int, required=True)]))
    for name, allowed in (("attack-network", False), ("network-allowed", True)):
        register(JobType(name=name, function="attack_jobs:network", retry=ONCE,
                         sandbox=SandboxProfile(network=allowed),
                         params=[click.Option(["--tcp-port"], type=int, required=True),
                                 click.Option(["--udp-port"], type=int, required=True)]))
    retried = RetryPolicy(attempts=6, backoff=0, jitter=0)
    register(JobType(name="attack-result", function="attack_jobs:forged_result", retry=retried,
                     params=[click.Option(["--forgery"], required=True)]))
    register(JobType(name="attack-deep", function="attack_jobs:deep_tree", retry=ONCE,
                     params=[click.Option(["--depth"], type=int, default=3000)]))
    register(JobType(name="attack-disk", function="attack_jobs:fill_disk", retry=ONCE,
                     sandbox=SandboxProfile(disk=32 << 20, file_size=16 << 20),
                     params=[click.Option(["--files"], type=int, default=8),
                             click.Option(["--megabytes"], type=int, default=16)]))
    register(JobType(name="attack-names", function="attack_jobs:name_outputs", retry=ONCE,
                     inputs=["source"],
                     params=[click.Argument(["source"], required=False),
                             click.Option(["--names"], required=True)]))
    register(JobType(name="attack-caps", function="attack_jobs:capabilities", retry=ONCE))
    register(JobType(name="attack-error-text", function="attack_jobs:error_text", retry=ONCE,
                     params=[click.Option(["--chars"], type=int, required=True),
                             click.Option(["--text"], default="")]))
    register(JobType(
        name="attack-stderr-line", help="One long non-ASCII line on stderr, then exit 1.",
        argv=lambda p, ctx: ["python3", "-c", f"import sys; sys.stderr.write('é' * {int(p['chars'])}); sys.exit(1)"],
        params=[click.Option(["--chars"], type=int, required=True)], retry=ONCE,
    ))
    register(JobType(name="attack-linger", function="attack_jobs:linger", retry=ONCE,
                     params=[click.Option(["--seconds"], type=int, default=60)]))
    register(JobType(
        name="attack-symlink", help="Plant a symlink and a hard link to a root-only file in out/.",
        argv=_sh("ln -s {target} out/leak.txt; ln {target} out/hard.txt 2>/dev/null; "
                 "echo real > out/real.txt"),
        params=[click.Option(["--target"], required=True)], retry=ONCE,
    ))
    _register_warm(register)



# --- warm slots: what one job leaves behind, looked for by the next job in the same slot ------
def _places(ctx: JobContext) -> dict[str, str]:
    return {"home": os.environ.get("HOME", "/nonexistent"), "tmpdir": os.environ.get("TMPDIR", "/tmp"),
            "workroot": str(ctx.workdir.parent.parent), "tmp": "/tmp", "shm": "/dev/shm"}


LEFT_IN_MEMORY: list[str] = []  # module state: a job's fork may change it, the next must not see it


def _sysv_shm(token: str, create: bool) -> str:
    """A System V shared memory segment keyed by the token: create it, or look for it."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    key = int(token[:7], 16) + 1
    ident = libc.shmget(key, 4096, (0o1000 | 0o600) if create else 0)  # IPC_CREAT
    return f"segment {ident}" if ident >= 0 else f"refused: {os.strerror(ctypes.get_errno())}"


def litter(ctx: JobContext, token: str) -> dict:
    done = {}
    for name, folder in _places(ctx).items():
        try:
            with open(os.path.join(folder, f"litter-{token}"), "w") as fh:
                fh.write("left by the previous job\n")
            done[name] = "written"
        except OSError as exc:
            done[name] = f"refused: {exc.strerror}"
    done["sysv-shm"] = _sysv_shm(token, create=True)
    os.environ["RUNNER_LITTER"] = token
    os.putenv("RUNNER_LITTER_PUT", token)
    LEFT_IN_MEMORY.append(token)
    return done


def leave_behind(ctx: JobContext, token: str) -> dict:
    """A daemon (double fork, own session) holding listening unix sockets, then return."""
    ready_r, ready_w = os.pipe()
    if os.fork() == 0:
        os.setsid()
        if os.fork() == 0:
            held = []
            for address in ("\0runner-" + token, os.path.join(os.environ.get("TMPDIR", "/tmp"), f"s-{token}"),
                            f"/tmp/s-{token}"):
                try:
                    sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
                    sock.bind(address)
                    sock.listen()
                    sock.set_inheritable(True)
                    held.append(sock)
                except OSError:
                    pass
            os.write(ready_w, str(len(held)).encode())
            os.execvp("sh", ["sh", "-c", f"sleep {SLEEPER_SECONDS}", f"runner-left-{token}"])
        os._exit(0)
    os.close(ready_w)
    return {"sockets": int(os.read(ready_r, 10) or b"0")}


def tamper(ctx: JobContext) -> dict:
    import json as json_module

    done = {}
    for path in (__file__, json_module.__file__, os.path.join(os.path.dirname(__file__), "planted.py")):
        try:
            with open(path, "a") as fh:
                fh.write("\n# changed by a job\n")
            done[path] = "written"
        except OSError as exc:
            done[path] = f"refused: {exc.strerror}"
    return done


def kill_host(ctx: JobContext) -> str:
    import signal

    os.kill(os.getppid(), signal.SIGKILL)
    time.sleep(3)
    return "survived its host"


def spy_on_host(ctx: JobContext) -> dict:
    import ctypes

    host = os.getppid()
    out = {}
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.ptrace(16, host, 0, 0) == 0:  # PTRACE_ATTACH
        out["ptrace"] = "attached"
    else:
        out["ptrace"] = f"refused: {os.strerror(ctypes.get_errno())}"
    for name in ("mem", "environ", "maps"):
        try:
            with open(f"/proc/{host}/{name}", "rb") as fh:
                fh.read(64)
            out[name] = "read"
        except OSError as exc:
            out[name] = f"refused: {exc.strerror}"
    return out


def draw(ctx: JobContext) -> float:
    import random

    return random.random()


def look_around(ctx: JobContext, token: str) -> dict:
    """What the next job sees of a previous one: files, environment, memory, processes, sockets."""
    seen = []
    for name, folder in _places(ctx).items():
        try:
            seen += [f"{name}/{entry}" for entry in os.listdir(folder) if token in entry]
        except OSError:
            pass
    processes = []
    for pid in (p for p in os.listdir("/proc") if p.isdigit()):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as fh:
                if token.encode() in fh.read():
                    processes.append(pid)
        except OSError:
            pass
    sockets = []
    for address in ("\0runner-" + token, f"/tmp/s-{token}"):
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
                sock.connect(address)
                sockets.append(address.replace("\0", "@"))
        except OSError:
            pass
    with open(f"/proc/{os.getppid()}/cmdline", "rb") as fh:
        parent = fh.read().replace(b"\0", b" ").decode(errors="replace")
    if not _sysv_shm(token, create=False).startswith("refused"):
        seen.append("sysv shared memory segment")
    return {"seen": seen, "env": sorted(k for k, v in os.environ.items() if token in v),
            "memory": list(LEFT_IN_MEMORY), "processes": processes, "sockets": sockets,
            "parent": parent, "pid": os.getpid()}


def _register_warm(register) -> None:
    token = [click.Option(["--token"], required=True)]
    for name, function, params in (
        ("warm-litter", "litter", token), ("warm-leave", "leave_behind", token),
        ("warm-tamper", "tamper", []), ("warm-kill-host", "kill_host", []),
        ("warm-spy", "spy_on_host", []), ("warm-look", "look_around", token),
        ("warm-draw", "draw", []),
    ):
        register(JobType(name=name, function=f"attack_jobs:{function}", retry=ONCE, params=params,
                         timeout=30))
    register(JobType(name="warm-fds", help="The descriptors an argv job starts with.",
                     argv=lambda p, ctx: ["sh", "-c", "ls /proc/$$/fd"], retry=ONCE))
    register(JobType(
        name="warm-litter-argv", help="The same litter from an argv job.",
        argv=lambda p, ctx: ["sh", "-c", 'for d in "$HOME" "$TMPDIR" /tmp /dev/shm ..; do '
                             'echo x > "$d/litter-$1"; done; (setsid sleep 20 &); exit 0',
                             "runner-left-" + p["token"], p["token"]],
        params=token, retry=ONCE,
    ))
