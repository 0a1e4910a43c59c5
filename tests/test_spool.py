"""The durable spool (runner/spool.py): crash-safe writes, one claimant per item, oldest first."""

from __future__ import annotations

import os
import subprocess
import sys
from collections import Counter
from pathlib import Path

import pytest

from runner.spool import STALE_TMP, Spool, _lock_and_read

WAIT = 60  # seconds a child process may take

# A process that stores one item, then dies in the middle of storing a second: the bytes are
# written, the process is gone before they are fsynced and renamed into place.
CRASH_MID_PUT = """
import os, sys
from pathlib import Path
from runner.spool import Spool
spool = Spool(Path(sys.argv[1]), ".item")
spool.put(b"before the crash")
os.fsync = lambda fd: os._exit(9)
spool.put(b"lost in the crash")
"""

# A process that tries to claim one item and says what it got.
CLAIM_ONCE = """
import sys
from pathlib import Path
from runner.spool import Spool
path = Path(sys.argv[1])
with Spool(path.parent, ".item").claim(path) as data:
    print("<none>" if data is None else data.decode())
"""

# A sender: at the start signal (the end of its stdin) it claims, "sends" (prints) and removes every
# item it can get.
SENDER = """
import sys
from pathlib import Path
from runner.spool import Spool
spool = Spool(Path(sys.argv[1]), ".item")
sys.stdin.read()
for path in spool.pending():
    with spool.claim(path) as data:
        if data is not None:
            print(data.decode(), flush=True)
            spool.done(path)
"""


def python(code: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          timeout=WAIT, check=False)


def temp_files(root: Path) -> list[Path]:
    return sorted(root.glob(".*.tmp"))


def test_pending_lists_the_items_oldest_first_and_nothing_else(tmp_path):
    # Given a spool with items put one after another, beside files that are not items
    spool = Spool(tmp_path / "spool", ".item")
    assert spool.pending() == []  # no directory yet: nothing pending
    paths = [spool.put(f"item {i}".encode()) for i in range(20)]
    (spool.root / "state.json").write_text("{}")
    (spool.root / "failed").mkdir()
    (spool.root / ".in-progress.item.0123abcd.tmp").write_bytes(b"half")
    # When the pending items are listed
    pending = spool.pending()
    # Then they are the items, in the order they were put, each with its bytes
    assert pending == paths
    assert [p.read_bytes() for p in pending] == [f"item {i}".encode() for i in range(20)]


def test_a_crash_mid_write_leaves_no_item_and_a_temp_file_prepare_removes_once_stale(tmp_path):
    # Given a process that died while storing an item
    root = tmp_path / "spool"
    crashed = python(CRASH_MID_PUT, str(root))
    assert crashed.returncode == 9, crashed.stderr
    spool = Spool(root, ".item")
    # Then the item stored before the crash is whole, the other one is not an item at all
    assert [p.read_bytes() for p in spool.pending()] == [b"before the crash"]
    (leftover,) = temp_files(root)
    # When a sender starts while the temporary file is young (it may be a write in progress)
    spool.prepare()
    # Then it is kept
    assert temp_files(root) == [leftover]
    # And when a sender starts after it went stale, it is removed, and the items stay
    old = leftover.stat().st_mtime - STALE_TMP - 60
    os.utime(leftover, (old, old))
    spool.prepare()
    assert temp_files(root) == []
    assert [p.read_bytes() for p in spool.pending()] == [b"before the crash"]


def test_an_item_claimed_by_one_process_is_not_given_to_another(tmp_path):
    # Given an item claimed by this process
    spool = Spool(tmp_path / "spool", ".item")
    path = spool.put(b"the e-mail")
    with spool.claim(path) as data:
        assert data == b"the e-mail"
        # When another process claims it meanwhile
        other = python(CLAIM_ONCE, str(path))
        # Then it gets nothing
        assert other.returncode == 0, other.stderr
        assert other.stdout.strip() == "<none>"
    # And once this process has let go without sending it, the other process gets it
    again = python(CLAIM_ONCE, str(path))
    assert again.stdout.strip() == "the e-mail"


