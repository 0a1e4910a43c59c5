#!/usr/bin/env python3
"""Throughput and latency of runner against Celery and Dramatiq, on the real RabbitMQ.

    pip install -e . -r bench/requirements.txt
    python bench/throughput.py                      # about two minutes on 2 cores

One run measures, with unique queue names that are deleted afterwards:

1. submit throughput: jobs/s of ``Client.submit`` (publisher confirms, no worker running), next
   to bare pika with confirms, Celery's ``apply_async`` and Dramatiq's ``send`` (both with
   confirms switched on);
2. end to end: a worker subprocess (``runner worker -c N``; ``celery worker -P prefork -c N``;
   ``dramatiq --processes N --threads 1``) processing a batch of trivial jobs, in jobs/s from the
   first submit to the last result; then the latency of one job at a time (p50/p95);
3. a table of every system and workload with its ratio to runner's comparable row.

It prints figures and ratios; it asserts nothing.  Every worker subprocess it starts runs in its
own process group and is stopped (SIGTERM, then SIGKILL) when the run ends, fails or is
interrupted; ``--budget`` bounds the whole run.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime
import json
import os
import platform
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, ClassVar

BENCH = Path(__file__).resolve().parent
RUN_ID = uuid.uuid4().hex[:8]
DEFAULT_URL = "amqp://guest:guest@127.0.0.1:5672/"

# The bench plugin (bench_jobs) and the peers' task modules are imported from bench/, here, in
# the worker subprocesses and in runner's child interpreters (the sandbox passes PYTHONPATH on).
sys.path.insert(0, str(BENCH))
from footprint import tree_pss_mib  # noqa: E402 - bench/ is on the path from here

os.environ["PYTHONPATH"] = os.pathsep.join(
    p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p
)

WORKLOADS = {
    # kind: (label for runner, label for the in-process peers)
    "noop": ("no-op function job (sandboxed)", "no-op task (in process)"),
    "true": ("argv job ['true']", "task: subprocess.run(['true'])"),
    "python": ("", "task: subprocess.run([python, '-c', 'pass'])"),
}
# Sandbox layers that runner-basic switches off ([sandbox] disable), leaving the basic layer.
OPTIONAL_LAYERS = ("uid", "bwrap", "network", "seccomp", "cgroup", "landlock")
# Which runner workload a peer workload is compared with.
RUNNER_PEER = {"noop": "noop", "true": "true", "python": "noop"}


class StopRun(Exception):
    """The budget ran out, or the run was interrupted: stop measuring, clean up, report."""


def log(msg: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)


# --- results ----------------------------------------------------------------------------------
@dataclass
class Row:
    system: str
    workload: str
    kind: str
    concurrency: int
    n: int
    jobs_per_s: float | None = None  # median of the repeats
    low: float | None = None  # slowest repeat
    high: float | None = None  # fastest repeat
    p50_ms: float | None = None
    p95_ms: float | None = None
    note: str = ""
    ratio: float | None = None


@dataclass
class Results:
    submit: list[dict[str, Any]] = field(default_factory=list)
    rows: list[Row] = field(default_factory=list)
    footprint: dict[tuple[str, int], dict[str, float]] = field(default_factory=dict)


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    k = (len(ordered) - 1) * q
    lo, hi = int(k), min(int(k) + 1, len(ordered) - 1)
    return ordered[lo] + (ordered[hi] - ordered[lo]) * (k - lo)


# --- processes ----------------------------------------------------------------------------------
class Proc:
    """A worker subprocess in its own process group, logging to a file."""

    started: ClassVar[list[Proc]] = []

    def __init__(self, name: str, argv: list[str], env: dict[str, str], cwd: Path, logdir: Path) -> None:
        self.name = name
        self.log_path = logdir / f"{name}.log"
        self._log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            argv, env=env, cwd=str(cwd), stdin=subprocess.DEVNULL, stdout=self._log,
            stderr=subprocess.STDOUT, start_new_session=True,
        )
        Proc.started.append(self)

    def log_text(self) -> str:
        return self.log_path.read_text(errors="replace")

    def wait_for_log(self, text: str, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while text not in self.log_text():
            if self.proc.poll() is not None:
                raise RuntimeError(f"{self.name} exited ({self.proc.returncode}):\n{self.log_text()[-3000:]}")
            if time.monotonic() > deadline:
                raise RuntimeError(f"{self.name} not ready after {timeout}s:\n{self.log_text()[-3000:]}")
            time.sleep(0.05)

    def stop(self, grace: float = 20.0) -> None:
        pgid = self.proc.pid  # start_new_session: the group id is the leader's pid
        if self.proc.poll() is None:
            _killpg(pgid, signal.SIGTERM)
            try:
                self.proc.wait(grace)
            except subprocess.TimeoutExpired:
                log(f"{self.name} did not stop in {grace}s; killing it")
        _killpg(pgid, signal.SIGKILL)  # the leader, and any child it left behind
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(10)
        self._log.close()
        if self in Proc.started:
            Proc.started.remove(self)

    @classmethod
    def stop_all(cls) -> None:
        for p in list(cls.started):
            with contextlib.suppress(Exception):
                p.stop(grace=5.0)


def _killpg(pgid: int, sig: int) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pgid, sig)


# --- RabbitMQ housekeeping (bare pika) -----------------------------------------------------
class Admin:
    def __init__(self, url: str) -> None:
        import pika

        self.pika = pika
        self.url = url

    @contextlib.contextmanager
    def channel(self) -> Iterator[Any]:
        conn = self.pika.BlockingConnection(self.pika.URLParameters(self.url))
        try:
            yield conn.channel()
        finally:
            with contextlib.suppress(Exception):
                conn.close()

    @staticmethod
    def server_version(url: str) -> str:
        import pika

        conn = pika.BlockingConnection(pika.URLParameters(url))
        try:
            props = conn._impl.server_properties
            return props.get("version", b"?").decode() if isinstance(props.get("version"), bytes) else str(props.get("version"))
        finally:
            conn.close()

    def purge(self, queue: str) -> None:
        with contextlib.suppress(Exception), self.channel() as ch:
            ch.queue_purge(queue)

    def delete(self, queues: list[str] = (), exchanges: list[str] = ()) -> None:  # type: ignore[assignment]
        for q in queues:
            with contextlib.suppress(Exception), self.channel() as ch:
                ch.queue_delete(q)
        for x in exchanges:
            with contextlib.suppress(Exception), self.channel() as ch:
                ch.exchange_delete(x)

    def pika_submit_rate(self, n: int) -> float:
        """The floor: bare pika, persistent messages, publisher confirms, one at a time."""
        q = f"bench.pika.{RUN_ID}"
        body = json.dumps({"job": "bench-noop", "params": {}}).encode()
        try:
            with self.channel() as ch:
                ch.queue_declare(q, durable=True)
                ch.confirm_delivery()
                props = self.pika.BasicProperties(delivery_mode=2, message_id="x", type="bench-noop")
                t0 = time.perf_counter()
                for _ in range(n):
                    ch.basic_publish("", q, body, props, mandatory=True)
                return n / (time.perf_counter() - t0)
        finally:
            self.delete([q])


# --- the systems ------------------------------------------------------------------------------
class System:
    name = ""
    kinds: tuple[str, ...] = ()
    queues: list[str]
    exchanges: list[str]

    def submit_rate(self, n: int) -> float: ...
    def start_worker(self, concurrency: int, logdir: Path) -> Proc: ...
    def send(self, kind: str) -> Any: ...
    def wait_all(self, tokens: list[Any], timeout: float) -> None: ...
    def close(self) -> None: ...

    def recover(self) -> None:
        """After a failed measurement: make the client usable again."""

    def warm_up(self, kind: str, count: int = 3, timeout: float = 60.0) -> None:
        self.wait_all([self.send(kind) for _ in range(count)], timeout)

    def batch(self, kind: str, n: int, timeout: float) -> float:
        t0 = time.perf_counter()
        tokens = [self.send(kind) for _ in range(n)]
        self.wait_all(tokens, timeout)
        return time.perf_counter() - t0

    def latencies(self, kind: str, m: int, timeout: float) -> list[float]:
        out = []
        for _ in range(m):
            t0 = time.perf_counter()
            self.wait_all([self.send(kind)], timeout)
            out.append(time.perf_counter() - t0)
        return out


class RunnerSystem(System):
    name = "runner"
    kinds = ("noop", "true")
    JOBS: ClassVar[dict[str, str]] = {"noop": "bench-noop", "true": "bench-true"}

    def __init__(
        self, url: str, workdir: Path, all_plugins: bool, name: str = "runner", suffix: str = "",
        config: Path | None = None,
    ) -> None:
        from runner.broker import connect
        from runner.client import Client
        from runner.config import Settings
        from runner.plugins import make_plugins

        self.name = name
        self.config = config
        self.all_plugins = all_plugins
        self.url = url
        self.workdir = workdir
        self.route = f"bench{RUN_ID}{suffix}"
        self.queue = f"bench.{self.route}"
        self.queues, self.exchanges = [self.queue], []
        self._make_client = lambda: Client(
            connect(url), make_plugins(load=None if all_plugins else (), modules=["bench_jobs"]),
            Settings(broker_url=url),
        )
        self.client = self._make_client()

    def submit_rate(self, n: int) -> float:
        # A queue bound to the route, so the (mandatory) jobs are routable; no worker yet.
        self.client.broker.declare_queue(self.queue, (f"{self.route}.#",))
        self.client.submit("bench-noop", route=self.route)  # connect, declare: not timed
        t0 = time.perf_counter()
        for _ in range(n):
            self.client.submit("bench-noop", route=self.route)
        rate = n / (time.perf_counter() - t0)
        self.client.broker.delete_queue(self.queue)
        return rate

    def submit_many_rate(self, n: int) -> float:
        """The same jobs in one ``Client.submit_many`` call: confirms pipelined."""
        self.client.broker.declare_queue(self.queue, (f"{self.route}.#",))
        self.client.submit_many([{"job": "bench-noop", "route": self.route}])  # not timed
        t0 = time.perf_counter()
        self.client.submit_many([{"job": "bench-noop", "route": self.route} for _ in range(n)])
        rate = n / (time.perf_counter() - t0)
        self.client.broker.delete_queue(self.queue)
        return rate

    def start_worker(self, concurrency: int, logdir: Path) -> Proc:
        env = {
            **os.environ,
            "RUNNER_BROKER_URL": self.url,
            "RUNNER_PLUGINS": "bench_jobs",
            "RUNNER_WORKDIR": str(self.workdir),
        }
        if not self.all_plugins:
            env["RUNNER_LOAD_PLUGINS"] = ""  # no entry-point plugins: only bench_jobs
        if self.config is not None:
            env["RUNNER_CONFIG"] = str(self.config)
        argv = [
            sys.executable, "-m", "runner.cli", "worker", "--queue", self.queue,
            "--bind", f"{self.route}.#", "--concurrency", str(concurrency),
        ]
        # cwd: an empty directory, so no runner.toml / pyproject.toml is picked up.
        proc = Proc(f"runner{self.route}-c{concurrency}", argv, env, self.workdir, logdir)
        try:
            proc.wait_for_log("consuming queue", 60)
        except BaseException:
            proc.stop(grace=5.0)
            raise
        return proc

    def send(self, kind: str) -> Any:
        return self.client.submit(self.JOBS[kind], route=self.route, wait=True)

    def wait_all(self, tokens: list[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for handle in tokens:
            handle.wait(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        self.client.close()

    def recover(self) -> None:
        # A Client whose connection dropped keeps a reply inbox on the dead channel: every later
        # submit(wait=True) fails with "fast reply consumer does not exist".  Start afresh.
        with contextlib.suppress(Exception):
            self.client.close()
        self.client = self._make_client()


class CelerySystem(System):
    name = "celery"
    kinds = ("noop", "true", "python")

    def __init__(self) -> None:
        import peer_celery

        self.mod = peer_celery
        self.queues, self.exchanges = [peer_celery.QUEUE], [peer_celery.QUEUE]

    def submit_rate(self, n: int) -> float:
        task = self.mod.TASKS["noop"]
        task.apply_async(ignore_result=True)  # connect, declare: not timed
        t0 = time.perf_counter()
        for _ in range(n):
            task.apply_async(ignore_result=True)
        rate = n / (time.perf_counter() - t0)
        Admin(os.environ["BENCH_AMQP_URL"]).purge(self.mod.QUEUE)
        return rate

    def start_worker(self, concurrency: int, logdir: Path) -> Proc:
        argv = [
            sys.executable, "-m", "celery", "-A", "peer_celery", "worker", "-P", "prefork",
            "-c", str(concurrency), "-Q", self.mod.QUEUE, "-n", f"bench{RUN_ID}c{concurrency}@%h",
            "--without-heartbeat", "--without-gossip", "--without-mingle", "-l", "warning",
        ]
        proc = Proc(f"celery-c{concurrency}", argv, dict(os.environ), BENCH, logdir)
        return proc

    def send(self, kind: str) -> Any:
        return self.mod.TASKS[kind].apply_async()

    def wait_all(self, tokens: list[Any], timeout: float) -> None:
        deadline = time.monotonic() + timeout
        for result in tokens:
            result.get(timeout=max(0.1, deadline - time.monotonic()))

    def close(self) -> None:
        self.mod.app.close()


class DramatiqSystem(System):
    name = "dramatiq"
    kinds = ("noop", "true", "python")

    def __init__(self) -> None:
        import peer_dramatiq

        self.mod = peer_dramatiq
        q = peer_dramatiq.QUEUE
        self.queues, self.exchanges = [q, f"{q}.DQ", f"{q}.XQ"], []
        self.counter = Path(peer_dramatiq.COUNTER)
        self.sent = 0

    def _count(self) -> int:
        try:
            return self.counter.stat().st_size
        except FileNotFoundError:
            return 0

    def submit_rate(self, n: int) -> float:
        actor = self.mod.ACTORS["noop"]
        actor.send()  # connect, declare: not timed
        t0 = time.perf_counter()
        for _ in range(n):
            actor.send()
        rate = n / (time.perf_counter() - t0)
        Admin(os.environ["BENCH_AMQP_URL"]).purge(self.mod.QUEUE)
        return rate

    def start_worker(self, concurrency: int, logdir: Path) -> Proc:
        self.counter.unlink(missing_ok=True)
        self.sent = 0
        argv = [
            sys.executable, "-m", "dramatiq", "peer_dramatiq", "--processes", str(concurrency),
            "--threads", "1", "--queues", self.mod.QUEUE,
        ]
        return Proc(f"dramatiq-c{concurrency}", argv, dict(os.environ), BENCH, logdir)

    def send(self, kind: str) -> Any:
        self.mod.ACTORS[kind].send()
        self.sent += 1
        return self.sent  # completion number to wait for

    def wait_all(self, tokens: list[Any], timeout: float) -> None:
        target = max(tokens)
        deadline = time.monotonic() + timeout
        while self._count() < target:
            if time.monotonic() > deadline:
                raise TimeoutError(f"dramatiq: {self._count()} of {target} jobs done after {timeout}s")
            time.sleep(0.001)

    def close(self) -> None:
        self.mod.broker.close()


# --- the run ----------------------------------------------------------------------------------
def measure_system(
    system: System, args: argparse.Namespace, results: Results, logdir: Path,
    concurrencies: list[int], sizes: dict[str, int],
) -> None:
    for conc in concurrencies:
        rows = [
            Row(system.name, WORKLOADS[kind][0 if isinstance(system, RunnerSystem) else 1], kind, conc, sizes[kind])
            for kind in system.kinds
        ]
        results.rows.extend(rows)
        log(f"{system.name}: starting worker, concurrency {conc}")
        started = time.monotonic()
        try:
            worker = system.start_worker(conc, logdir)
        except Exception as exc:  # noqa: BLE001 - the other systems still get measured
            for row in rows:
                row.note = f"worker failed to start: {exc}"[:200]
            log(f"{system.name} c{conc}: {rows[0].note}")
            continue
        try:
            for kind, row in zip(system.kinds, rows, strict=True):
                try:
                    system.warm_up(kind, timeout=90)
                    if kind == system.kinds[0] and "first_job_s" not in results.footprint.get((system.name, conc), {}):
                        # From the worker's start to the first result, the worker's own start-up included.
                        results.footprint.setdefault((system.name, conc), {})["first_job_s"] = time.monotonic() - started
                    rates = []
                    for _ in range(args.repeat):
                        elapsed = system.batch(kind, sizes[kind], args.batch_timeout)
                        rates.append(sizes[kind] / elapsed)
                    row.jobs_per_s = statistics.median(rates)
                    row.low, row.high = min(rates), max(rates)
                    lat = system.latencies(kind, args.n_latency, 30)
                    row.p50_ms = percentile(lat, 0.5) * 1000
                    row.p95_ms = percentile(lat, 0.95) * 1000
                    log(
                        f"{system.name} c{conc} {kind}: {row.jobs_per_s:.1f} jobs/s "
                        f"(n={sizes[kind]}, {args.repeat} batches: "
                        f"{', '.join(f'{r:.1f}' for r in rates)}), "
                        f"latency p50 {row.p50_ms:.1f} ms p95 {row.p95_ms:.1f} ms"
                    )
                except (StopRun, KeyboardInterrupt):
                    raise
                except Exception as exc:  # noqa: BLE001 - one failed figure must not end the run
                    row.note = f"failed: {type(exc).__name__}: {exc}"[:200]
                    log(f"{system.name} c{conc} {kind}: {row.note}")
                    with contextlib.suppress(Exception):
                        system.recover()
                    if worker.proc.poll() is not None:
                        log(f"{worker.name} exited; its log: {worker.log_path}")
                        break
            # Idle memory after the run: every slot warm, no job running.
            pss, count = tree_pss_mib(worker.proc.pid)
            results.footprint.setdefault((system.name, conc), {}).update(pss_mib=pss, processes=count)
            log(f"{system.name} c{conc}: idle PSS of the worker tree {pss:.1f} MiB in {count} processes")
        finally:
            worker.stop()
        # A batch that timed out leaves jobs behind; they must not leak into the next measure.
        Admin(args.url).purge(system.queues[0])


def compute_ratios(rows: list[Row]) -> None:
    ref = {(r.kind, r.concurrency): r for r in rows if r.system == "runner" and r.jobs_per_s}
    for r in rows:
        base = ref.get((RUNNER_PEER[r.kind], r.concurrency))
        if r.jobs_per_s and base:
            r.ratio = r.jobs_per_s / base.jobs_per_s


def fmt(value: float | None, spec: str) -> str:
    return "—" if value is None else format(value, spec)


def report(results: Results, meta: dict[str, Any]) -> str:
    lines = [
        (
            f"runner throughput benchmark, {meta['date']}, {meta['cpus']} CPUs, "
            f"Python {meta['python']}, RabbitMQ at {meta['broker']}"
        ),
        "versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()),
        *([f"label: {meta['label']}"] if meta.get("label") else []),
        "",
        f"Submit throughput (publisher confirms, one message at a time, no consumer; median of {meta['repeat']}):",
        "",
        "| client | n | jobs/s | ratio vs runner |",
        "|---|---:|---:|---:|",
    ]
    runner_submit = next((s["jobs_per_s"] for s in results.submit if s["client"].startswith("runner")), None)
    for s in results.submit:
        ratio = s["jobs_per_s"] / runner_submit if runner_submit and s["jobs_per_s"] else None
        lines.append(f"| {s['client']} | {s['n']} | {fmt(s['jobs_per_s'], '.0f')} | {fmt(ratio, '.2f')} |")
    lines += [
        "",
        (
            f"End to end: jobs/s from first submit to last result (median of {meta['repeat']} "
            f"batches of n, and their range); p50/p95: {meta['n_latency']} jobs submitted and "
            "waited on one at a time:"
        ),
        "",
        "| system | workload | conc | n | jobs/s | range | p50 ms | p95 ms | ratio vs runner |",
        "|---|---|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for r in results.rows:
        ratio = fmt(r.ratio, ".2f") + ("" if r.system == "runner" or r.ratio is None else
                                       f" (vs runner {RUNNER_PEER[r.kind]})")
        lines.append(
            f"| {r.system} | {r.workload} | {r.concurrency} | {r.n} | {fmt(r.jobs_per_s, '.1f')} | "
            f"{fmt(r.low, '.0f')}–{fmt(r.high, '.0f')} | {fmt(r.p50_ms, '.1f')} | {fmt(r.p95_ms, '.1f')} | {ratio}{' ' + r.note if r.note else ''} |"
        )
    lines += [
        "",
        "Start and idle memory: seconds from starting the worker to its first result (its start-up "
        "included); PSS of the whole worker tree after the run, idle:",
        "",
        "| system | conc | first job s | idle PSS MiB | processes |",
        "|---|---:|---:|---:|---:|",
    ]
    for (name, conc), fig in results.footprint.items():
        lines.append(f"| {name} | {conc} | {fmt(fig.get('first_job_s'), '.2f')} | "
                     f"{fmt(fig.get('pss_mib'), '.1f')} | {fmt(fig.get('processes'), '.0f')} |")
    return "\n".join(lines)


def runner_source() -> str:
    """Where ``runner`` is imported from, with its git commit when that is a checkout."""
    import runner

    src = Path(runner.__file__).resolve().parent.parent
    try:
        head = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "-C", str(src), "status", "--porcelain", "--", "runner"],
            capture_output=True, text=True, check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return str(src)
    return f"{src} at {head}{' with uncommitted changes in runner/' if dirty else ''}"


def versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for dist in ("runner", "pika", "celery", "kombu", "dramatiq"):
        with contextlib.suppress(PackageNotFoundError):
            out[dist] = version(dist)
    out["runner source"] = runner_source()
    with contextlib.suppress(Exception):
        out["rabbitmq"] = Admin.server_version(os.environ.get("BENCH_AMQP_URL", DEFAULT_URL))
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--url", default=os.environ.get("BENCH_AMQP_URL", DEFAULT_URL), help="RabbitMQ URL")
    parser.add_argument(
        "--systems", default="runner,runner-basic,runner-tmpfs,celery,dramatiq",
        help="comma-separated. runner-basic: runner's worker again with only the basic sandbox "
        "layer; runner-tmpfs: again with its workdir on --tmpfs (both at the first concurrency only)",
    )
    parser.add_argument("--tmpfs", default="/dev/shm", help="a tmpfs directory for runner-tmpfs")
    parser.add_argument("--runner-concurrency", default="2,4", help="runner worker slots to try")
    parser.add_argument("--peer-concurrency", default="2", help="Celery/Dramatiq worker processes to try")
    parser.add_argument("--n-submit", type=int, default=500, help="jobs for the submit figure")
    parser.add_argument("--n-noop", type=int, default=150, help="runner's no-op function jobs per batch")
    parser.add_argument("--n-true", type=int, default=300, help="'true' jobs per batch")
    parser.add_argument("--n-peer-noop", type=int, default=1000, help="peers' in-process no-op jobs per batch")
    parser.add_argument("--n-python", type=int, default=150, help="peers' python-subprocess jobs per batch")
    parser.add_argument("--n-latency", type=int, default=25, help="jobs waited on one at a time")
    parser.add_argument("--repeat", type=int, default=3, help="batches per figure (the median is shown)")
    parser.add_argument("--workdir", type=Path, help="RUNNER_WORKDIR of runner's worker (default: a new temporary directory)")
    parser.add_argument("--batch-timeout", type=float, default=90.0, help="seconds one batch may take")
    parser.add_argument("--budget", type=int, default=300, help="seconds the whole run may take")
    parser.add_argument(
        "--all-plugins", action="store_true",
        help="load every installed runner plugin too (default: only bench_jobs, to measure the core)",
    )
    parser.add_argument("--label", default="", help="free text kept with the figures, e.g. the commit measured")
    parser.add_argument("--json", type=Path, help="also write the figures here as JSON")
    args = parser.parse_args()

    systems = [s.strip() for s in args.systems.split(",") if s.strip()]
    runner_conc = [int(c) for c in args.runner_concurrency.split(",")]
    peer_conc = [int(c) for c in args.peer_concurrency.split(",")]

    tmp = Path(tempfile.mkdtemp(prefix=f"runner-bench-{RUN_ID}-"))
    tmp.chmod(0o755)  # a worker running as root may run jobs as other uids: they must reach workdir
    logdir = tmp / "logs"
    logdir.mkdir()
    os.environ.update({
        "BENCH_AMQP_URL": args.url,
        "BENCH_CELERY_QUEUE": f"bench.celery.{RUN_ID}",
        "BENCH_DRAMATIQ_QUEUE": f"bench_dramatiq_{RUN_ID}",
        "BENCH_COUNTER": str(tmp / "dramatiq.count"),
    })

    def on_alarm(*_: object) -> None:
        raise StopRun(f"the run took longer than --budget {args.budget}s")

    def on_term(*_: object) -> None:
        raise StopRun("terminated (SIGTERM)")

    signal.signal(signal.SIGALRM, on_alarm)
    signal.signal(signal.SIGTERM, on_term)
    signal.alarm(args.budget)

    meta = {
        "date": datetime.datetime.now().astimezone().isoformat(timespec="seconds"),
        "cpus": os.cpu_count(), "python": platform.python_version(), "broker": args.url.split("@")[-1],
        "host": platform.platform(), "run_id": RUN_ID, "repeat": args.repeat,
        "n_latency": args.n_latency, "versions": versions(), "label": args.label,
    }
    results = Results()
    admin = Admin(args.url)
    opened: list[System] = []
    cleanup_dirs: list[Path] = []
    started = time.monotonic()
    try:
        if "runner" in systems:
            workdir = args.workdir or tmp / "work"
            workdir.mkdir(parents=True, exist_ok=True)
            opened.append(RunnerSystem(args.url, workdir, args.all_plugins))
        if "runner-basic" in systems:
            # The same worker with only the basic sandbox layer (own session, rlimits,
            # parent-death signal, clean environment): what the other layers cost per job.
            config = tmp / "basic-sandbox.toml"
            config.write_text(f"[sandbox]\ndisable = {json.dumps(list(OPTIONAL_LAYERS))}\n")
            basic = tmp / "work-basic"
            basic.mkdir()
            opened.append(RunnerSystem(
                args.url, basic, args.all_plugins, name="runner, basic sandbox only",
                suffix="basic", config=config,
            ))
        if "runner-tmpfs" in systems and not os.path.isdir(args.tmpfs):
            log(f"runner-tmpfs skipped: no directory {args.tmpfs}")
        elif "runner-tmpfs" in systems:
            # The same worker with RUNNER_WORKDIR on tmpfs: the per-job work directory is
            # created and removed without touching the disk RabbitMQ is fsyncing to.
            shm = Path(tempfile.mkdtemp(prefix=f"runner-bench-{RUN_ID}-", dir=args.tmpfs))
            shm.chmod(0o755)
            cleanup_dirs.append(shm)
            opened.append(RunnerSystem(
                args.url, shm, args.all_plugins, name="runner, workdir on tmpfs", suffix="shm"
            ))
        if "celery" in systems:
            opened.append(CelerySystem())
        if "dramatiq" in systems:
            opened.append(DramatiqSystem())

        log(f"submit throughput, n={args.n_submit}")
        names = {"runner": "runner Client.submit", "celery": "celery apply_async", "dramatiq": "dramatiq send"}
        submitters: list[tuple[str, Callable[[int], float]]] = [
            (names[s.name], s.submit_rate) for s in opened if s.name in names
        ]
        runner_system = next((s for s in opened if s.name == "runner"), None)
        if isinstance(runner_system, RunnerSystem):
            submitters.insert(1, ("runner Client.submit_many (pipelined confirms)", runner_system.submit_many_rate))
        submitters.append(("pika basic_publish (floor)", admin.pika_submit_rate))
        for client, submit_rate in submitters:
            rates = [submit_rate(args.n_submit) for _ in range(args.repeat)]
            r = statistics.median(rates)
            results.submit.append({"client": client, "n": args.n_submit, "jobs_per_s": r})
            log(f"{client}: {r:.0f} jobs/s ({', '.join(f'{x:.0f}' for x in rates)})")

        for system in opened:
            if isinstance(system, RunnerSystem):
                sizes = {"noop": args.n_noop, "true": args.n_true}
                conc = runner_conc if system.name == "runner" else runner_conc[:1]
                measure_system(system, args, results, logdir, conc, sizes)
            else:
                sizes = {"noop": args.n_peer_noop, "true": args.n_true, "python": args.n_python}
                measure_system(system, args, results, logdir, peer_conc, sizes)
    except (StopRun, KeyboardInterrupt) as exc:
        log(f"stopped: {exc or 'interrupted'}; the figures so far follow")
    finally:
        signal.alarm(0)
        Proc.stop_all()
        for system in opened:
            with contextlib.suppress(Exception):
                system.close()
            admin.delete(system.queues, system.exchanges)
        for d in cleanup_dirs:
            shutil.rmtree(d, ignore_errors=True)
        meta["seconds"] = round(time.monotonic() - started, 1)

    compute_ratios(results.rows)
    print(report(results, meta))
    print(f"\n(whole run {meta['seconds']}s; worker logs in {logdir})")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(
            {"meta": meta, "submit": results.submit, "rows": [asdict(r) for r in results.rows],
             "footprint": [{"system": k[0], "conc": k[1], **v} for k, v in results.footprint.items()]},
            indent=2
        ))
    return 0


if __name__ == "__main__":
    sys.exit(main())
