"""The result store contract: final results by job id, and groups counted to completion.

Two implementations keep it (one contract test suite, ``tests/test_result_store.py``):
:mod:`runner.results.sqlite` (one box, the default) and :mod:`runner.results.postgres`
(fleets).  A worker writes a job's final result here *before* it acknowledges the job, so a
result that was acknowledged is never lost; ``runner result ID`` and ``Client.result`` read it.

Groups: the client records a group (its member ids, the signed callback envelope, what to do
when a member failed) before it publishes the members.  Each member's final result counts it,
once, in the same transaction that stores the result; the result that completes the group also
claims the right to publish the callback (a lease).  After the publish the claim is confirmed;
a claim that expired unconfirmed (the worker died in between) is taken by any worker's
reconciler (:meth:`ResultStore.claim_stale`).  docs/results.md describes the whole path.
"""

from __future__ import annotations

import abc
import base64
import enum
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from runner.broker import Envelope
from runner.errors import RunnerError
from runner.message import JobResult

PUBLISH_LEASE = 60.0  # seconds a completing worker holds the right to publish the callback


class StoreError(RunnerError):
    """The result store cannot be reached or refused the operation."""


class OnFailure(str, enum.Enum):
    """What a group does when a member failed for good."""

    RUN = "run"  # run the callback anyway; members.json says which failed
    SKIP = "skip"  # mark the group failed, never run the callback


class GroupStatus(str, enum.Enum):
    RUNNING = "running"  # members still pending
    COMPLETE = "complete"  # every member ended; the callback is being published
    PUBLISHED = "published"  # the callback is on the broker (or there is none)
    SKIPPED = "skipped"  # a member failed and on_failure is skip: the callback never runs


@dataclass(frozen=True)
class GroupSpec:
    """A group as the client records it before publishing its members."""

    id: str
    members: Sequence[tuple[str, str]]  # (job id, job type), in submission order
    callback: Envelope | None = None  # signed by the submitter; None: a group without callback
    on_failure: OnFailure = OnFailure.RUN
    callback_group: str | None = None  # a chain: the callback is itself a member of this group

    @property
    def callback_id(self) -> str | None:
        return self.callback.message_id if self.callback is not None else None


@dataclass(frozen=True)
class Member:
    """One member of a group and how it ended (``status`` None: still pending)."""

    id: str
    job: str
    status: str | None = None
    error: str | None = None


@dataclass(frozen=True)
class GroupState:
    id: str
    total: int
    done: int  # members that ended (succeeded or failed)
    failed: int
    status: GroupStatus
    on_failure: OnFailure
    callback_id: str | None
    created_at: float
    completed_at: float | None = None
    published_at: float | None = None
    members: tuple[Member, ...] = field(default=())

    @property
    def pending(self) -> int:
        return self.total - self.done


class ResultStore(abc.ABC):
    """Where final results and groups live.  Every method is safe from any thread."""

    url: str

    @abc.abstractmethod
    def put(self, result: JobResult, group: str | None = None, now: float | None = None,
            lease: float = PUBLISH_LEASE) -> Envelope | None:
        """Store a job's final result (a later one for the same id replaces it).

        When the job is a member of ``group`` it is counted there, once however often its
        result is stored.  Returns the callback envelope when this result completed the group
        and this caller now holds the claim to publish it for ``lease`` seconds: publish it,
        then call :meth:`published`.
        """

    @abc.abstractmethod
    def get(self, job_id: str) -> JobResult | None:
        """The stored result with its inline output data, or None (unknown or expired)."""

    @abc.abstractmethod
    def group_of(self, job_id: str) -> str | None:
        """The group a stored result was counted in (None: none, or no such result)."""

    @abc.abstractmethod
    def create_group(self, spec: GroupSpec, now: float | None = None) -> None:
        """Record a group before its members are published (an existing id is an error)."""

    @abc.abstractmethod
    def group(self, group_id: str) -> GroupState | None:
        """A group with its members in submission order, or None."""

    @abc.abstractmethod
    def published(self, group_id: str, now: float | None = None) -> None:
        """Confirm that the group's callback is on the broker."""

    @abc.abstractmethod
    def claim_stale(self, now: float | None = None,
                    lease: float = PUBLISH_LEASE) -> list[tuple[str, Envelope]]:
        """Claim complete groups whose callback claim expired unconfirmed.

        Returns (group id, callback envelope) pairs this caller must publish and confirm.
        """

    @abc.abstractmethod
    def purge(self, before: float) -> list[str]:
        """Remove results finished and groups created before ``before``; return the job ids."""

    @abc.abstractmethod
    def close(self) -> None:
        """Release the connection."""

    def __enter__(self) -> ResultStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def envelope_to_json(env: Envelope) -> str:
    """An envelope as JSON text (the callback is stored exactly as the client signed it)."""
    return json.dumps({
        "body": base64.b64encode(env.body).decode("ascii"), "message_id": env.message_id,
        "type": env.type, "routing_key": env.routing_key, "headers": dict(env.headers),
        "priority": env.priority, "reply_to": env.reply_to,
        "correlation_id": env.correlation_id, "timestamp": env.timestamp,
        "content_type": env.content_type,
    })


def envelope_from_json(text: str) -> Envelope:
    obj: Mapping[str, Any] = json.loads(text)
    return Envelope(
        body=base64.b64decode(obj["body"]), message_id=obj["message_id"], type=obj["type"],
        routing_key=obj["routing_key"], headers=obj["headers"], priority=obj["priority"],
        reply_to=obj["reply_to"], correlation_id=obj["correlation_id"],
        timestamp=obj["timestamp"], content_type=obj["content_type"],
    )
