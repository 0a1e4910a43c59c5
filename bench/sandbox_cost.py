"""Per-job cost of each sandbox layer, against a bare subprocess.

Spawns a trivial job (``/bin/true``) through the real exec chain that :class:`runner.sandbox.chain.Jail`
builds, once per layer combination, and reports the median wall time of spawn + wait + cleanup
over repeated runs (``--runs``: blocks of back-to-back jobs per combination, the blocks
taking turns over three rounds, each block after a few warm-up runs).  A second table does the same for a
function job's interpreter start (``python -I -c pass``), bare and in the full sandbox.

    python bench/sandbox_cost.py               # markdown table on stdout
    python bench/sandbox_cost.py --json out.json

Layers the host does not offer are reported as unavailable, not measured.  Run it as root to
measure the slot uid and cgroup layers.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from runner.sandbox import reaper
from runner.sandbox import run as sandbox
from runner.execution import python_paths
from runner.sandbox.chain import Jail
from runner.jobs import JobType, SandboxProfile
from runner.sandbox.probe import probe
from runner.sandbox.warm import WarmSlots
from runner.execution import job_limits

ALL = ("uid", "cgroup", "network", "bwrap", "seccomp", "landlock")
# (label, layers kept on top of the basic layer)
COMBINATIONS = (
    ("basic: session, env, rlimits, pdeathsig", ()),
    ("+ slot uid (setpriv)", ("uid",)),
    ("+ cgroup (memory, pids, kill)", ("cgroup",)),
    ("+ network namespace (unshare)", ("network",)),
    ("+ bwrap (namespaces, binds)", ("bwrap", "network")),
    ("+ bwrap + seccomp", ("bwrap", "network", "seccomp")),
    ("full: all of the above", ALL),
)
PROFILE = SandboxProfile()


def bare(argv: list[str], cwd: Path) -> None:
    subprocess.run(argv, cwd=cwd, env={"PATH": sandbox.SAFE_PATH}, stdin=subprocess.DEVNULL,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, close_fds=True, check=True)


def through(jail: Jail | None, argv: list[str], workdir: Path, logs: Path, read_only=()) -> None:
    launch = jail.prepare(PROFILE, argv, workdir, 0, read_only) if jail else None
    done = sandbox.run(argv, cwd=workdir, logs=logs, profile=PROFILE, timeout=30, launch=launch)
    if done.exit_code != 0:
        raise RuntimeError(f"{argv} failed in the sandbox: {done.stderr.strip()}")


def round_robin(cases: dict[str, object], runs: int, rounds: int = 3, warmup: int = 3) -> dict[str, float]:
    """Median milliseconds of each case.

    Each case runs in blocks of back-to-back jobs (as a worker slot runs them), and the blocks
    take turns over ``rounds`` rounds, so that load on the box hits every case alike.
    """
    times: dict[str, list[float]] = {name: [] for name in cases}
    block = max(1, runs // rounds)
    for _ in range(rounds):
        for name, fn in cases.items():
            for i in range(warmup + block):
                start = time.perf_counter()
                fn()  # type: ignore[operator]
                if i >= warmup:
                    times[name].append((time.perf_counter() - start) * 1000)
    return {name: statistics.median(values) for name, values in times.items()}


def measure(runs: int) -> dict:
    reaper.install()
    report = probe()
    root = Path(tempfile.mkdtemp(prefix="runner-bench-"))
    root.chmod(0o711)
    logs = root / "log"
    results: dict = {"runs": runs, "host": report.to_json()["active"], "true": [], "python": [],
                     "load_before": os.getloadavg()[0]}
    true = ["/bin/true"]
    py = [sys.executable, "-I", "-c", "pass"]
    jails: list[Jail] = []

    def jailed(keep: tuple[str, ...], argv: list[str], read_only=()):
        jail = Jail(report, {"disable": [n for n in ALL if n not in keep]}, 1)
        jails.append(jail)
        workdir = root / f"job{len(jails)}"
        workdir.mkdir()
        uid = jail.uid_for(0)
        if uid is not None:
            os.chown(workdir, uid, uid)
        return lambda: through(jail if keep else None, argv, workdir, logs, read_only)

    try:
        bare_dir = root / "bare"
        bare_dir.mkdir()
        cases: dict[str, object] = {"bare subprocess": lambda: bare(true, bare_dir)}
        unavailable = {}
        for label, keep in COMBINATIONS:
            missing = [n for n in keep if not report.active(n)]
            if missing:
                unavailable[label] = ", ".join(missing)
            else:
                cases[label] = jailed(keep, true)
        medians = round_robin(cases, runs)
        for label in ["bare subprocess", *(c[0] for c in COMBINATIONS)]:
            row = {"layers": label}
            row.update({"unavailable": unavailable[label]} if label in unavailable else {"median_ms": medians[label]})
            results["true"].append(row)
        warm_cases, warm = warmed(report, root, logs)
        medians = round_robin({"bare subprocess": lambda: bare(true, bare_dir), **warm_cases["true"]}, runs)
        results["true"] += [{"layers": k, "median_ms": v} for k, v in medians.items() if k != "bare subprocess"]
        binds = python_paths("runner.sandbox.child:main")[0]
        medians = round_robin({"bare subprocess": lambda: bare(py, bare_dir),
                               "full sandbox": jailed(ALL, py, binds), **warm_cases["python"]}, runs)
        results["python"] = [{"layers": k, "median_ms": v} for k, v in medians.items()]
    finally:
        if "warm" in locals():
            warm.close()
        for jail in jails:
            jail.close()
        subprocess.run(["rm", "-rf", str(root)], check=False)
    results["load_after"] = os.getloadavg()[0]
    return results


def warmed(report, root: Path, logs: Path):
    """Cases for a warm slot with every layer: a fork of the slot host per job."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    os.environ["PYTHONPATH"] = str(Path(__file__).resolve().parent)
    noop = JobType(name="noop", function="bench_jobs:noop")
    argv_job = JobType(name="true", argv=lambda p, ctx: ["/bin/true"])
    jail = Jail(report, {}, 1)
    warm = WarmSlots(jail, {"noop": noop, "true": argv_job}, root / "warm", 1)
    workdir = root / "warm" / "slot-0" / "job"
    spec = logs / "warm-spec.json"

    def run(job: JobType) -> None:
        host = warm.host_for(0, job)
        assert host is not None, "no warm host"
        workdir.mkdir(exist_ok=True)
        uid = jail.uid_for(0)
        if uid is not None:
            os.chown(workdir, uid, uid)
        fds: tuple[int, ...] = ()
        if job.function:
            spec.write_text(json.dumps({"function": job.function, "path": [], "params": {}, "context": {
                "job_id": "x", "job": "noop", "attempt": 1, "workdir": str(workdir)}}))
            fds = (os.open(spec, os.O_RDONLY), os.open(logs / "warm-result.json", os.O_WRONLY | os.O_CREAT | os.O_TRUNC))
        try:
            done = host.run("function" if job.function else "argv", ["/bin/true"], fds, cwd=workdir,
                            env=sandbox.job_environment(workdir), logs=logs, profile=PROFILE,
                            limits=job_limits(PROFILE, jail, 0), timeout=30, grace=5, cancel=None,
                            progress=None, slot=0, jail=jail)
        finally:
            for fd in fds:
                os.close(fd)
        if done.exit_code != 0:
            raise RuntimeError(f"warm {job.name} failed: {done.stderr.strip()}")

    logs.mkdir(exist_ok=True)
    cases = {"true": {"full, warm slot: posix_spawn from the slot host": lambda: run(argv_job)},
             "python": {"full, warm slot: fork + call from the slot host": lambda: run(noop)}}
    return cases, warm


def table(rows: list[dict], base: float) -> str:
    lines = ["| layers | median per job | over bare |", "| --- | --- | --- |"]
    for row in rows:
        if "unavailable" in row:
            lines.append(f"| {row['layers']} | unavailable ({row['unavailable']}) | |")
        else:
            lines.append(f"| {row['layers']} | {row['median_ms']:.2f} ms | {row['median_ms'] - base:+.2f} ms |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--json", type=Path, help="also write the figures here")
    args = parser.parse_args()
    logging.basicConfig(level=logging.WARNING)
    results = measure(args.runs)
    print(f"Active layers on this host: {', '.join(results['host'])}; median of {args.runs} runs, "
          f"in turns; load average {results['load_before']:.1f} -> {results['load_after']:.1f}.\n")
    print("`/bin/true`:\n")
    print(table(results["true"], results["true"][0]["median_ms"]))
    print("\n`python -I -c pass` (a function job's interpreter):\n")
    print(table(results["python"], results["python"][0]["median_ms"]))
    if args.json:
        args.json.write_text(json.dumps(results, indent=2) + "\n")


if __name__ == "__main__":
    main()
