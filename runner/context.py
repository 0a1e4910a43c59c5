"""What a running job sees of itself, importable without click or pluggy.

The child interpreter that runs a function job imports only this module and
:mod:`runner.errors` of runner, so that starting a job costs as little as possible.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

PROGRESS_MARKER = "runner-progress:"
_PROGRESS_RE = re.compile(
    r"^runner-progress:\s*(?:(\d+)\s*/\s*(\d+)|(\d+(?:\.\d+)?)\s*%)\s*(.*)$"
)


def parse_progress(line: str) -> dict[str, Any] | None:
    """``runner-progress: 3/10 resizing`` or ``runner-progress: 42% ...`` -> a progress record.

    Returns ``None`` for any other line.  The record has ``percent`` (0-100), ``message`` and,
    for the ``done/total`` form, ``done`` and ``total``.
    """
    match = _PROGRESS_RE.match(line.strip())
    if not match:
        return None
    done, total, percent, text = match.groups()
    record: dict[str, Any] = {"message": text[:200]}
    if done is not None:
        record.update(done=int(done), total=int(total))
        percent = 100.0 * int(done) / int(total) if int(total) else 0.0
    record["percent"] = round(min(100.0, max(0.0, float(percent))), 1)
    return record


@dataclass(frozen=True)
class JobContext:
    """What a running job knows about itself; a function job gets it as first argument."""

    job_id: str
    job: str
    attempt: int
    workdir: Path

    @property
    def in_dir(self) -> Path:
        return self.workdir / "in"

    @property
    def out_dir(self) -> Path:
        return self.workdir / "out"

    @property
    def tmp_dir(self) -> Path:
        return self.workdir / "tmp"

    def progress(self, done: int, total: int, message: str = "") -> None:
        """Report progress; a client waiting with ``--wait`` shows it as a progress bar.

        Any job can do the same by printing ``runner-progress: DONE/TOTAL message`` (or
        ``runner-progress: 42% message``) on a line of its standard output.
        """
        print(f"{PROGRESS_MARKER} {int(done)}/{int(total)} {message}".rstrip(), flush=True)
