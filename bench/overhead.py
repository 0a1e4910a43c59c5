#!/usr/bin/env python3
"""Where one trivial job's time goes on a worker, without any broker.

    python bench/overhead.py            # about 20 seconds

Times, one after the other (no concurrency), in milliseconds per job:

* ``runner.execution.execute`` of the bench's ``bench-true`` and ``bench-noop`` job types, with
  the work directory on the default temporary directory and on tmpfs (``/dev/shm``).  No jail is
  passed, so this is the basic sandbox layer (session, rlimits, parent-death signal, clean
  environment), the private work directory, output capture and clean-up.  What each further
  layer (slot uid, bwrap, seccomp, cgroup) adds is measured by ``sandbox_cost.py``;
* the pieces it is made of: the bare ``prlimit … setpriv … true`` chain, ``true`` alone, and the
  child interpreter: ``python -c pass``, the standard-library modules ``runner.sandbox.child`` needs, and
  ``import runner.sandbox.child`` itself.

It prints figures; it asserts nothing.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
os.environ["PYTHONPATH"] = os.pathsep.join(p for p in (str(BENCH), os.environ.get("PYTHONPATH", "")) if p)

from runner.sandbox import run as sandbox
from runner.execution import Verdict, execute
from runner.jobs import JobType, SandboxProfile
from runner.message import JobMessage
from runner.plugins import make_plugins


def timed(label: str, fn: Callable[[], object], n: int) -> float:
    fn()  # warm the page cache and any lazy set-up
    t0 = time.perf_counter()
    for _ in range(n):
        fn()
    ms = (time.perf_counter() - t0) / n * 1000
    print(f"{label:<62} {ms:8.2f} ms/job  (n={n})", flush=True)
    return ms


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--n-fast", type=int, default=300, help="repetitions of the ~ms cases")
    parser.add_argument("--n-slow", type=int, default=40, help="repetitions of the interpreter cases")
    args = parser.parse_args()

    plugins = make_plugins(load=(), modules=["bench_jobs"])
    roots = [tempfile.gettempdir()] + (["/dev/shm"] if os.path.isdir("/dev/shm") else [])
    for job_name, n in (("bench-true", args.n_fast), ("bench-noop", args.n_slow)):
        job = plugins.jobs.get(job_name)
        for root in roots:
            workroot = Path(tempfile.mkdtemp(prefix="runner-overhead-", dir=root))

            def one(job: JobType = job, workroot: Path = workroot) -> None:
                attempt = execute(job, JobMessage(job=job.name, params={}), {}, root=workroot, worker="bench")
                if attempt.verdict is not Verdict.SUCCEEDED:
                    raise RuntimeError(f"{job.name} failed: {attempt.result.error}")

            try:
                timed(f"execute({job_name}), work directory in {root}", one, n)
            finally:
                shutil.rmtree(workroot, ignore_errors=True)

    chain = sandbox.limit_chain(SandboxProfile())
    py = sys.executable
    for label, argv, n in (
        ("bare chain: prlimit … -- setpriv … -- true", [*chain, "true"], args.n_fast),
        ("true", ["true"], args.n_fast),
        ("python -c pass", [py, "-c", "pass"], args.n_slow),
        ("python -c 'import json, importlib, traceback, pathlib'", [py, "-c", "import json, importlib, traceback, pathlib"], args.n_slow),
        ("python -c 'import runner.sandbox.child'", [py, "-c", "import runner.sandbox.child"], args.n_slow),
        ("python -c 'import click'", [py, "-c", "import click"], args.n_slow),
        ("python -c 'import pluggy'", [py, "-c", "import pluggy"], args.n_slow),
    ):
        timed(label, lambda argv=argv: subprocess.run(argv, check=True), n)
    return 0


if __name__ == "__main__":
    sys.exit(main())
