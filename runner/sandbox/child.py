"""Entry point of the child interpreter that runs a function job.

``python -I -c <boot> RUNNER_PARENT SPEC_FD RESULT_FD`` (see :data:`runner.execution.CHILD_BOOT`):
reads the spec (function, import path, params, context) as JSON from one inherited file
descriptor and writes the outcome as JSON to the other.  It runs inside
the sandbox, so nothing here can reach the worker's memory or environment; the traceback it
reports is the job's own.
"""

from __future__ import annotations

import importlib
import json
import os
import sys
import traceback
from pathlib import Path
from typing import Any

from runner.errors import Reject, Retry
from runner.context import JobContext
from runner.outcome import check_value


def _call(spec: dict[str, Any]) -> dict[str, Any]:
    # The interpreter is isolated (-I): the job's module is found through the directories the
    # worker names, never through the work directory or PYTHON* variables.
    extra = [p for p in spec.get("path", []) if isinstance(p, str) and p not in sys.path]
    sys.path[1:1] = extra
    module_name, _, func_name = spec["function"].partition(":")
    ctx = JobContext(
        job_id=spec["context"]["job_id"],
        job=spec["context"]["job"],
        attempt=spec["context"]["attempt"],
        workdir=Path(spec["context"]["workdir"]),
    )
    try:
        func = getattr(importlib.import_module(module_name), func_name)
        value = func(ctx, **spec["params"])
        json.dumps(value, allow_nan=False)  # the value must survive the trip back
        check_value(value)  # and fit the worker's limits: say so here, with the job's traceback
        return {"ok": True, "value": value}
    except Retry as exc:
        return _failure("retry", exc, delay=exc.delay)
    except Reject as exc:
        return _failure("reject", exc)
    except BaseException as exc:  # noqa: BLE001 - report everything, the worker decides
        return _failure("error", exc)


def _failure(kind: str, exc: BaseException, delay: float | None = None) -> dict[str, Any]:
    exc_type = type(exc)
    qualname = (
        exc_type.__qualname__
        if exc_type.__module__ == "builtins"
        else f"{exc_type.__module__}.{exc_type.__qualname__}"
    )
    return {
        "ok": False,
        "kind": kind,
        "exc_type": qualname,
        "error": f"{exc_type.__name__}: {exc}",
        "traceback": "".join(traceback.format_exception(exc)),
        "delay": delay,
    }


def main(argv: list[str]) -> int:
    spec_fd, result_fd = int(argv[1]), int(argv[2])
    with os.fdopen(spec_fd, "rb") as fh:
        spec = json.load(fh)
    outcome = _call(spec)
    with os.fdopen(result_fd, "w", encoding="utf-8") as out:
        json.dump(outcome, out, default=str)
    return 0 if outcome["ok"] else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
