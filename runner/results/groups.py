"""Groups, maps and chains, submitted by a client; finished by the workers (docs/results.md).

A group is recorded in the result store (members, the signed callback, ``on_failure``) before
its first member is published; from then on it needs nothing of the client: each member's
worker counts it, the worker that ends the last one publishes the callback, and a reconciler
in any worker covers a crash in between.  The callback's id is ``<group id>-then``.

    group = client.group([JobSpec("resize", {"size": "200x200"}, {"image": p}) for p in paths])
    handle = group.then("contact-sheet", {"columns": 4})     # submits; returns a GroupHandle
    sheet = handle.wait(timeout=600)                         # the callback's JobResult
"""

from __future__ import annotations

import os
import time
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from runner.broker import Envelope
from runner.errors import JobError
from runner.message import FileData, JobResult
from runner.results.store import GroupSpec, GroupState, OnFailure

if TYPE_CHECKING:
    from runner.client import Client, JobHandle

Files = Mapping[str, "str | os.PathLike[str] | FileData"]


@dataclass(frozen=True)
class JobSpec:
    """One job of a group: job type, parameters, input files and submit options
    (``route``, ``timeout``, ``retries``, ``priority``, ``delay``, ``expires``...)."""

    job: str
    params: Mapping[str, Any] = field(default_factory=dict)
    files: Files = field(default_factory=dict)
    options: Mapping[str, Any] = field(default_factory=dict)


def callback_id(group_id: str) -> str:
    """The callback's deterministic job id: the same whoever publishes it, however often."""
    return f"{group_id}-then"


@dataclass
class GroupHandle:
    """A submitted group: its members' handles, its callback's, and its state in the store."""

    id: str
    members: list[JobHandle]
    callback: JobHandle | None
    _client: Client

    def state(self) -> GroupState | None:
        return self._client.store.group(self.id)

    def wait(self, timeout: float | None = None, raise_on_failure: bool = True) -> JobResult:
        """The callback's result, once it ran (or failed, or was skipped)."""
        if self.callback is None:
            raise JobError(f"group {self.id} has no callback; use results()")
        return self.callback.wait(timeout, raise_on_failure)

    def results(self, timeout: float | None = None) -> list[JobResult | None]:
        """Every member's result, in submission order, once all of them ended."""
        deadline = None if timeout is None else time.monotonic() + timeout
        pause = 0.05
        while (state := self.state()) is None or state.pending:
            if deadline is not None and time.monotonic() >= deadline:
                from runner.client import WaitTimeout

                raise WaitTimeout(f"group {self.id}: members still pending after {timeout:g}s")
            time.sleep(pause)  # polling an external store
            pause = min(1.0, pause * 1.5)
        return [self._client.result(m.id) for m in self.members]


class GroupBuilder:
    """Members, not yet submitted: :meth:`then` or :meth:`submit` submits them."""

    def __init__(self, client: Client, members: Sequence[JobSpec]) -> None:
        if not members:
            raise JobError("a group needs at least one member")
        self.client = client
        self.members = list(members)

    def then(self, job: str, params: Mapping[str, Any] | None = None, files: Files | None = None,
             *, on_failure: str | OnFailure = OnFailure.RUN, **options: Any) -> GroupHandle:
        """Submit the members, and ``job`` to run once all of them ended.

        Args:
            on_failure: ``"run"`` (default) runs the callback even when members failed
                (``members.json`` says which); ``"skip"`` marks the group failed instead.
        """
        try:
            policy = OnFailure(on_failure)
        except ValueError:
            raise JobError(f"on_failure must be run or skip, not {on_failure!r}") from None
        return self._submit(JobSpec(job, params or {}, files or {}, options), policy)

    def submit(self) -> GroupHandle:
        """Submit the members without a callback (``runner group ID`` follows them)."""
        return self._submit(None, OnFailure.RUN)

    def _submit(self, then: JobSpec | None, policy: OnFailure,
                group_id: str | None = None, callback_group: str | None = None) -> GroupHandle:
        group_id = group_id or uuid.uuid4().hex
        members = [self._envelope(spec, group=group_id) for spec in self.members]
        callback = None
        if then is not None:
            callback = self._envelope(then, group=callback_group, job_id=callback_id(group_id),
                                      after=group_id)
        spec = GroupSpec(group_id, [(env.message_id, env.type) for env, _ in members],
                         callback[0] if callback else None, policy, callback_group)
        self.client.store.create_group(spec)  # before any member can end
        for env, delay in members:
            self.client.broker.publish(env, delay=delay)
        return GroupHandle(
            group_id, [self._handle(env) for env, _ in members],
            self._handle(callback[0]) if callback else None, self.client,
        )

    def _envelope(self, spec: JobSpec, **extra: Any) -> tuple[Envelope, float]:
        return self.client.envelope(spec.job, spec.params, spec.files, **spec.options, **extra)

    def _handle(self, env: Envelope) -> JobHandle:
        from runner.client import JobHandle

        return JobHandle(env.message_id, env.type, env.routing_key.split(".", 1)[0], None,
                         self.client.result)


def submit_chain(client: Client, steps: Sequence[JobSpec]) -> GroupHandle:
    """``a -> b -> c``: each step runs after the one before succeeded, with its outputs as
    inputs.  Each link is a group of one whose callback is the next step."""
    if len(steps) < 2:
        raise JobError("a chain needs at least two jobs")
    ids = [uuid.uuid4().hex for _ in steps[:-1]]  # the group id of each link
    handles: list[GroupHandle] = []
    # From the last link back: a link's callback counts in the next link's group, which must
    # exist before that callback can end.  Each link is published by the one before it.
    for i in reversed(range(len(ids))):
        if i == 0:
            handles.append(GroupBuilder(client, [steps[0]])._submit(
                steps[1], OnFailure.SKIP, ids[0], ids[1] if len(ids) > 1 else None))
        else:
            _record_link(client, ids[i], steps[i + 1], ids[i + 1] if i + 1 < len(ids) else None,
                         member=(callback_id(ids[i - 1]), steps[i].job))
    first = handles[0]
    last_id = callback_id(ids[-1])
    from runner.client import JobHandle

    last = JobHandle(last_id, steps[-1].job, "", None, client.result)
    return GroupHandle(first.id, first.members, last, client)


def _record_link(client: Client, group_id: str, then: JobSpec, callback_group: str | None,
                 member: tuple[str, str]) -> None:
    """A later link of a chain: its only member is the previous link's callback."""
    env, _ = client.envelope(then.job, then.params, then.files, **then.options,
                             group=callback_group, job_id=callback_id(group_id), after=group_id)
    client.store.create_group(GroupSpec(group_id, [member], env, OnFailure.SKIP, callback_group))
