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
# Makes what lies under /root (pyenv's interpreter, a venv in ~/.venvs, the checkout) reachable
# for an ordinary uid, in a private mount namespace of the worker only; a real deployment
# installs runner where its service user can read it.  $2: those directories, colon-separated.
UNPRIVILEGED_LAUNCH = r"""
set -e
uid=$1; hidden=$2; stash=$3; shift 3
if [ -n "$hidden" ]; then
    dirs=$(printf '%s' "$hidden" | tr ':' ' ')
    i=0
    for dir in $dirs; do mkdir "$stash/$i"; mount --bind "$dir" "$stash/$i"; i=$((i + 1)); done
    mount -t tmpfs -o mode=0755 tmpfs /root
    i=0
    for dir in $dirs; do mkdir -p "$dir"; mount --bind "$stash/$i" "$dir"; i=$((i + 1)); done
fi
exec setpriv --reuid="$uid" --regid="$uid" --clear-groups --inh-caps=-all --bounding-set=-all -- "$@"
"""


class WorkerUnderTest:
    """A ``runner worker`` subprocess consuming its own route; log lines collected."""

    def __init__(self, kind: str, amqp_url: str, workdir: Path | None = None, concurrency: int = 2) -> None:
        self.kind = kind
        self.route = unique_route("a")
        self.queue = f"test.{self.route}"
        self.workdir = workdir or Path(tempfile.mkdtemp(prefix=f"runner-{kind}-"))
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
            # The interpreter (sys.base_prefix: a venv's python links to it), the venv
            # (sys.prefix) and the checkout may each lie under /root.
            hidden = ":".join(sorted({
                "/root/" + Path(p).relative_to("/root").parts[0]
                for p in (sys.base_prefix, sys.prefix, str(TESTS.parent)) if p.startswith("/root/")
            }))
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
        if self.stash:  # empty mount points here (the binds were made in the worker's namespace)
            for point in Path(self.stash).iterdir():
                point.rmdir()
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


# --- the return path (issue 13): what a job hands back is hostile input too -----------------

CLEARED = "0000000000000000"


def starts(worker: WorkerUnderTest, job_id: str) -> int:
    """How many times the worker started an attempt of ``job_id`` (its INFO log line)."""
    return sum(1 for ln in worker.lines if f"job {job_id} " in ln and " started" in ln)


def worker_python(worker: WorkerUnderTest) -> int:
    """The pid of the worker's interpreter (under setpriv/unshare it keeps the launcher's pid)."""
    with open(f"/proc/{worker.pid}/cmdline", "rb") as fh:
        assert b"runner.cli" in fh.read(), "the worker is not the launched process itself"
    return worker.pid


def peak_rss_kib(pid: int) -> int:
    with open(f"/proc/{pid}/status") as fh:
        return int(next(ln for ln in fh if ln.startswith("VmHWM:")).split()[1])


@pytest.mark.parametrize("forgery", ["delay-soon", "delay-infinity", "deep"])
def test_a_forged_result_file_fails_its_own_job_once(client, worker, forgery):
    # Two in a row: each used to wedge a slot (an exception outside any try, nothing settled).
    for _ in range(2):
        result = run(client, worker, "attack-result", forgery=forgery)
        assert not result.ok and "returned a malformed result" in result.error, result.error
        assert result.attempts == 1 and starts(worker, result.id) == 1  # not run 6 times
    still_serving(client, worker)


@pytest.mark.parametrize("forgery", ["huge-error", "huge-value"])
def test_a_huge_result_file_is_not_read_into_the_worker(client, worker, forgery):
    pid = worker_python(worker)
    with open(f"/proc/{pid}/clear_refs", "w") as fh:
        fh.write("5")  # resets the peak resident set size (VmHWM) to the current one
    before = peak_rss_kib(pid)
    result = run(client, worker, "attack-result", forgery=forgery)
    assert not result.ok and "larger than 8388608 bytes" in result.error, result.error
    grown = peak_rss_kib(pid) - before
    assert grown < 150 * 1024, f"the worker grew by {grown} KiB reading a job's result"
    assert len(result.error) < 1000 and starts(worker, result.id) == 1
    still_serving(client, worker)


def test_long_non_ascii_errors_never_cost_the_connection_or_a_bystander(client, worker):
    since = len(worker.lines)
    bystander = client.submit("attack-linger", {"seconds": 10}, route=worker.route, wait=True)
    worker.wait_for_log(f"job {bystander.id} attack-linger attempt 1 started")
    # stderr keeps its last 64 KiB (output_limit): 2-byte characters up to past the limit,
    # and exception text, which goes into the error, the traceback and the history.
    for job, chars in [("attack-stderr-line", n) for n in (1, 999, 12_000, 21_846, 32_768, 40_000)] + [
        ("attack-error-text", n) for n in (12_000, 65_536)
    ]:
        result = run(client, worker, job, chars=chars)
        assert not result.ok and "é" in result.error, (job, chars, result.error)
        assert starts(worker, result.id) == 1, (job, chars)
    finished = bystander.wait(90, raise_on_failure=False)
    assert finished.ok, finished.error
    assert starts(worker, bystander.id) == 1, "the bystander job was run again"
    lost = [ln for ln in worker.lines[since:] if "lost the connection" in ln]
    assert lost == [], lost
    still_serving(client, worker)


