"""Admin-defined system commands: each ``[jobs.NAME]`` table with ``argv`` becomes a job type.

Example ``runner.toml``::

    [jobs.backup]
    argv = ["pg_dump", "--dbname", "{db}", "--file", "{out}/dump.sql"]
    params = { db = { pattern = "^[a-z_]+$" } }
    timeout = "10m"
    retries = 3
    route = "heavy"
    retry_on_exit = [75]

The worker runs only argv templates from its own configuration: a message names the job and
carries parameter values, which are validated and then substituted one argv element at a time.
No shell is involved.  docs/plugins/commands.md documents every key.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any

from runner import JobType, hookimpl
from runner_commands.spec import build_job

__all__ = ["build_job", "register_jobs"]


@hookimpl
def register_jobs(register: Callable[[JobType], None], settings: Any) -> None:
    """Register one job type per ``[jobs.NAME]`` table that has an ``argv``."""
    for name, table in sorted(settings.jobs.items()):
        if isinstance(table, Mapping) and "argv" in table:
            register(build_job(str(name), table))
