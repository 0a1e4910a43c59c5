"""The attack suite: hostile jobs through the real broker to a real worker, each one contained.

Two workers: ``root`` (``runner worker`` as root: slot uids, bubblewrap, seccomp, cgroups) and
``unprivileged`` (the same command under ``setpriv`` as an ordinary uid: bubblewrap in a user
namespace, no cgroups, no slot uids).  Every test asserts that the attack failed and that the
worker still runs a normal job afterwards.  The fork bomb needs a process cap, which only the
root worker has (slot uid RLIMIT_NPROC, cgroup pids.max): it does not apply unprivileged.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from runner.broker import connect
from runner.client import Client
from runner.config import Settings
from runner.plugins import make_plugins
from runner.testing import unique_route

TESTS = Path(__file__).parent
UNPRIVILEGED_UID = 60500  # below the slot uids (61000+)
SLOT_UIDS = range(61000, 65000)
SECRET = f"FAKE-CANARY-{uuid.uuid4().hex}"
# Makes an interpreter installed under /root (pyenv) reachable for an ordinary uid, in a
# private mount namespace of the worker only; a real deployment installs runner where its
# service user can read it.
UNPRIVILEGED_LAUNCH = r"""
set -e
uid=$1; hidden=$2; stash=$3; shift 3
if [ -n "$hidden" ]; then
    mount --bind "$hidden" "$stash"
    mount -t tmpfs -o mode=0755 tmpfs /root
    mkdir -p "$hidden"
    mount --bind "$stash" "$hidden"
