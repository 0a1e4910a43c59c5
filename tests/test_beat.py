"""runner beat: periodic jobs from [schedule.NAME], fired once per slot by one leading beat."""

from __future__ import annotations

import datetime as dt
import json
import os
import signal
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import pytest

from runner.beat import Beat
from runner.broker import Delivery, connect
from runner.errors import ConfigError
from runner.message import JobMessage
from runner.schedule import UTC, Missed, ScheduleSpec, parse_schedules, plan, slot_job_id

from test_worker_resilience import wait_until

TESTS = Path(__file__).parent
BERLIN = "Europe/Berlin"


def at(text: str) -> dt.datetime:
    return dt.datetime.fromisoformat(text).astimezone(UTC)


# --- the pure core: plan(spec, now, last) ----------------------------------------------------
def test_a_cron_slot_fires_on_time_and_only_once():
    spec = ScheduleSpec(name="nightly", job="echo", cron="0 3 * * *", timezone=BERLIN)
    # Given the beat wakes just after 03:00 Berlin (02:00 UTC in winter)
    now = at("2026-12-01T02:00:00.2+00:00")
    # When it plans with no earlier record, and again after recording the slot
    first = plan(spec, now, None)
    again = plan(spec, now + dt.timedelta(seconds=5), first.handled)
    # Then the slot fires once
    assert first.fire == at("2026-12-01T02:00:00+00:00")
    assert again.fire is None and again.handled is None


def test_dst_spring_forward_a_time_in_the_gap_fires_once_at_the_end_of_the_gap():
    # Given 02:30 every day in Berlin; on 2026-03-29 clocks jump from 02:00 to 03:00
    spec = ScheduleSpec(name="n", job="echo", cron="30 2 * * *", timezone=BERLIN)
    runs = spec.upcoming(at("2026-03-28T12:00:00+00:00"), 3)
    # Then the day of the jump has one run, at 03:00 CEST (01:00 UTC), and the days around it 02:30
    assert [r.isoformat() for r in runs] == [
        "2026-03-29T03:00:00+02:00", "2026-03-30T02:30:00+02:00", "2026-03-31T02:30:00+02:00",
    ]
    # And the beat fires that slot exactly once on the day
    now, last, fired = at("2026-03-28T23:59:00+00:00"), None, []
    while now < at("2026-03-29T23:00:00+00:00"):
        decision = plan(spec, now, last)
        last = decision.handled or last
        if decision.fire:
            fired.append(decision.fire)
        now += dt.timedelta(seconds=20)
    assert fired == [at("2026-03-29T01:00:00+00:00")]


def test_dst_fall_back_a_repeated_time_fires_once():
    spec = ScheduleSpec(name="n", job="echo", cron="30 2 * * *", timezone=BERLIN)
    now, last, fired = at("2026-10-24T22:00:00+00:00"), None, []
    while now < at("2026-10-25T22:00:00+00:00"):
        decision = plan(spec, now, last)
        last = decision.handled or last
        if decision.fire:
            fired.append(decision.fire)
        now += dt.timedelta(seconds=20)
    assert fired == [at("2026-10-25T00:30:00+00:00")]  # 02:30 CEST, the first of the two


@pytest.mark.parametrize("missed, expected", [(Missed.SKIP, None), (Missed.ONCE, "2026-12-03T02:00:00+00:00")])
def test_missed_runs_after_downtime(missed, expected):
    # Given the last slot handled was two days before the beat comes back, at 10:00
    spec = ScheduleSpec(name="n", job="echo", cron="0 3 * * *", timezone=BERLIN, missed=missed)
    last = at("2026-12-01T02:00:00+00:00")
    decision = plan(spec, at("2026-12-03T09:00:00+00:00"), last)
    # Then "skip" fires nothing and "once" fires the most recent missed slot; both record it
    assert decision.fire == (None if expected is None else at(expected))
    assert decision.handled == at("2026-12-03T02:00:00+00:00")


def test_every_slots_are_aligned_so_all_beats_agree():
    spec = ScheduleSpec(name="n", job="echo", every=300)
    runs = spec.upcoming(at("2026-12-01T10:02:11+00:00"), 2)
    assert [r.isoformat() for r in runs] == ["2026-12-01T10:05:00+00:00", "2026-12-01T10:10:00+00:00"]


