"""One contract, two stores: SQLite (a temporary file) and PostgreSQL (a database of this run)."""

from __future__ import annotations

import threading
import time

import pytest

from runner.broker import Envelope
from runner.errors import ConfigError
from runner.message import FileData, JobResult, JobStatus
from runner.results import GroupSpec, GroupStatus, OnFailure, StoreError, open_store
from runner.results.store import PUBLISH_LEASE


@pytest.fixture(params=["sqlite", "postgres"])
def store(request, tmp_path):
    if request.param == "sqlite":
        url = f"sqlite:///{tmp_path / 'results.sqlite3'}"
    else:
        url = request.getfixturevalue("postgres_url")
    s = open_store(url)
    yield s
    s.close()
    if request.param == "postgres":  # the run's database is shared: each test starts empty
        import psycopg

        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("TRUNCATE runner_results, runner_outputs, runner_groups, runner_members")


def result(job_id: str, ok: bool = True, **fields) -> JobResult:
    return JobResult(id=job_id, job="echo", status=JobStatus.SUCCEEDED if ok else JobStatus.FAILED,
                     attempts=1, **fields)


def callback(job_id: str) -> Envelope:
    return Envelope(body=b'{"signed": true}', message_id=job_id, type="collect",
                    routing_key="default.collect", headers={"x-runner-signature": "abc"})


def test_a_stored_result_comes_back_with_its_outputs(store):
    # Given a finished job with an inline output and one on shared storage
    outputs = (FileData(name="a.txt", data=b"hello"),
               FileData(name="big.bin", ref="j1/out/big.bin", ref_size=9, ref_sha256="0" * 64))
    store.put(result("j1", value={"n": 3}, outputs=outputs, stdout="out", stderr="err",
                     traceback=None, history=({"attempt": 1},)))
    # When it is read back
    got = store.get("j1")
    # Then everything the worker reported is there, the inline file with its bytes
    assert got.value == {"n": 3} and got.stdout == "out" and got.stderr == "err"
    assert got.history == ({"attempt": 1},)
    assert got.outputs[0].data == b"hello"
    assert got.outputs[1].ref == "j1/out/big.bin" and got.outputs[1].size == 9
    assert store.get("unknown") is None


def test_a_later_result_replaces_an_earlier_one(store):
    store.put(result("j2", ok=False, error="boom"))
    store.put(result("j2", value=1))
    got = store.get("j2")
    assert got.ok and got.value == 1 and got.error is None


def test_a_group_completes_once_and_hands_out_its_callback_once(store):
    # Given a group of three with a callback
    store.create_group(GroupSpec("g1", [("m1", "echo"), ("m2", "echo"), ("m3", "echo")],
                                 callback=callback("g1-then")))
    # When members end, one of them twice (a redelivered job reports again)
    assert store.put(result("m1"), "g1") is None
    assert store.put(result("m1"), "g1") is None
    assert store.put(result("m2", ok=False, error="bad"), "g1") is None
    state = store.group("g1")
    assert (state.done, state.failed, state.pending, state.status) == (2, 1, 1, GroupStatus.RUNNING)
    env = store.put(result("m3"), "g1")
    # Then the last one gets the callback exactly as stored, and nobody gets it again
    assert env is not None and env.message_id == "g1-then" and env.body == b'{"signed": true}'
    assert env.headers == {"x-runner-signature": "abc"}
    assert store.put(result("m3"), "g1") is None
    state = store.group("g1")
    assert state.status is GroupStatus.COMPLETE and state.done == 3 and state.failed == 1
    assert [(m.id, m.status) for m in state.members] == [
        ("m1", "succeeded"), ("m2", "failed"), ("m3", "succeeded")]
    assert state.members[1].error == "bad"
    store.published("g1")
    assert store.group("g1").status is GroupStatus.PUBLISHED
    assert store.group_of("m2") == "g1" and store.group_of("nope") is None


def test_concurrent_members_complete_the_group_exactly_once(store, tmp_path):
    # Given a group of 40 whose members end at once, from 8 threads with their own connections
    n = 40
    store.create_group(GroupSpec("g2", [(f"c{i}", "echo") for i in range(n)],
                                 callback=callback("g2-then")))
    winners: list[str] = []
    lock = threading.Lock()

    def finish(ids: list[int]) -> None:
        with open_store(store.url) as own:
            for i in ids:
                if own.put(result(f"c{i}"), "g2") is not None:
                    with lock:
                        winners.append(f"c{i}")

    threads = [threading.Thread(target=finish, args=(list(range(k, n, 8)),)) for k in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    # Then exactly one of them was handed the callback, and every member was counted
    assert len(winners) == 1
    assert store.group("g2").done == n


def test_a_crash_between_count_and_publish_is_reconciled(store):
    # Given a complete group whose publisher died before confirming the callback
    store.create_group(GroupSpec("g3", [("x1", "echo")], callback=callback("g3-then")))
    now = time.time()
    assert store.put(result("x1"), "g3", now=now) is not None
    # While the claim holds, no reconciler takes it
    assert store.claim_stale(now=now + 1) == []
    # When the claim has expired, exactly one reconciler claims it
    later = now + PUBLISH_LEASE + 1
    claimed = store.claim_stale(now=later)
    assert [(g, e.message_id) for g, e in claimed] == [("g3", "g3-then")]
    assert store.claim_stale(now=later) == []
    store.published("g3")
    assert store.claim_stale(now=later + 10 * PUBLISH_LEASE) == []


def test_skip_on_failure_never_hands_out_the_callback_and_fails_it(store):
    # Given a chain g4 -> (callback k1, itself the only member of g5) -> callback k2
    store.create_group(GroupSpec("g4", [("y1", "echo"), ("y2", "echo")], callback=callback("k1"),
                                 on_failure=OnFailure.SKIP, callback_group="g5"))
    store.create_group(GroupSpec("g5", [("k1", "collect")], callback=callback("k2"),
                                 on_failure=OnFailure.SKIP))
    # When a member fails
    assert store.put(result("y1", ok=False, error="no"), "g4") is None
    assert store.put(result("y2"), "g4") is None
    # Then neither callback is handed out; both read as failed, with the reason
    assert store.group("g4").status is GroupStatus.SKIPPED
    assert store.group("g5").status is GroupStatus.SKIPPED
    assert "1 of 2 members" in store.get("k1").error
    assert not store.get("k2").ok


def test_a_group_without_callback_is_done_when_its_members_are(store):
    store.create_group(GroupSpec("g6", [("z1", "echo")]))
    assert store.put(result("z1"), "g6") is None
    assert store.group("g6").status is GroupStatus.PUBLISHED
    with pytest.raises(StoreError, match="exists"):
        store.create_group(GroupSpec("g6", [("z2", "echo")]))


def test_retention_purges_old_results_and_groups(store):
    store.create_group(GroupSpec("g7", [("old", "echo")]), now=1000.0)
    store.put(result("old", outputs=(FileData(name="o.txt", data=b"x"),)), "g7", now=1000.0)
    store.put(result("new"), now=5000.0)
    assert store.purge(before=2000.0) == ["old"]
    assert store.get("old") is None and store.group("g7") is None
    assert store.get("new") is not None


def test_unsupported_urls_are_one_clear_error():
    with pytest.raises(ConfigError, match="unsupported results URL"):
        open_store("redis://localhost")
    with pytest.raises(ConfigError, match="absolute"):
        open_store("sqlite:///relative/../x?y=1")
