"""Prometheus ``/metrics`` from the history's counters and gauges, through prometheus-client.

The numbers live in the history (SQLite), not in process memory, so they survive a restart of
the monitor: a custom collector reads them at each scrape and prometheus-client renders them.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

from prometheus_client import CollectorRegistry
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.exposition import choose_encoder
from prometheus_client.registry import Collector

from runner_monitor.fold import BUCKETS
from runner_monitor.history import History


class HistoryCollector(Collector):
    """Every metric of one scrape, read from ``history`` at ``now``."""

    def __init__(self, history: History, now: float | None = None) -> None:
        self.history = history
        self.now = now

    def collect(self) -> Iterator[Metric]:
        now = self.now or time.time()
        counters = self.history.counters()
        jobs = CounterMetricFamily(
            "runner_jobs", "Job events seen, by job type and state (received, started, "
            "succeeded, failed (every failed attempt), retried, dead, released (stopped and handed "
            "back), revoked, repeated (an attempt that completed again: a duplicate run)).",
            labels=["job", "state"])
        for row in counters["jobs"]:
            jobs.add_metric([str(row["job"]), str(row["state"])], row["n"])
        yield jobs
        durations = HistogramMetricFamily(
            "runner_job_duration_seconds", "Wall-clock time of finished attempts, by job type.",
            labels=["job"])
        for row in counters["durations"]:
            buckets = [(repr(float(bound)), count) for bound, count in zip(BUCKETS, row["buckets"])]
            durations.add_metric([str(row["job"])], [*buckets, ("+Inf", row["count"])], row["sum"])
        yield durations
        queues = self.history.queues(now)
        depth = GaugeMetricFamily("runner_queue_depth", "Jobs ready in a worker queue (polled "
                                  "from the broker).", labels=["queue"])
        consumers = GaugeMetricFamily("runner_queue_consumers", "Workers online on a queue "
                                      "(from their events).", labels=["queue"])
        for q in queues:
            if q["depth"] is not None:
                depth.add_metric([str(q["name"])], q["depth"])
            consumers.add_metric([str(q["name"])], q["consumers"])
        yield depth
        yield consumers
        yield from self._workers(now)

    def _workers(self, now: float) -> Iterator[Metric]:
        workers = self.history.workers(now)
        online = [w for w in workers if w["state"] in ("online", "stopping")]
        yield GaugeMetricFamily("runner_workers_online", "Workers whose heartbeat is current.",
                                value=len(online))
        busy = GaugeMetricFamily("runner_worker_slots_busy", "Job slots in use, by worker.",
                                 labels=["worker"])
        for w in online:
            busy.add_metric([str(w["name"])], w["busy"] or 0)
        yield busy
        dropped = GaugeMetricFamily("runner_worker_events_dropped", "Events a worker dropped "
                                    "(broker unreachable).", labels=["worker"])
        for w in workers:
            dropped.add_metric([str(w["name"])], w["dropped"] or 0)
        yield dropped


def render(history: History, accept: str = "", now: float | None = None) -> tuple[bytes, str]:
    """Every metric, in the exposition format the scraper's ``Accept`` header asks for, and
    that format's content type."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(HistoryCollector(history, now))
    encode, content_type = choose_encoder(accept)
    return encode(registry), content_type