def test_slot_job_ids_are_deterministic():
    slot = at("2026-12-01T02:00:00+00:00")
    assert slot_job_id("nightly", slot) == slot_job_id("nightly", slot.astimezone(dt.timezone(dt.timedelta(hours=1))))
    assert slot_job_id("nightly", slot) != slot_job_id("other", slot)


@pytest.mark.parametrize("table, message", [
    ({"n": {"job": "echo", "cron": "61 * * * *"}}, "[schedule.n]: cron '61 * * * *' is not valid"),
    ({"n": {"job": "echo"}}, "[schedule.n]: give exactly one of cron"),
    ({"n": {"job": "echo", "every": "5x"}}, "is not a duration"),
    ({"n": {"job": "echo", "every": "5m", "timezone": "Mars/Olympus"}}, "unknown time zone 'Mars/Olympus'"),
    ({"n": {"job": "echo", "every": "5m", "missed": "all"}}, "missed must be"),
    ({"n": {"job": "echo", "every": "5m", "colour": "red"}}, "unknown key 'colour'"),
])
def test_schedule_errors_are_one_clear_line(table, message):
    with pytest.raises(ConfigError) as info:
        parse_schedules(table)
    assert message in str(info.value) and "\n" not in str(info.value)


# --- the loop with an injected clock, on the sqlite broker ----------------------------------
def test_a_restarted_beat_fires_the_missed_slot_once_on_the_same_broker(tmp_path):
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    spec = ScheduleSpec(name="hourly", job="echo", cron="0 * * * *", missed=Missed.ONCE)
    submitted: list[str] = []
    clock = [at("2026-12-01T10:00:01+00:00")]
    with connect(url) as broker:
        beat = Beat(broker, lambda s, job_id: submitted.append(job_id), [spec], clock=lambda: clock[0])
        assert beat.lead()
        # Given a beat that fired 10:00
        assert [f.slot for f in beat.tick()] == [at("2026-12-01T10:00:00+00:00")]
        broker.release_leader("runner.beat.leader")
    # When another beat process comes back at 13:30 (the 11:00, 12:00 and 13:00 slots missed)
    clock[0] = at("2026-12-01T13:30:00+00:00")
    with connect(url) as broker:
        beat = Beat(broker, lambda s, job_id: submitted.append(job_id), [spec], clock=lambda: clock[0])
        assert beat.lead()
        fired = beat.tick() + beat.tick()
    # Then it fires 13:00 once, with the slot's own id
    assert [f.slot for f in fired] == [at("2026-12-01T13:00:00+00:00")]
    assert submitted[-1] == slot_job_id("hourly", at("2026-12-01T13:00:00+00:00")) and len(submitted) == 2


def test_only_one_holder_of_the_sqlite_lease(tmp_path):
    url = f"sqlite:///{tmp_path / 'broker.sqlite3'}"
    with connect(url) as a, connect(url) as b:
        assert a.acquire_leader("lock", 10) and not b.acquire_leader("lock", 10)
        assert a.acquire_leader("lock", 10)  # renewing
        a.release_leader("lock")
        assert b.acquire_leader("lock", 10) and not a.acquire_leader("lock", 10)


def test_only_one_holder_of_the_amqp_lock(amqp_url):
    name = f"test.beat.{uuid.uuid4().hex[:8]}"
    with connect(amqp_url) as a, connect(amqp_url) as b:
        assert a.acquire_leader(name) and not b.acquire_leader(name)
        assert a.acquire_leader(name)
        a.close()  # the holder's connection goes: RabbitMQ drops the exclusive queue
        assert wait_until(lambda: b.acquire_leader(name), 10, "the standby to take over")


# --- two real beat processes ----------------------------------------------------------------
class BeatProcess:
    def __init__(self, env: dict[str, str], log: Path) -> None:
        self.lines: list[str] = []
        self.log = log
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "runner.cli", "beat"], env=env, cwd=str(TESTS),
            stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
        )
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.proc.stdout is not None
        with self.log.open("w") as fh:
            for raw in self.proc.stdout:
                line = raw.decode(errors="replace")
                fh.write(line)
                fh.flush()
                self.lines.append(line)

    def leads(self) -> bool:
        return any("beat leads" in line for line in self.lines)

    def stop(self, sig: int = signal.SIGTERM) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(sig)
        return self.proc.wait(30)


