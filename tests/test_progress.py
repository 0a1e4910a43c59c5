"""Progress a running job reports reaches the client that waits for it."""

from __future__ import annotations

import pytest

from runner.jobs import parse_progress
from runner.testing import running_worker




@pytest.mark.parametrize("job", ["stepper", "stepper-sh"])
def test_a_waiting_client_sees_progress_while_the_job_runs(client, plugins, settings_factory, route, job):
    seen = []
    with running_worker(settings_factory(route), plugins):
        result = client.submit(job, route=route, wait=True).wait(30, on_progress=seen.append)
    assert result.ok
    percents = [p["percent"] for p in seen]
    assert len(percents) >= 2 and percents == sorted(percents) and percents[-1] >= 50
    assert all(p["message"].startswith(("step", "part")) for p in seen)


def test_progress_lines_are_parsed_strictly():
    assert parse_progress("runner-progress: 3/4 resizing") == {"done": 3, "total": 4, "percent": 75.0, "message": "resizing"}
    assert parse_progress("runner-progress: 42.5% nearly") == {"percent": 42.5, "message": "nearly"}
    assert parse_progress("progress: 3/4") is None and parse_progress("runner-progress: lots") is None
    assert parse_progress("runner-progress: 250%")["percent"] == 100.0
