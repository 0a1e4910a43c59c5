"""What a job hands back, checked without a broker: result files, header budgets, names, text.

The attack suite (tests/test_attacks.py) sends the same hostile input through RabbitMQ to real
workers; these cover the edge cases of each check quickly.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from runner import headers as bounded
from runner import outcome, workdir
from runner.message import JobMessage, JobResult, JobStatus, retry_envelope
from runner.untrusted import name_problem, printable


@pytest.mark.parametrize("delay", ['"soon"', "Infinity", "-Infinity", "NaN", "-1", "true",
                                   "1e309", "604801", "[1]", "1" + "0" * 5000])
def test_a_retry_delay_must_be_a_plain_bounded_number(delay):
    data = '{"ok": false, "kind": "retry", "exc_type": "Retry", "error": "e", "delay": %s}' % delay
    with pytest.raises(outcome.BadOutcome):
        outcome.parse(data.encode())


def test_a_valid_retry_delay_is_kept():
    data = b'{"ok": false, "kind": "retry", "exc_type": "Retry", "error": "e", "delay": 2.5}'
    assert outcome.parse(data).delay == 2.5


@pytest.mark.parametrize("data", [b"[]", b'{"ok": 1}', b'{"ok": false, "kind": "boom"}',
                                  b'{"ok": false, "kind": "error", "error": 5}', b"\xff\xfe",
                                  b'{"ok": true, "value": ' + b"[" * 65 + b"]" * 65 + b"}",
                                  b'{"ok": true, "value": ' + b"[" * 10**5 + b"]" * 10**5 + b"}"])
def test_results_off_the_schema_are_refused(data):
    with pytest.raises(outcome.BadOutcome):
        outcome.parse(data)


def test_long_error_and_traceback_are_cut_not_refused():
    text = "é" * 100_000
    parsed = outcome.parse(json.dumps({"ok": False, "kind": "error", "exc_type": "E",
                                       "error": text, "traceback": text}).encode())
    assert len(parsed.error) <= outcome.ERROR_LIMIT + 1
    assert len(parsed.traceback or "") <= outcome.TRACEBACK_LIMIT + 1


def test_the_result_file_is_read_only_up_to_its_limit(tmp_path):
    path = tmp_path / "result.json"
    with path.open("wb") as fh:
        fh.truncate(outcome.RESULT_FILE_LIMIT + 10)  # sparse: large on paper only
    with pytest.raises(outcome.BadOutcome, match="larger than"):
        outcome.read(path)
    path.write_bytes(b"")
    assert outcome.read(path) is None  # the job died before writing: no outcome


def test_every_header_fits_its_budget_for_every_size_of_text():
    env = JobMessage(job="echo", params={}).to_envelope()
    for chars in range(0, 70_000, 97):
        text = "é€\x00𝄞"[chars % 4] * chars  # 2, 3, 6 (escaped) and 4 bytes a character
        result = JobResult(id="x", job="echo", status=JobStatus.FAILED, attempts=1,
                           error=text, traceback=text, stderr=text, stdout=text)
        history = [{"attempt": i, "error": text} for i in range(30)]
        dead = bounded.dead_envelope(retry_envelope(env, 2, history), text, result)
        assert bounded.total(dead.headers) <= bounded.FRAME_BUDGET, chars
        assert bounded.size(dead.headers["x-runner-result"]) <= bounded.RESULT_BUDGET
        assert bounded.size(dead.headers["x-runner-history"]) <= bounded.HISTORY_BUDGET
        for key in ("x-runner-error", "x-runner-dead-reason"):
            assert bounded.size(dead.headers[key]) <= bounded.TEXT_BUDGET
    summary = json.loads(dead.headers["x-runner-result"])
    assert summary["id"] == "x" and summary["traceback"].endswith(text[-10:])  # the end is kept


@pytest.mark.parametrize("name", [".bashrc", "..", ".", "a/b", "a\\b", "-rf", "x\x1b[2Jy",
                                  "\u202eexe.txt", "tab\there", "", "x" * 256, "é" * 128])
def test_names_that_are_not_one_plain_visible_file_name(name):
    assert name_problem(name) is not None


@pytest.mark.parametrize("name", ["photo_200x200.jpg", "résumé.pdf", "a b.txt", "x" * 255])
def test_plain_names_pass(name):
    assert name_problem(name) is None


def test_printable_drops_escape_sequences_and_controls():
    hostile = "ok\x1b]0;title\x07 \x1b[31mred\x1b[0m \x9b2J\x1bc\r\x00é\n"
    assert printable(hostile) == "ok red é\n"
    assert printable("a\nb", keep_newlines=False) == "ab"


def test_removal_survives_deep_unreadable_trees_and_symlinks(tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "keep").write_text("mine")
    tree = tmp_path / "tree"
    tree.mkdir()
    os.symlink(outside, tree / "link")  # removal must not follow it
    fd = os.open(tree, os.O_RDONLY)
    try:
        for _ in range(3000):
            os.mkdir("d", dir_fd=fd)
            deeper = os.open("d", os.O_RDONLY, dir_fd=fd)
            os.close(fd)
            fd = deeper
    finally:
        os.close(fd)
    locked = tree / "locked"
    locked.mkdir()
    (locked / "f").write_text("x")
    locked.chmod(0)
    workdir.remove(tree)
    assert not tree.exists() and (outside / "keep").read_text() == "mine"


def test_sweep_removes_only_roots_whose_worker_is_gone(tmp_path):
    alive, gone = tmp_path / "alive", tmp_path / "gone"
    held = workdir.claim(alive)
    os.close(workdir.claim(gone))  # its worker died: the lock is free
    (gone / "job").mkdir()
    try:
        assert workdir.sweep(tmp_path) == 1
        assert alive.is_dir() and not gone.exists() and not Path(f"{gone}.lock").exists()
    finally:
        workdir.release(alive, held)