def drain(url: str, queue: str) -> list[JobMessage]:
    """Every job waiting in ``queue`` (consumed and acknowledged)."""
    with connect(url) as broker:
        expected = broker.queue_depth(queue)
        got: list[JobMessage] = []
        if expected == 0:
            return got

        def on_delivery(delivery: Delivery) -> None:
            got.append(JobMessage.from_envelope(delivery.envelope))
            broker.settle(delivery)
            if len(got) >= expected:
                broker.stop_consuming()

        broker.consume(queue, 100, on_delivery)
        return got


@pytest.mark.parametrize("transport", ["amqp", "sqlite"])
def test_two_beat_processes_fire_each_slot_exactly_once(transport, request, tmp_path, route):
    url = request.getfixturevalue("amqp_url") if transport == "amqp" else f"sqlite:///{tmp_path / 'b.sqlite3'}"
    queue = f"beat-{route}"
    # Given a queue with no worker for a schedule firing every second
    config = tmp_path / "runner.toml"
    config.write_text(
        'plugins = ["jobs_plugin"]\n'
        f'[schedule.{route}]\njob = "echo"\nevery = "1s"\nroute = "{route}"\nparams = {{text = "tick"}}\n'
    )
    with connect(url) as broker:
        broker.declare_queue(queue, [f"{route}.#"])
    env = {**os.environ, "RUNNER_BROKER_URL": url, "RUNNER_CONFIG": str(config)}
    beats = [BeatProcess(env, tmp_path / f"beat{i}.log") for i in range(2)]
    try:
        # When both run for several slots
        with connect(url) as broker:
            wait_until(lambda: broker.queue_depth(queue) >= 3, 30, "three slots fired")
            leader = wait_until(lambda: next((b for b in beats if b.leads()), None), 5, "a leader")
            # and the leader is stopped: the standby takes over
            leader.stop()
            seen = broker.queue_depth(queue)
            wait_until(lambda: broker.queue_depth(queue) >= seen + 3, 40, "three more slots")
    finally:
        codes = [b.stop() for b in beats]
        if transport == "amqp":
            with connect(url) as broker:
                jobs = drain(url, queue)
                broker.delete_queue(queue)
        else:
            jobs = drain(url, queue)
    # Then every slot went out once, with its deterministic id
    slots = [json.loads(json.dumps(j.params))["text"] for j in jobs]
    assert slots and all(s == "tick" for s in slots)
    ids = [j.id for j in jobs]
    assert len(ids) == len(set(ids)), f"a slot fired twice: {ids}"
    assert codes == [0, 0]
    assert all(b.leads() for b in beats), "the standby never took over"


# --- the command line -------------------------------------------------------------------------
def run_beat(tmp_path: Path, config: str, *args: str) -> subprocess.CompletedProcess[str]:
    (tmp_path / "runner.toml").write_text(config)
    env = {**os.environ, "RUNNER_CONFIG": str(tmp_path / "runner.toml"),
           "RUNNER_BROKER_URL": f"sqlite:///{tmp_path / 'b.sqlite3'}"}
    return subprocess.run([sys.executable, "-m", "runner.cli", "beat", *args], env=env,
                          cwd=str(TESTS), capture_output=True, text=True, timeout=60)


def test_list_shows_the_next_three_runs_local_and_utc(tmp_path):
    config = '[schedule.nightly]\njob = "echo"\ncron = "30 2 * * *"\ntimezone = "Europe/Berlin"\n'
    out = run_beat(tmp_path, config, "--list")
    assert out.returncode == 0, out.stderr
    lines = out.stdout.splitlines()
    assert lines[0] == "nightly: echo, cron '30 2 * * *', Europe/Berlin, missed=skip"
    assert len(lines) == 4 and all(" 02:30:00" in l.replace("T", " ") for l in lines[1:])
    rows = json.loads(run_beat(tmp_path, config, "--list", "--json").stdout)
    assert rows[0]["name"] == "nightly" and len(rows[0]["next"]) == 3
    assert all(r["utc"].endswith(("00:30:00Z", "01:30:00Z")) for r in rows[0]["next"])


def test_a_bad_cron_is_one_red_line_and_exit_3(tmp_path):
    out = run_beat(tmp_path, '[schedule.nightly]\njob = "echo"\ncron = "61 * * * *"\n', "--list")
    assert out.returncode == 3
    assert out.stderr.strip() == "error: [schedule.nightly]: cron '61 * * * *' is not valid: Bad minute"
