#!/usr/bin/env python3
"""What ``runner run`` costs beyond the job itself: the README's first command, timed whole.

    python bench/run_overhead.py [--runs 7]        # about 15 seconds

Runs ``runner run resize --size 200x200 fixtures/images/rocket.jpg --json`` as a user does (a
fresh process each time, on the default embedded broker in a private data directory) and
subtracts the job's own duration (``duration`` in the result: the attempt as the worker timed
it, sandbox included) from the process's wall time.  What is left is the overhead: interpreter
start, imports, plugins, the one-off worker, submitting, waiting, exit.

Rows: with every first-party plugin loaded (the default), with only the media plugin
(``RUNNER_LOAD_PLUGINS=media``), and the floor of any Python command (``python -c pass``).
The issue-12 target is an overhead of at most 0.5 s with every plugin loaded.  It prints
figures (minimum, median, maximum of the runs); it asserts nothing.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
IMAGE = ROOT / "fixtures" / "images" / "rocket.jpg"
TARGET = 0.5


def run_once(env: dict[str, str], workdir: Path) -> tuple[float, float]:
    """Wall time of one ``runner run`` and the job's own duration, in seconds."""
    started = time.perf_counter()
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "run", "resize", "--size", "200x200",
         str(workdir / IMAGE.name), "--json"],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=120, check=False,
    )
    wall = time.perf_counter() - started
    if done.returncode != 0:
        raise SystemExit(f"runner run failed ({done.returncode}):\n{done.stderr}")
    return wall, float(json.loads(done.stdout)["duration"])


def floor(runs: int) -> list[float]:
    walls = []
    for _ in range(runs):
        started = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        walls.append(time.perf_counter() - started)
    return walls


def spread(values: list[float]) -> str:
    return f"{min(values):6.3f} {statistics.median(values):6.3f} {max(values):6.3f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--runs", type=int, default=7, help="runs per row (default 7)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        shutil.copy(IMAGE, tmp / IMAGE.name)
        # A user's Python caches bytecode; a shell that turned that off would time compiling.
        base = {k: v for k, v in os.environ.items()
                if not k.startswith("RUNNER_") and k != "PYTHONDONTWRITEBYTECODE"}
        base.update(XDG_DATA_HOME=str(tmp / "data"), RUNNER_WORKDIR=str(tmp / "work"))
        rows = []
        for label, extra in (("every first-party plugin", {}),
                             ("media plugin only", {"RUNNER_LOAD_PLUGINS": "media"})):
            env = {**base, **extra}
            run_once(env, tmp)  # the first run creates the broker file and the bytecode cache
            timed = [run_once(env, tmp) for _ in range(args.runs)]
            walls = [w for w, _ in timed]
            jobs = [j for _, j in timed]
            rows.append((label, walls, jobs, [w - j for w, j in timed]))
        python = floor(args.runs)
    print(f"runner run resize --size 200x200 rocket.jpg; {args.runs} runs each; "
          f"{time.strftime('%Y-%m-%d')}, {os.cpu_count()} cores; min median max, seconds")
    print(f"{'plugins':<26} {'wall':>20} {'job':>20} {'overhead':>20}")
    for label, walls, jobs, over in rows:
        print(f"{label:<26} {spread(walls):>20} {spread(jobs):>20} {spread(over):>20}")
    print(f"{'python -c pass':<26} {spread(python):>20}")
    every = statistics.median(rows[0][3])
    verdict = "within" if every <= TARGET else "over"
    print(f"median overhead with every plugin: {every:.3f} s ({verdict} the {TARGET} s target)")


if __name__ == "__main__":
    main()
