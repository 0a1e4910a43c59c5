"""The dashboard's live charts: jobs per second by outcome, and duration percentiles by job type,
over a recent window of the history (``GET /api/stats``)."""

from __future__ import annotations

import math
import time
from collections import defaultdict
from typing import Any

from runner_monitor.history import History

OUTCOMES = ("succeeded", "failed", "dead")
MAX_WINDOW = 86400.0
BUCKETS = 60  # points per series


def stats(history: History, window: float = 600.0, now: float | None = None) -> dict[str, Any]:
    """``{window, step, series: [{t, succeeded, failed, dead}], durations: [{job, n, p50, p95,
    max}]}``: rates in jobs per second per ``step``-long bucket (the last bucket ends at
    ``now``); a failed attempt that is retried counts as ``failed``, its final one too."""
    window = min(max(float(window), 60.0), MAX_WINDOW)
    now = time.time() if now is None else now
    step = window / BUCKETS
    start = now - window
    counts = [dict.fromkeys(OUTCOMES, 0) for _ in range(BUCKETS)]
    durations: dict[str, list[float]] = defaultdict(list)
    for row in history.outcomes(start):
        outcome = row["event"].split(".", 1)[1]
        index = min(int((row["ts"] - start) / step), BUCKETS - 1)
        counts[index][outcome] += 1
        if outcome != "dead" and isinstance(row["duration"], (int, float)) and row["job"]:
            durations[str(row["job"])].append(float(row["duration"]))
    series = [{"t": round(start + (i + 1) * step, 3),
               **{k: round(v / step, 4) for k, v in c.items()}} for i, c in enumerate(counts)]
    return {
        "window": window, "step": step, "series": series,
        "durations": [{"job": job, "n": len(values), "p50": _percentile(values, 50),
                       "p95": _percentile(values, 95), "max": max(values)}
                      for job, values in sorted(durations.items())],
    }


def _percentile(values: list[float], p: float) -> float:
    """The nearest-rank percentile (a value that occurred)."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)]