def test_headers_of_every_size_of_error_fit_one_frame(amqp_url):
    """Every size of non-ASCII error up to the output limit, through the real RabbitMQ."""
    from runner.message import JobMessage, JobResult, JobStatus, retry_envelope
    from runner.headers import dead_envelope

    route = unique_route("h")
    queue = f"test.{route}"
    sizes = range(0, 65_537 + 509, 509)
    with connect(amqp_url) as broker:
        broker.declare_queue(queue, [f"{route}.#"])
        try:
            env = JobMessage(job="echo", params={}, route=route).to_envelope()
            for chars in sizes:
                text = "é€\x00"[chars % 3] * chars  # 2, 3 and 6 (\u0000 in JSON) bytes each
                result = JobResult(id="x", job="echo", status=JobStatus.FAILED, attempts=1,
                                   error=f"exited with status 1: {text}", traceback=text,
                                   stderr=text, stdout=text)
                history = [{"attempt": i, "error": text[:5000]} for i in range(20)]
                broker.publish(dead_envelope(retry_envelope(env, 2, history), text, result))
            # every one arrived, and the connection is still the one we started with
            assert eventually(lambda: broker.queue_depth(queue) == len(sizes)), broker.queue_depth(queue)
        finally:
            broker.delete_queue(queue)


def job_dirs(workdir: Path, job_id: str = "") -> list[Path]:
    """Job directories under a worker's work dir (of one job, if given): cold (ROOT/JOB/job),
    warm (ROOT/slot-N/JOB), or finished and waiting to be deleted (ROOT/trash/JOB)."""
    found = [*(p.parent for p in workdir.glob("*/*/job")), *workdir.glob("*/slot-*/*"),
             *workdir.glob("*/trash/*")]
    return [p for p in found if p.name.startswith(job_id[:12])]


def test_a_deep_directory_tree_is_removed(client, worker):
    result = run(client, worker, "attack-deep", depth=3000)
    assert result.ok and result.value == 3000, result.error
    assert eventually(lambda: not job_dirs(worker.workdir, result.id)), "work left on the host"
    assert "worker error" not in "".join(worker.lines)
    still_serving(client, worker)


def test_a_job_cannot_write_more_than_its_disk_quota(client, worker):
    if worker.kind == "unprivileged":
        pytest.skip("no per-job disk quota without the right to mount (see docs/security.md)")
    result = run(client, worker, "attack-disk", files=8, megabytes=16)  # 128 MiB, 16 MiB a file
    assert result.ok, result.error
    assert result.value["written"] <= 32 << 20 and result.value["error"] == "No space left on device"
    still_serving(client, worker)


def test_work_of_a_killed_worker_is_swept_at_start(client, worker, amqp_url):
    workdir = Path(tempfile.mkdtemp(prefix=f"runner-sweep-{worker.kind}-"))
    if worker.kind == "unprivileged":
        os.chown(workdir, UNPRIVILEGED_UID, UNPRIVILEGED_UID)
    first = WorkerUnderTest(worker.kind, amqp_url, workdir)
    second = None
    try:
        first.wait_for_log("consuming queue")
        if worker.kind != "unprivileged":  # its quota mounts live and die with it
            assert os.readlink(f"/proc/{first.pid}/ns/mnt") != os.readlink("/proc/self/ns/mnt")
        client.submit("attack-linger", {"seconds": 60}, route=first.route)
        assert eventually(lambda: job_dirs(workdir), 30), "the job did not start"
        first.proc.kill()
        first.proc.wait(30)
        second = WorkerUnderTest(worker.kind, amqp_url, workdir)
        second.wait_for_log("consuming queue")
        assert job_dirs(workdir) == [], "work of the killed worker is left"
        roots = [p.name for p in workdir.iterdir() if p.is_dir()]
        assert all(f".{second.pid}-" in name for name in roots), f"a killed worker's root is left: {roots}"
        with open("/proc/self/mountinfo") as fh:
            assert str(workdir) not in fh.read(), "a quota mount of the killed worker is left"
    finally:
        for w in (first, second):
            if w is not None:
                w.stop()
                with connect(amqp_url) as broker:
                    broker.delete_queue(w.queue)


def test_hostile_output_names_are_refused_by_the_worker(client, worker):
    for names, problem in [(".bashrc|authorized_keys", "a dot file"),
                           ("\x1b]2;pwned\x07x.txt|ok.txt", "control or invisible"),
                           ("ok.txt|\u202etxt.exe", "control or invisible")]:
        result = run(client, worker, "attack-names", names=names)
        assert not result.ok and problem in result.error, result.error
        assert "\x1b" not in result.error and "\x07" not in result.error
    still_serving(client, worker)


