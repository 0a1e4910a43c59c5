"""Prometheus text exposition (format 0.0.4) from the history's counters and gauges."""

from __future__ import annotations

import time
from typing import Any

from runner_monitor.fold import BUCKETS
from runner_monitor.history import History

CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"


def _label(value: Any) -> str:
    return str(value).replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def _num(value: float) -> str:
    return repr(float(value)) if value != int(value) else str(int(value))


def render(history: History, now: float | None = None) -> str:
    now = now or time.time()
    counters = history.counters()
    lines = [
        "# HELP runner_jobs_total Job events seen, by job type and state "
        "(received, started, succeeded, failed (every failed attempt), retried, dead, "
        "repeated (an attempt that completed again: a duplicate run)).",
        "# TYPE runner_jobs_total counter",
    ]
    for row in counters["jobs"]:
        lines.append(
            f'runner_jobs_total{{job="{_label(row["job"])}",state="{_label(row["state"])}"}} '
            f'{row["n"]}'
        )
    lines += [
        "# HELP runner_job_duration_seconds Wall-clock time of finished attempts, by job type.",
        "# TYPE runner_job_duration_seconds histogram",
    ]
    for row in counters["durations"]:
        job = _label(row["job"])
        for bound, count in zip(BUCKETS, row["buckets"]):
            lines.append(f'runner_job_duration_seconds_bucket{{job="{job}",le="{_num(bound)}"}} {count}')
        lines.append(f'runner_job_duration_seconds_bucket{{job="{job}",le="+Inf"}} {row["count"]}')
        lines.append(f'runner_job_duration_seconds_sum{{job="{job}"}} {row["sum"]!r}')
        lines.append(f'runner_job_duration_seconds_count{{job="{job}"}} {row["count"]}')
    queues = history.queues(now)
    lines += [
        "# HELP runner_queue_depth Jobs ready in a worker queue (polled from the broker).",
        "# TYPE runner_queue_depth gauge",
    ]
    lines += [f'runner_queue_depth{{queue="{_label(q["name"])}"}} {q["depth"]}'
              for q in queues if q["depth"] is not None]
    lines += [
        "# HELP runner_queue_consumers Workers online on a queue (from their events).",
        "# TYPE runner_queue_consumers gauge",
    ]
    lines += [f'runner_queue_consumers{{queue="{_label(q["name"])}"}} {q["consumers"]}'
              for q in queues]
    workers = history.workers(now)
    online = [w for w in workers if w["state"] in ("online", "stopping")]
    lines += [
        "# HELP runner_workers_online Workers whose heartbeat is current.",
        "# TYPE runner_workers_online gauge",
        f"runner_workers_online {len(online)}",
        "# HELP runner_worker_slots_busy Job slots in use, by worker.",
        "# TYPE runner_worker_slots_busy gauge",
    ]
    lines += [f'runner_worker_slots_busy{{worker="{_label(w["name"])}"}} {w["busy"] or 0}'
              for w in online]
    lines += [
        "# HELP runner_worker_events_dropped Events a worker dropped (broker unreachable).",
        "# TYPE runner_worker_events_dropped gauge",
    ]
    lines += [f'runner_worker_events_dropped{{worker="{_label(w["name"])}"}} {w["dropped"] or 0}'
              for w in workers]
    return "\n".join(lines) + "\n"
