"""Chaos run: many jobs through a fleet whose workers are SIGKILLed and whose broker restarts.

Counts what matters: jobs lost (confirmed at submit, never completed nor dead-lettered) and jobs
run to completion twice, with the reason of each duplicate, read from the workers' logs and the
chaos timeline.  Every completed run is reported by the job itself (``bench/chaos_jobs.py``:
one UDP datagram), so a run counts even if its worker died before it could log or acknowledge.

Never point it at a broker others use: it restarts the broker (``rabbitmqctl -n NODE
stop_app / start_app``).  Start a private node first (see bench/README.md, "Chaos run")::

    python bench/chaos.py --url amqp://guest:guest@127.0.0.1:5673/ --node chaos18@localhost \\
        --jobs 2000 --kills 11 --json bench/results/chaos-$(date +%F).json
"""

from __future__ import annotations

import argparse
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))


class Completions:
    """Job runs reported by the jobs themselves over UDP: (job id, attempt, time)."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
        self.port = self.sock.getsockname()[1]
        self.runs: list[tuple[str, int, float]] = []
        self.lock = threading.Lock()
        threading.Thread(target=self._listen, daemon=True).start()

    def _listen(self) -> None:
        while True:
            data = self.sock.recv(256).decode(errors="replace").split()
            if len(data) == 2:
                with self.lock:
                    self.runs.append((data[0], int(data[1]), time.time()))

    def by_job(self) -> dict[str, list[tuple[int, float]]]:
        out: dict[str, list[tuple[int, float]]] = defaultdict(list)
        with self.lock:
            for job_id, attempt, at in self.runs:
                out[job_id].append((attempt, at))
        return out


class Fleet:
    """Worker processes, each logging to its own file; killed and replaced on demand."""

    def __init__(self, url: str, queue: str, route: str, concurrency: int, root: Path) -> None:
        self.url, self.queue, self.route, self.concurrency, self.root = url, queue, route, concurrency, root
        self.procs: list[tuple[subprocess.Popen[bytes], Path]] = []
        self.timeline: list[tuple[float, str]] = []

    def start(self) -> subprocess.Popen[bytes]:
        log = self.root / f"worker-{len(self.procs)}.log"
        env = {**os.environ, "RUNNER_BROKER_URL": self.url, "RUNNER_PLUGINS": "chaos_jobs",
               "RUNNER_WORKDIR": str(self.root / "work"),
               "PYTHONPATH": os.pathsep.join([str(HERE), os.environ.get("PYTHONPATH", "")])}
        proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "worker", "--queue", self.queue, "--bind",
             f"{self.route}.#", "-c", str(self.concurrency)],
            env=env, stdout=log.open("wb"), stderr=subprocess.STDOUT, start_new_session=True,
        )
        self.procs.append((proc, log))
        self.timeline.append((time.time(), f"start worker pid {proc.pid}"))
        return proc

    def live(self) -> list[subprocess.Popen[bytes]]:
        return [p for p, _ in self.procs if p.poll() is None]

    def kill_one(self) -> int:
        victim = random.choice(self.live())
        victim.send_signal(signal.SIGKILL)
        victim.wait()
        self.timeline.append((time.time(), f"SIGKILL worker pid {victim.pid}"))
        return victim.pid

    def stop(self) -> None:
        for proc in self.live():
            proc.send_signal(signal.SIGTERM)
        for proc in self.live():
            try:
                proc.wait(60)
            except subprocess.TimeoutExpired:
                proc.kill()

    def logs(self) -> dict[int, list[str]]:
        return {p.pid: log.read_text(errors="replace").splitlines() for p, log in self.procs}


def restart_broker(node: str, timeline: list[tuple[float, str]]) -> None:
    timeline.append((time.time(), "broker stop_app"))
    for action in ("stop_app", "start_app", "await_startup"):
        subprocess.run(["rabbitmqctl", "-n", node, action], check=True, capture_output=True, timeout=120)
    timeline.append((time.time(), "broker started again"))


def submit_all(url: str, route: str, jobs: int, port: int, pace: float, out: dict[str, Any]) -> None:
    """Submit ``jobs`` jobs; one that fails to publish is sent again with the same id."""
    from runner.broker import connect
    from runner.client import Client
    from runner.config import Settings
    from runner.errors import BrokerError
    from runner.plugins import make_plugins

    plugins = make_plugins(modules=["chaos_jobs"])
    client = Client(connect(url), plugins, Settings(broker_url=url))
    for n in range(jobs):
        job_id = uuid.uuid4().hex
        seconds = 0.0 if random.random() < 0.7 else round(random.uniform(0.2, 1.5), 3)
        for tries in range(1, 200):
            try:
                client.submit("chaos", {"seconds": seconds, "port": port}, route=route, job_id=job_id)
                break
            except BrokerError:
                out["resent"][job_id] = tries  # maybe published, maybe not: sent again
                time.sleep(0.5)
        else:
            out["unsent"].append(job_id)
            continue
        out["confirmed"].append(job_id)
        time.sleep(pace)
    client.close()


def _stamp(line: str) -> float:
    """The time of a worker log line (``2026-12-08 02:12:31,835 INFO ...``), epoch seconds."""
    day, clock = line.split()[:2]
    return time.mktime(time.strptime(f"{day} {clock[:8]}", "%Y-%m-%d %H:%M:%S")) - time.timezone \
        + int(clock[9:12]) / 1000


def explain(job_id: str, runs: list[tuple[int, float]], logs: dict[int, list[str]],
            timeline: list[tuple[float, str]], resent: dict[str, int]) -> str:
    """Why a job ran to completion more than once, from what the workers logged."""
    lines = {pid: [line for line in text if job_id in line] for pid, text in logs.items()}
    lines = {pid: found for pid, found in lines.items() if found}
    if any("could not settle" in line for found in lines.values() for line in found):
        return "its outcome could not be acknowledged (the connection was lost in the broker restart): delivered again"
    if job_id in resent:
        return "the client sent it again after a publish failed (its confirm was lost in the broker restart)"
    killed = {int(m.group(1)): at for at, what in timeline if (m := re.match(r"SIGKILL worker pid (\d+)", what))}
    restarts = [at for at, what in timeline if what == "broker stop_app"]
    # Two copies at once: a copy re-published (to defer a suspect, or to count a redelivery)
    # and the original, because the worker died (or lost its connection) between the publish
    # and the acknowledgement of the original.
    for pid, found in lines.items():
        if pid in killed and found and "deferred" in found[-1] and killed[pid] - _stamp(found[-1]) < 2:
            return ("two copies: its worker deferred it (published a delayed copy) and was "
                    "SIGKILLed before acknowledging the original")
    spans = [(_stamp(a), _stamp(b)) for found in lines.values()
             for a, b in zip(found, found[1:]) if "started" in a and "succeeded in" in b]
    seen = [_stamp(line) for found in lines.values() for line in found if "deferred" in line or "started" in line]
    if sum(1 for found in lines.values() for line in found if "succeeded in" in line) > 1 or any(
            start < at < end for start, end in spans for at in seen):
        near = any(abs(at - r) < 30 for at in seen for r in restarts)
        return ("two copies: a re-published copy (deferral or redelivery count) whose original was "
                "not acknowledged" + (" before the connection dropped in the broker restart" if near else ""))
    for pid, found in lines.items():
        finished = any("succeeded in" in line or "dead after" in line for line in found)
        if pid in killed and not finished and any(at <= killed[pid] for _, at in runs):
            return "its worker was SIGKILLed after the run completed, before the outcome was acknowledged"
    if restarts and any(abs(at - r) < 30 for _, at in runs for r in restarts):
        return "completed around the broker restart; no worker logged a lost settlement (lost ack)"
    return "unexplained"


def reexplain(result: dict[str, Any], logdir: Path) -> dict[str, str]:
    """Explain the duplicates of a saved run again (``--reexplain``), from its logs."""
    pids = [int(w.split()[-1]) for _, w in result["timeline"] if w.startswith("start worker pid")]
    logs = {pid: (logdir / f"worker-{n}.log").read_text(errors="replace").splitlines()
            for n, pid in enumerate(pids)}
    timeline = [(at, what) for at, what in result["timeline"]]
    return {j: explain(j, [(0, at) for at in result["runs"][j]], logs, timeline, {})
            for j in result["duplicates"]}


def report(out: dict[str, Any], completions: Completions, fleet: Fleet, dead: list[Any]) -> dict[str, Any]:
    runs = completions.by_job()
    dead_ids = {env.message_id: str(env.headers.get("x-runner-dead-reason")) for env in dead}
    confirmed = out["confirmed"]
    lost = [j for j in confirmed if j not in runs and j not in dead_ids]
    # A run is one completion of one attempt; a retry is a new attempt, not a duplicate.
    twice = {j: r for j, r in runs.items() if len(r) > len({a for a, _ in r})}
    logs = fleet.logs()
    reasons = {j: explain(j, r, logs, fleet.timeline, out["resent"]) for j, r in twice.items()}
    return {
        "jobs_confirmed": len(confirmed), "jobs_unsent": len(out["unsent"]),
        "jobs_completed": sum(1 for j in confirmed if j in runs),
        "jobs_dead_lettered": sum(1 for j in confirmed if j in dead_ids),
        "dead_reasons": Counter(dead_ids[j] for j in confirmed if j in dead_ids),
        "jobs_lost": lost, "jobs_run_twice": len(twice),
        "duplicate_reasons": Counter(reasons.values()), "duplicates": reasons,
        "runs": {j: [round(at, 3) for _, at in r] for j, r in twice.items()},
        "resent_by_client": len(out["resent"]),
        "worker_kills": sum(1 for _, w in fleet.timeline if w.startswith("SIGKILL")),
        "timeline": [(round(at, 3), what) for at, what in fleet.timeline],
    }


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--url", required=True)
    ap.add_argument("--node", help="rabbitmqctl node name to restart once (omit: no restart)")
    ap.add_argument("--jobs", type=int, default=2000)
    ap.add_argument("--kills", type=int, default=11)
    ap.add_argument("--workers", type=int, default=3)
    ap.add_argument("--concurrency", type=int, default=4)
    ap.add_argument("--pace", type=float, default=0.02, help="seconds between submissions")
    ap.add_argument("--deadline", type=float, default=900)
    ap.add_argument("--json", type=Path)
    args = ap.parse_args()

    from runner.broker import connect

    route = f"chaos{uuid.uuid4().hex[:6]}"
    queue = f"chaos.{route}"
    root = Path(tempfile.mkdtemp(prefix="runner-chaos-"))
    with connect(args.url) as broker:
        broker.declare_queue(queue, [f"{route}.#"])
    completions = Completions()
    fleet = Fleet(args.url, queue, route, args.concurrency, root)
    out: dict[str, Any] = {"confirmed": [], "unsent": [], "resent": {}}
    for _ in range(args.workers):
        fleet.start()
    submitter = threading.Thread(target=submit_all, args=(args.url, route, args.jobs, completions.port, args.pace, out))
    submitter.start()
    started = time.time()
    try:
        for k in range(args.kills):
            time.sleep(random.uniform(2, 5))
            fleet.kill_one()
            fleet.start()
            if args.node and k == args.kills // 2:
                restart_broker(args.node, fleet.timeline)
        submitter.join()
        print(f"chaos over after {time.time() - started:.0f}s; waiting for the queue to drain", flush=True)
        deadline = time.time() + args.deadline
        while time.time() < deadline:
            runs = completions.by_job()
            with connect(args.url) as broker:
                dead = {e.message_id for e in broker.dead_letters(100000)}
                depth = broker.queue_depth(queue)
            if depth == 0 and all(j in runs or j in dead for j in out["confirmed"]):
                break
            time.sleep(2)
        time.sleep(5)  # late datagrams and settlements
    finally:
        fleet.stop()
        with connect(args.url) as broker:
            dead_letters = [e for e in broker.dead_letters(100000) if e.routing_key.startswith(route)]
            broker.delete_queue(queue)
    result = report(out, completions, fleet, dead_letters)
    result["elapsed_s"] = round(time.time() - started, 1)
    result["logs"] = str(root)
    text = json.dumps(result, indent=2, default=str)
    if args.json:
        args.json.write_text(text + "\n")
    summary = {k: v for k, v in result.items() if k not in ("timeline", "duplicates", "runs")}
    print(json.dumps(summary, indent=2, default=str))
    return 0 if not result["jobs_lost"] else 1


if __name__ == "__main__":
    sys.exit(main())