fi
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"
"""


class WorkerUnderTest:
    """A ``runner worker`` subprocess consuming its own route; log lines collected."""

    def __init__(self, kind: str, amqp_url: str, concurrency: int = 2) -> None:
        self.kind = kind
        self.route = unique_route("a")
        self.queue = f"test.{self.route}"
        self.workdir = Path(tempfile.mkdtemp(prefix=f"runner-{kind}-"))
        self.workdir.chmod(0o711)  # traversable: jobs of slot uids work here even without bwrap
        self.lines: list[str] = []
        self.stash = ""
        env = {
            **os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_WORKDIR": str(self.workdir),
            "RUNNER_PLUGINS": "jobs_plugin,attack_jobs", "RUNNER_TEST_SECRET": SECRET,
        }
        argv = [sys.executable, "-m", "runner.cli", "worker", "--queue", self.queue,
                "--bind", f"{self.route}.#", "-c", str(concurrency)]
        if kind == "landlock":  # no bubblewrap: Landlock confines the file system instead
            config = self.workdir.parent / f"runner-{self.route}.toml"
            config.write_text('[sandbox]\ndisable = ["bwrap"]\n')
            env["RUNNER_CONFIG"] = str(config)
        if kind == "unprivileged":
            os.chown(self.workdir, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
            hidden = ""
            if sys.prefix.startswith("/root/"):
                hidden = "/root/" + Path(sys.prefix).relative_to("/root").parts[0]
            self.stash = tempfile.mkdtemp(prefix="runner-stash-")
            argv = ["unshare", "--mount", "--propagation", "private", "sh", "-c", UNPRIVILEGED_LAUNCH,
                    "launch", str(UNPRIVILEGED_UID), hidden, self.stash, *argv]
        self.proc = subprocess.Popen(argv, env=env, cwd=TESTS, stdout=subprocess.PIPE,
                                     stderr=subprocess.STDOUT)
        self.pid = self.proc.pid
        self._changed = threading.Condition()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        for raw in self.proc.stdout:
            with self._changed:
                self.lines.append(raw.decode(errors="replace"))
                self._changed.notify_all()
        with self._changed:
            self._changed.notify_all()

    def wait_for_log(self, text: str, timeout: float = 30) -> None:
        with self._changed:
            self._changed.wait_for(
                lambda: any(text in ln for ln in self.lines) or self.proc.poll() is not None, timeout
            )
            if not any(text in ln for ln in self.lines):
                raise AssertionError(f"{text!r} not logged by the {self.kind} worker:\n{''.join(self.lines)}")

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
        shutil.rmtree(self.workdir, ignore_errors=True)
        if self.stash:
            os.rmdir(self.stash)


@pytest.fixture(scope="module", params=["root", "unprivileged", "landlock"])
def worker(request, amqp_url) -> Iterator[WorkerUnderTest]:
    w = WorkerUnderTest(request.param, amqp_url)
    try:
        w.wait_for_log("consuming queue")
        yield w
    finally:
        w.stop()
        with connect(amqp_url) as broker:
            broker.delete_queue(w.queue)


@pytest.fixture(scope="module")
def client(amqp_url) -> Iterator[Client]:
    plugins = make_plugins(modules=["jobs_plugin", "attack_jobs"])
    with Client(connect(amqp_url), plugins, Settings(broker_url=amqp_url)) as c:
        yield c


def run(client: Client, worker: WorkerUnderTest, job: str, **params):
    result = client.submit(job, params, route=worker.route, wait=True).wait(90, raise_on_failure=False)
    if not result.ok:
        with connect(client.broker.url) as broker:
            broker.take_dead(result.id)
    return result


def still_serving(client: Client, worker: WorkerUnderTest) -> None:
    result = run(client, worker, "echo", text="still here")
    assert result.ok and result.value["text"] == "still here", result.error


def eventually(predicate, timeout: float = 10.0) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return True
        time.sleep(0.1)  # re-check of another process's state, not a synchronisation guess
    return predicate()


def processes_of(uids) -> list[int]:
    """Processes of ``uids``, except warm slot hosts (which run as their slot's uid)."""
    found = []
    for entry in os.listdir("/proc"):
        try:
            if entry.isdigit() and os.stat(f"/proc/{entry}").st_uid in uids and not is_slot_host(int(entry), uids):
                found.append(int(entry))
        except OSError:
            continue
    return found


def is_slot_host(pid: int, uids) -> bool:
    """A slot host: runs ``runner/sandbox/host.py`` and was not started by a slot-uid process
    (a job's fork shares the host's command line, but its parent is the host)."""
    with open(f"/proc/{pid}/cmdline", "rb") as fh:
        if b"sandbox/host.py" not in fh.read():
            return False
    with open(f"/proc/{pid}/stat") as fh:
        parent = int(fh.read().rsplit(")", 1)[1].split()[1])
    try:
        return os.stat(f"/proc/{parent}").st_uid not in uids
    except OSError:
        return False


def pgrep(pattern: str) -> str:
    return subprocess.run(["pgrep", "-f", pattern], capture_output=True, text=True).stdout


def test_worker_reports_its_layers(worker):
    line = next(ln for ln in worker.lines if "sandbox layers active" in ln)
    active = line.split("active:")[1].split(";")[0]
    if worker.kind == "landlock":
        assert "landlock" in active and "bwrap" not in active and "network" in active
        return
    assert "bwrap" in active and "seccomp" in active and "network" in active
    if worker.kind == "root":
        assert "uid" in active and "cgroup" in active


def test_fork_bomb_is_capped(client, worker):
    if worker.kind == "unprivileged":
        pytest.skip("no process cap without a slot uid or a writable cgroup (see docs/security.md)")
    result = run(client, worker, "attack-forkbomb", tries=2000)
    assert result.ok, result.error
    assert result.value["created"] < 70 and result.value["failed"] > 1900  # profile: 64 processes
    assert eventually(lambda: not processes_of(SLOT_UIDS)), "sleepers left after the job"
    still_serving(client, worker)


def test_memory_hog_is_stopped_at_the_limit(client, worker):
    result = run(client, worker, "attack-memory", megabytes=1024)
    assert not result.ok
    reached = [int(ln.split()[1]) for ln in result.stdout.splitlines() if ln.startswith("reached")]
    assert max(reached, default=0) < 256
    expected = "MemoryError" if worker.kind == "unprivileged" else "out of memory"
    assert expected in result.error
    still_serving(client, worker)


def test_busy_grandchildren_are_killed_at_the_timeout(client, worker):
    marker = uuid.uuid4().hex[:12]
    result = run(client, worker, "attack-spinners", marker=marker)
    assert not result.ok and "timed out after 1s" in result.error
    assert eventually(lambda: pgrep(f"attack-{marker}") == ""), "spinners left running"
    still_serving(client, worker)


def test_a_daemon_that_escapes_the_session_is_killed(client, worker):
    marker = f"1000.{uuid.uuid4().int % 10**9}"
    result = run(client, worker, "attack-daemon", marker=marker)
    assert result.ok, result.error
    assert eventually(lambda: pgrep(f"sleep {marker}") == ""), "the daemon survived its job"
    still_serving(client, worker)


def test_writes_outside_the_work_dir_do_not_land(client, worker):
    tag = uuid.uuid4().hex[:8]
    open_dir = Path(tempfile.mkdtemp(prefix="runner-open-"))
    open_dir.chmod(0o1777)  # only the sandbox, not file permissions, can stop this one
    targets = [f"/tmp/runner-attack-{tag}", f"{open_dir}/x", f"/usr/local/runner-attack-{tag}",
               f"/etc/runner-attack-{tag}", f"{worker.workdir}/../runner-attack-{tag}"]
    try:
        result = run(client, worker, "attack-write", targets=",".join(targets))
        assert result.ok, result.error
        landed = [t for t in targets if os.path.exists(t)]
        assert landed == [], f"written on the host: {landed} ({result.value})"
    finally:
        shutil.rmtree(open_dir, ignore_errors=True)
        for t in targets:
            Path(t).unlink(missing_ok=True)
    still_serving(client, worker)


def test_etc_shadow_cannot_be_read(client, worker):
    result = run(client, worker, "attack-read", path="/etc/shadow")
    assert result.ok and result.value.startswith("refused"), result.value
    still_serving(client, worker)


def test_worker_secrets_are_not_found(client, worker):
    result = run(client, worker, "attack-secret", secret=SECRET, worker_pid=worker.pid)
    assert result.ok, result.error
    assert result.value["found"] == [] and SECRET not in result.stdout
    still_serving(client, worker)


@pytest.fixture
def listeners() -> Iterator[tuple[socket.socket, socket.socket, list[str]]]:
    tcp = socket.create_server(("127.0.0.1", 0))
    tcp.settimeout(0.2)
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    udp.bind(("127.0.0.1", 0))
    udp.setblocking(False)
    heard: list[str] = []
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                conn, _ = tcp.accept()
                heard.append("tcp")
                conn.close()
            except OSError:
                pass
            try:
                udp.recvfrom(100)
                heard.append("udp")
            except OSError:
                pass

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield tcp, udp, heard
    stop.set()
    thread.join(5)
    tcp.close()
    udp.close()


def test_loopback_is_unreachable_without_network(client, worker, listeners):
    tcp, udp, heard = listeners
    ports = {"tcp_port": tcp.getsockname()[1], "udp_port": udp.getsockname()[1]}
    result = run(client, worker, "attack-network", **ports)
    assert result.ok, result.error
    # TCP is refused; a UDP packet may leave the job's own loopback, but never arrives here
    assert result.value["tcp"].startswith("refused")
    assert not eventually(lambda: heard, 1), heard
    # The listeners work: a job type that declares network reaches them
    allowed = run(client, worker, "network-allowed", **ports)
    assert allowed.value == {"tcp": "connected", "udp": "sent"}
    assert eventually(lambda: sorted(heard) == ["tcp", "udp"], 5), heard
    still_serving(client, worker)


def test_symlinks_in_out_to_root_only_files_are_not_followed(client, worker):
    fd, secret = tempfile.mkstemp(prefix="runner-secret-")
    os.write(fd, b"root only\n")
    os.close(fd)  # mode 0600, owned by root
    try:
        result = run(client, worker, "attack-symlink", target=secret)
    finally:
        os.unlink(secret)
    assert result.ok, result.error
    assert [(f.name, f.data) for f in result.outputs] == [("real.txt", b"real\n")]
    still_serving(client, worker)
