"""Job types used by the test suite (loaded with RUNNER_PLUGINS=jobs_plugin)."""

from __future__ import annotations

import os
import time

import click

from runner import JobContext, JobType, RetryPolicy, hookimpl

FAST = RetryPolicy(attempts=3, backoff=0, jitter=0)


def echo(ctx: JobContext, text: str, shout: bool) -> dict:
    (ctx.out_dir / "echo.txt").write_text(text.upper() if shout else text)
    return {"text": text, "attempt": ctx.attempt}


def flaky(ctx: JobContext, fail_times: int) -> int:
    if ctx.attempt <= fail_times:
        raise RuntimeError(f"flaky failure on attempt {ctx.attempt}")
    return ctx.attempt


def boom(ctx: JobContext, message: str) -> None:
    raise ValueError(f"boom: {message}")


def sleeper(ctx: JobContext, seconds: float) -> float:
    time.sleep(seconds)
    return seconds


@hookimpl
def register_jobs(register):
    register(JobType(
        name="echo", help="Echo a text into out/echo.txt.", function="jobs_plugin:echo",
        params=[click.Option(["--text"], required=True), click.Option(["--shout"], is_flag=True)],
        retry=FAST,
    ))
    register(JobType(
        name="flaky", function="jobs_plugin:flaky", retry=RetryPolicy(attempts=4, backoff=0, jitter=0),
        params=[click.Option(["--fail-times"], type=int, default=1)],
    ))
    register(JobType(
        name="boom", function="jobs_plugin:boom", retry=RetryPolicy(attempts=2, backoff=0, jitter=0),
        params=[click.Option(["--message"], default="bad input")],
    ))
    register(JobType(
        name="sleeper", function="jobs_plugin:sleeper", retry=FAST, timeout=60,
        params=[click.Option(["--seconds"], type=float, default=1.0)],
    ))
    register(JobType(
        name="spawner", help="Leave busy grandchildren behind, then hang.",
        argv=lambda p, ctx: ["sh", "-c", f"sleep {p['marker']} & sleep {p['marker']} & "
                             f"(sleep {p['marker']} &) ; sleep {p['marker']}"],
        params=[click.Option(["--marker"], required=True)],
        timeout=1.0, retry=RetryPolicy(attempts=1),
    ))
    register(JobType(
        name="exitcode", argv=lambda p, ctx: ["sh", "-c", f"echo failing >&2; exit {p['code']}"],
        params=[click.Option(["--code"], type=int, required=True)],
        retry=RetryPolicy(attempts=3, backoff=0, jitter=0, retry_on_exit=(75,)),
    ))


@hookimpl
def job_succeeded(message, result):
    ledger = os.environ.get("RUNNER_TEST_LEDGER")
    if ledger:
        with open(ledger, "a") as fh:
            fh.write(f"{message.id} {result.worker}\n")


@hookimpl(specname="register_jobs")
def register_sandbox_probes(register):
    register(JobType(
        name="envdump", help="Print the job's environment.", argv=lambda p, ctx: ["env"],
        retry=RetryPolicy(attempts=1),
    ))
    register(JobType(
        name="symlinker", help="Plant a symlink to a file outside the work dir in out/.",
        argv=lambda p, ctx: ["sh", "-c", f"ln -s {p['target']} out/leak.txt; echo real > out/real.txt"],
        params=[click.Option(["--target"], required=True)], retry=RetryPolicy(attempts=1),
    ))
    register(JobType(
        name="bigoutput", argv=lambda p, ctx: ["sh", "-c", f"head -c {p['size']} /dev/zero > out/big.bin"],
        params=[click.Option(["--size"], type=int, required=True)], retry=RetryPolicy(attempts=1),
    ))


@hookimpl(specname="register_jobs")
def register_trivial(register):
    register(JobType(name="noop", help="Do nothing, quickly.", argv=lambda p, ctx: ["true"],
                     params=[click.Option(["--n"], type=int, default=0)], retry=FAST))


def stepper(ctx: JobContext, steps: int) -> int:
    for i in range(1, steps + 1):
        ctx.progress(i, steps, f"step {i}")
        time.sleep(0.3)  # the job's own pace, so that the worker sees several updates
    return steps


@hookimpl(specname="register_jobs")
def register_progress(register):
    register(JobType(name="stepper", help="Report progress as it goes.", function="jobs_plugin:stepper",
                     params=[click.Option(["--steps"], type=int, default=4)], retry=FAST))
    register(JobType(
        name="stepper-sh", help="Report progress from a shell script.",
        argv=lambda p, ctx: ["sh", "-c", "for i in 1 2 3 4; do echo \"runner-progress: $((i*25))% part $i\"; sleep 0.3; done"],
        retry=FAST,
    ))


@hookimpl(specname="register_jobs")
def register_napper(register):
    # `sleep <seconds>` with the seconds as text: a unique value marks the process in /proc.
    register(JobType(name="napper", help="Sleep, as a plain process.",
                     argv=lambda p, ctx: ["sleep", p["seconds"]],
                     params=[click.Option(["--seconds"], required=True)], timeout=120,
                     retry=RetryPolicy(attempts=1)))


@hookimpl(specname="job_started")
def hang_in_a_hook(message):
    # A plugin hook that never returns (tests/test_worker_log.py): its slot can never end.
    if message.params.get("seconds") == "hang-in-hook":
        time.sleep(3600)
def collect(ctx: JobContext, label: str) -> dict:
    """A group callback: what it was handed (members.json and the members' output files)."""
    import json

    listing = json.loads((ctx.in_dir / "members.json").read_text())
    texts = [(ctx.in_dir / name).read_text() for m in listing["members"] for name in m["outputs"]]
    (ctx.out_dir / "collected.txt").write_text("\n".join(texts))
    return {"label": label, "group": listing["group"], "texts": texts,
            "members": [[m["id"], m["status"], m["error"]] for m in listing["members"]],
            "values": [m["value"] for m in listing["members"]]}


def shout_file(ctx: JobContext, text_file: str) -> str:
    from pathlib import Path

    path = Path(text_file)
    (ctx.out_dir / f"loud-{path.name}").write_text(path.read_text().upper() + "!")
    return path.name


@hookimpl(specname="register_jobs")
def register_groups(register):
    register(JobType(name="collect", help="Collect a group's members.", function="jobs_plugin:collect",
                     params=[click.Option(["--label"], default="")], retry=FAST))
    register(JobType(name="shout-file", help="Upper-case a text file.", function="jobs_plugin:shout_file",
                     params=[click.Argument(["text_file"])], inputs=("text_file",), retry=FAST))