def test_processes_racing_over_one_spool_send_every_item_exactly_once(tmp_path):
    # Given a spool of items and four sender processes sharing it
    spool = Spool(tmp_path / "spool", ".item")
    items = [f"delivery {i}" for i in range(200)]
    for item in items:
        spool.put(item.encode())
    start, go = os.pipe()  # the senders' stdin: they start when it closes
    senders = [
        subprocess.Popen([sys.executable, "-c", SENDER, str(spool.root)], stdin=start,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        for _ in range(4)
    ]
    os.close(start)
    # When they all start at once
    os.close(go)
    outputs = [sender.communicate(timeout=WAIT) for sender in senders]
    # Then every item was sent, none twice, and the spool is empty
    assert [s.returncode for s in senders] == [0, 0, 0, 0], [err for _, err in outputs]
    sent = Counter(line for out, _ in outputs for line in out.splitlines())
    assert sorted(sent) == sorted(items)
    assert set(sent.values()) == {1}
    assert spool.pending() == []


def test_done_removes_the_item_and_a_later_claim_gets_none(tmp_path):
    # Given an item that was claimed and delivered
    spool = Spool(tmp_path / "spool", ".item")
    path = spool.put(b"sent")
    with spool.claim(path) as data:
        assert data == b"sent"
        spool.done(path)
    # Then it is gone, and a sender that still had it listed gets nothing
    assert spool.pending() == [] and not path.exists()
    with spool.claim(path) as data:
        assert data is None


def test_a_sender_that_opened_an_item_just_before_another_sent_it_gets_nothing(tmp_path):
    # The race the racing senders above rarely hit, step by step (claim() opens, then locks).
    # Given a sender that has opened an item but not yet locked it
    spool = Spool(tmp_path / "spool", ".item")
    path, replaced = spool.put(b"sent"), spool.put(b"tries: 0")
    late = [os.open(path, os.O_RDONLY), os.open(replaced, os.O_RDONLY)]
    try:
        # When another sender claims it and removes it (delivered) or replaces it (a failed try)
        with spool.claim(path) as data:
            assert data == b"sent"
            spool.done(path)
        with spool.claim(replaced) as data:
            assert data == b"tries: 0"
            spool.replace(replaced, b"tries: 1")
        # Then the late sender's lock, which it now gets, gives it neither
        assert [_lock_and_read(fd, p) for fd, p in zip(late, [path, replaced])] == [None, None]
    finally:
        for fd in late:
            os.close(fd)


def test_replace_updates_an_item_in_place(tmp_path):
    # Given a claimed item whose delivery failed
    spool = Spool(tmp_path / "spool", ".item")
    first, second = spool.put(b'{"tries": 0}'), spool.put(b'{"tries": 0}')
    with spool.claim(first) as data:
        assert data == b'{"tries": 0}'
        # When the try is recorded
        spool.replace(first, b'{"tries": 1}')
    # Then the item keeps its name and its place in the order, with the new bytes, and no
    # temporary file is left
    assert spool.pending() == [first, second]
    with spool.claim(first) as data:
        assert data == b'{"tries": 1}'
    assert temp_files(spool.root) == []


def test_move_keeps_a_rejected_item_out_of_the_spool(tmp_path):
    # Given a claimed item the receiver refused for good
    spool = Spool(tmp_path / "spool", ".item")
    path = spool.put(b"refused")
    with spool.claim(path) as data:
        assert data == b"refused"
        # When it is moved aside
        kept = spool.move(path, spool.root / "failed")
    # Then it is no longer pending, and is kept whole for a person to look at
    assert spool.pending() == []
    assert kept == spool.root / "failed" / path.name and kept.read_bytes() == b"refused"


def test_a_suffix_without_a_dot_is_refused(tmp_path):
    with pytest.raises(ValueError, match="starts with a dot"):
        Spool(tmp_path, "json")
