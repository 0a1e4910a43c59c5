"""What a group's callback receives: ``members.json`` and its members' output files.

The worker builds these from the result store (never from the message: the submitter signed
the callback before any member had run).  ``members.json`` lists each member in submission
order with its id, job, status, value, error and the names of its output files in the
callback's input directory; each output is named ``<position>-<name>`` there, so that members
writing the same file name do not collide.  A chain step's declared input files are filled
from the previous step's outputs, in order.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from dataclasses import replace
from typing import Any

from runner.jobs import JobType
from runner.message import FileData
from runner.results.store import GroupState, ResultStore

MEMBERS_FILE = "members.json"


def member_file_name(position: int, name: str) -> str:
    return f"{position:04d}-{name}"[:255]


def callback_files(
    store: ResultStore, state: GroupState, job: JobType, given: Collection[str] = ()
) -> tuple[dict[str, FileData], tuple[FileData, ...]]:
    """(files for the callback's declared inputs, extra files for its input directory)."""
    members: list[dict[str, Any]] = []
    outputs: list[FileData] = []
    extras: list[FileData] = []
    for position, member in enumerate(state.members):
        result = store.get(member.id)
        names: list[str] = []
        if result is not None and result.ok:
            for item in result.outputs:
                names.append(member_file_name(position, item.name))
                extras.append(replace(item, name=names[-1]))
                outputs.append(item)
        members.append({
            "id": member.id, "job": member.job, "status": member.status or "pending",
            "value": result.value if result is not None else None,
            "error": result.error if result is not None else member.error,
            "outputs": names,
        })
    listing = {"group": state.id, "total": state.total, "failed": state.failed,
               "members": members}
    extras.insert(0, FileData(name=MEMBERS_FILE, data=json.dumps(listing, indent=1).encode()))
    free = [name for name in job.inputs if name not in given]
    return dict(zip(free, outputs)), tuple(extras)
