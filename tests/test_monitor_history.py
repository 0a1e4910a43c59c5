"""The monitor's history store and the ``runner status`` / ``runner jobs`` commands over it."""

from __future__ import annotations

import json
import subprocess
import sys
import time

from click.testing import CliRunner

from runner.cli import cli
from runner_monitor import events as ev
from runner_monitor.history import History


def job_event(name: str, job_id: str, ts: float, **fields) -> dict:
    event = ev.new_event(name, {"worker": "box1", "host": "h", "pid": 7}, 1, job_id=job_id,
                         job="resize", route="default", queue="default", attempt=1, **fields)
    event["ts"] = ts
    return event


def story(job_id: str, t0: float) -> list[dict]:
    """A job failing once, retried, then dead."""
    return [
        job_event("job.received", job_id, t0, params={"size": "200x200"},
                  options={"attempts": 2}, created_at=t0 - 1),
        job_event("job.started", job_id, t0 + 0.1),
        job_event("job.failed", job_id, t0 + 1, final=False, error="OSError: bad", duration=0.9,
                  traceback="Traceback ...\nOSError: bad", stderr="oops"),
        job_event("job.retried", job_id, t0 + 1.01, delay=5, next_attempt=2, error="OSError: bad"),
        {**job_event("job.started", job_id, t0 + 6), "attempt": 2},
        {**job_event("job.failed", job_id, t0 + 7, final=True, error="OSError: worse",
                     duration=1.0, traceback="Traceback ...\nOSError: worse",
                     history=[{"attempt": 1, "finished_at": t0 + 1, "error": "OSError: bad"},
                              {"attempt": 2, "finished_at": t0 + 7, "error": "OSError: worse"}]),
         "attempt": 2},
        {**job_event("job.dead", job_id, t0 + 7.01, reason="attempts exhausted"), "attempt": 2},
    ]