def submit_cli(worker: WorkerUnderTest, amqp_url: str, cwd: Path, *args: str, job: str = "attack-names"):
    env = {**os.environ, "RUNNER_BROKER_URL": amqp_url, "RUNNER_PLUGINS": "jobs_plugin,attack_jobs"}
    return subprocess.run(
        [sys.executable, "-m", "runner.cli", "--debug", "submit", job, *args, "--route",
         worker.route, "--wait"], env=env, cwd=cwd, capture_output=True, text=True, timeout=120,
    )


def test_wait_never_replaces_an_input_or_an_existing_file(worker, amqp_url, tmp_path):
    photo = tmp_path / "photo.txt"
    photo.write_text("the user's own\n")
    notes = tmp_path / "notes.txt"
    notes.write_text("kept\n")
    for extra in ((), ("--overwrite",)):
        done = submit_cli(worker, amqp_url, tmp_path, str(photo), "--names", "photo.txt|new.txt", *extra)
        assert done.returncode == 1 and "would replace an input" in done.stderr, done.stderr
        assert photo.read_text() == "the user's own\n" and not (tmp_path / "new.txt").exists()
    done = submit_cli(worker, amqp_url, tmp_path, str(photo), "--names", "notes.txt")
    assert done.returncode == 1 and "--overwrite" in done.stderr and notes.read_text() == "kept\n"
    done = submit_cli(worker, amqp_url, tmp_path, str(photo), "--names", "notes.txt", "--overwrite")
    assert done.returncode == 0, done.stderr
    assert notes.read_text() == "written by a job as 'notes.txt'\n"


def test_the_terminal_never_sees_a_jobs_escape_sequences(worker, amqp_url, tmp_path):
    hostile = "\x1b]0;owned\x07\x1b[2J\x9b31m"
    done = submit_cli(worker, amqp_url, tmp_path, "--chars", "1", "--text", hostile, job="attack-error-text")
    printed = done.stderr + done.stdout
    assert done.returncode == 1 and "RuntimeError: ]0;owned" not in printed, printed
    assert "RuntimeError: é" in printed and "Traceback" in printed  # the error and, with --debug, the traceback
    assert not set(printed) & {"\x1b", "\x07", "\x9b"}, repr(printed)


def test_the_client_checks_output_names_a_worker_sends(tmp_path):
    """A hostile worker (or anyone who can publish replies) gets no further than a job."""
    from runner.client import OutputRefused, save_outputs
    from runner.message import FileData, JobResult, JobStatus

    for name in (".bashrc", "../escape", "a/b", "x\x1b[31m", "-rf", "..", "\u202eexe.txt"):
        forged = JobResult(id="f", job="echo", status=JobStatus.SUCCEEDED, attempts=1,
                           outputs=(FileData(name="fine.txt", data=b"1"), FileData(name=name, data=b"2")))
        with pytest.raises(OutputRefused, match="refused"):
            save_outputs(forged, tmp_path)
        assert os.listdir(tmp_path) == []  # nothing at all of a suspicious result


def test_the_capability_bounding_set_is_empty_in_a_job(client, worker):
    result = run(client, worker, "attack-caps")
    assert result.ok, result.error
    assert {k: result.value[k] for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")} == {
        k: CLEARED for k in ("CapInh", "CapPrm", "CapEff", "CapBnd", "CapAmb")
    }


def test_the_http_job_refuses_loopback_unless_allowed(client, worker, listeners):
    tcp, _udp, heard = listeners
    url = f"http://127.0.0.1:{tcp.getsockname()[1]}/admin"
    result = run(client, worker, "http", url=url)
    assert not result.ok and "loopback, private or link-local" in result.error, result.error
    assert not eventually(lambda: heard, 1), "the job reached the loopback listener"
    still_serving(client, worker)


def test_a_worker_refuses_unsigned_jobs_from_a_broker_off_this_host(tmp_path):
    env = {**os.environ, "RUNNER_BROKER_URL": "amqp://guest:guest@192.0.2.1:5672/",
           "RUNNER_WORKDIR": str(tmp_path)}
    done = subprocess.run([sys.executable, "-m", "runner.cli", "worker"], env=env, cwd=tmp_path,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 3 and "--allow-unsigned" in done.stderr, done.stderr


def test_the_docs_say_how_limits_really_apply():
    table = (TESTS.parent / "docs" / "plugins.md").read_text()
    assert "not enforced yet" not in table
    memory = next(ln for ln in table.splitlines() if ln.startswith("| `memory` |"))
    assert "cgroup" in memory and "OOM" in memory
    assert "## The return path" in (TESTS.parent / "docs" / "security.md").read_text()