def test_events_fold_into_a_job_with_its_attempts(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    t0 = time.time() - 60
    assert history.record(story("j1", t0)) == 7
    job = history.job("j1")
    assert job["state"] == "dead" and job["attempt"] == 2 and job["attempts_allowed"] == 2
    assert job["error"] == "OSError: worse" and job["dead_reason"] == "attempts exhausted"
    assert job["params"] == {"size": "200x200"}
    assert [(a["attempt"], a["outcome"], a["error"]) for a in job["attempts"]] == [
        (1, "failed", "OSError: bad"), (2, "failed", "OSError: worse")]
    assert job["retryable"] is True
    counts = {(r["job"], r["state"]): r["n"] for r in history.counters()["jobs"]}
    assert counts[("resize", "failed")] == 2 and counts[("resize", "dead")] == 1


def test_duplicate_and_late_events_change_nothing(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    events = story("j1", time.time() - 60)
    history.record(events)
    generation = history.generation
    # The same events again (at-least-once delivery): ignored
    assert history.record(events) == 0 and history.generation == generation
    # An older event arriving late: kept in the timeline, the state does not go back
    history.record([job_event("job.started", "j1", events[0]["ts"] + 0.5)])
    assert history.job("j1")["state"] == "dead"
    assert len(history.job("j1")["events"]) == 8


def test_a_late_event_of_an_earlier_attempt_does_not_undo_a_later_one(tmp_path):
    # Attempt 2 can run on another slot before attempt 1's failure is reported
    history = History(tmp_path / "h.sqlite3")
    t0 = time.time() - 60
    history.record([
        job_event("job.started", "j1", t0),
        {**job_event("job.started", "j1", t0 + 1), "attempt": 2},
        {**job_event("job.succeeded", "j1", t0 + 2, duration=1.0), "attempt": 2},
        job_event("job.failed", "j1", t0 + 3, final=False, error="flaky"),
        job_event("job.retried", "j1", t0 + 3.1, delay=0, next_attempt=2),
    ])
    job = history.job("j1")
    assert (job["state"], job["attempt"]) == ("succeeded", 2)
    assert [a["outcome"] for a in job["attempts"]] == ["succeeded", "failed"]


def test_a_dead_job_sent_back_runs_again_whichever_event_comes_first(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    t0 = time.time() - 60
    run = [job_event("job.received", "j1", t0 + 20), job_event("job.started", "j1", t0 + 20.1),
           job_event("job.succeeded", "j1", t0 + 21, duration=0.9)]
    note = ev.new_event("job.resubmitted", {"worker": None, "host": None, "pid": None}, 0,
                        job_id="j1", job="resize", attempt=1, by="bearer")
    note["ts"] = t0 + 19.9
    # `runner dead retry` (no note): the new run's attempt 1 follows attempt 2's death
    history.record(story("j1", t0) + run)
    assert (history.job("j1")["state"], history.job("j1")["attempt"]) == ("succeeded", 1)
    # The monitor's Retry note arriving after the worker's events changes nothing
    late = History(tmp_path / "late.sqlite3")
    late.record(story("j1", t0) + run + [note])
    assert late.job("j1")["state"] == "succeeded"
    assert [e["event"] for e in late.job("j1")["events"]][-4:] == [
        "job.resubmitted", "job.received", "job.started", "job.succeeded"]
    # ... and arriving first, it shows the job queued until a worker takes it
    first = History(tmp_path / "first.sqlite3")
    first.record(story("j1", t0) + [note])
    assert first.job("j1")["state"] == "queued"
    first.record(run)
    assert first.job("j1")["state"] == "succeeded"


def test_history_survives_reopening_and_forgets_past_the_retention(tmp_path):
    path = tmp_path / "h.sqlite3"
    history = History(path, retention=3600)
    history.record(story("old", time.time() - 7200) + story("new", time.time() - 60))
    history.close()
    reopened = History(path, retention=3600)
    assert {j["id"] for j in reopened.jobs()["jobs"]} == {"old", "new"}
    assert reopened.prune() == 1
    assert [j["id"] for j in reopened.jobs()["jobs"]] == ["new"]
    # Counters for /metrics outlive the jobs they counted
    counts = {(r["job"], r["state"]): r["n"] for r in reopened.counters()["jobs"]}
    assert counts[("resize", "dead")] == 2


def test_a_worker_that_stops_beating_is_lost(tmp_path):
    history = History(tmp_path / "h.sqlite3")
    now = time.time()
    online = ev.new_event("worker.online", {"worker": "box1", "host": "h", "pid": 1}, 1,
                          queue="default", bindings=["default.#"], concurrency=4, interval=5.0)
    online["ts"] = now
    history.record([online])
    assert history.workers(now + 5)[0]["state"] == "online"
    assert history.workers(now + 60)[0]["state"] == "lost"
    assert history.queues(now + 5)[0]["consumers"] == 1


def test_runner_jobs_and_status_read_the_history_file(tmp_path):
    path = tmp_path / "h.sqlite3"
    history = History(path)
    history.record(story("abc123", time.time() - 60))
    history.close()
    runner = CliRunner()
    listed = runner.invoke(cli, ["jobs", "--db", str(path)])
    assert listed.exit_code == 0, listed.output
    assert listed.output.startswith("abc123  resize       dead")
    assert "OSError: worse" in listed.output
    shown = runner.invoke(cli, ["status", "abc", "--db", str(path)])
    assert shown.exit_code == 0, shown.output
    assert "abc123  resize  dead (attempts exhausted)" in shown.output
    assert "#1 failed on box1" in shown.output and "--- traceback ---" in shown.output
    as_json = json.loads(runner.invoke(cli, ["status", "abc123", "--json", "--db", str(path)]).output)
    assert as_json["state"] == "dead" and len(as_json["events"]) == 7
    none = runner.invoke(cli, ["jobs", "--state", "succeeded", "--db", str(path)])
    assert none.output == "no jobs\n"


def test_an_unknown_job_is_one_line_and_exit_code_3(tmp_path):
    path = tmp_path / "h.sqlite3"
    History(path).close()
    done = subprocess.run(
        [sys.executable, "-m", "runner.cli", "status", "nope", "--db", str(path)],
        capture_output=True, text=True,
    )
    assert done.returncode == 3
    assert done.stderr.strip() == f"error: no job nope in the monitor's history ({path})"
    missing = subprocess.run(
        [sys.executable, "-m", "runner.cli", "jobs", "--db", str(tmp_path / "none.sqlite3")],
        capture_output=True, text=True,
    )
    assert missing.returncode == 3 and "no monitor history at" in missing.stderr


def test_each_completed_run_is_recorded_and_repeats_are_marked(tmp_path):
    # Given a job whose attempt 1 ran to success twice (its first ack was lost in a broker restart)
    history = History(tmp_path / "h.sqlite3")
    t0 = time.time() - 60
    history.record([
        job_event("job.received", "j1", t0),
        {**job_event("job.started", "j1", t0 + 0.1), "worker": "box1"},
        {**job_event("job.succeeded", "j1", t0 + 1, duration=0.9), "worker": "box1"},
        {**job_event("job.started", "j1", t0 + 5), "worker": "box2"},
        {**job_event("job.succeeded", "j1", t0 + 6, duration=1.0), "worker": "box2"},
        job_event("job.received", "j2", t0),
        job_event("job.succeeded", "j2", t0 + 1, duration=0.5),
    ])
    # Then the job shows both runs, the second marked as a repeat; a job run once is not marked
    job = history.job("j1")
    assert job["runs"] == 2 and job["repeats"] == 1
    assert [(a["worker"], a["outcome"], a["repeat"]) for a in job["attempts"]] == [
        ("box1", "succeeded", False), ("box2", "succeeded", True)]
    listed = {j["id"]: (j["runs"], j["repeats"]) for j in history.jobs()["jobs"]}
    assert listed == {"j1": (2, 1), "j2": (1, 0)}
    counts = {(r["job"], r["state"]): r["n"] for r in history.counters()["jobs"]}
    assert counts[("resize", "repeated")] == 1 and counts[("resize", "succeeded")] == 3


def test_a_history_of_the_previous_schema_is_migrated(tmp_path):
    import sqlite3
    path = tmp_path / "h.sqlite3"
    History(path).close()
    db = sqlite3.connect(path)  # make it look like a version 1 file: no run counts
    db.executescript("DROP TABLE jobs; CREATE TABLE jobs (id TEXT PRIMARY KEY, job TEXT, route TEXT,"
                     " queue TEXT, state TEXT NOT NULL, attempt INTEGER, attempts_allowed INTEGER,"
                     " worker TEXT, submitted_at REAL, first_seen REAL NOT NULL, updated REAL NOT NULL,"
                     " started_at REAL, finished_at REAL, duration REAL, params TEXT, files TEXT,"
                     " options TEXT, error TEXT, traceback TEXT, stdout TEXT, stderr TEXT,"
                     " exit_code INTEGER, outputs TEXT, value TEXT, history TEXT, dead_reason TEXT,"
                     " retry_delay REAL); PRAGMA user_version=1;")
    db.close()
    history = History(path)
    history.record([job_event("job.received", "j1", time.time()),
                    job_event("job.succeeded", "j1", time.time(), duration=0.1)])
    assert history.job("j1")["runs"] == 1
