"""The plugin manager: built by a factory, the only place that calls ``pm.hook``.

Each hook call is wrapped in a typed method of :class:`Plugins`, so the rest of runner never
touches pluggy directly.
"""

from __future__ import annotations

import importlib
import importlib.metadata
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import click
import pluggy

from runner import hookspecs
from runner.config import Settings
from runner.errors import PluginError
from runner.jobs import JobType, Registry
from runner.message import JobMessage, JobResult

log = logging.getLogger(__name__)
GROUP = "runner"


@dataclass(frozen=True)
class PluginInfo:
    name: str
    package: str
    version: str
    jobs: tuple[str, ...]


class Plugins:
    """Loaded plugins, the job registry they filled, and typed hook calls."""

    def __init__(
        self,
        pm: pluggy.PluginManager,
        errors: list[str],
        dists: dict[str, tuple[str, str]] | None = None,
        settings: Settings | None = None,
    ) -> None:
        self.pm = pm
        self.errors = errors
        self.dists = dists or {}
        self.tracing = False
        self.jobs = Registry()
        self._job_plugin: dict[str, str] = {}
        for impl in pm.hook.register_jobs.get_hookimpls():
            name = impl.plugin_name

            def register(job: JobType, _plugin: str = name) -> None:
                self.jobs.register(job, _plugin)

            try:
                available = {"register": register, "settings": settings or Settings()}
                impl.function(**{arg: available[arg] for arg in impl.argnames})
            except PluginError:
                raise
            except Exception as exc:  # a broken plugin must not take the others down
                self.errors.append(f"plugin {name}: register_jobs failed: {exc}")

    def info(self) -> list[PluginInfo]:
        out = []
        for name, _plugin in self.pm.list_name_plugin():
            dist = self.dists.get(name)
            jobs = tuple(j.name for j in self.jobs if j.plugin == name)
            out.append(
                PluginInfo(
                    name=name,
                    package=dist[0] if dist else "",
                    version=dist[1] if dist else "",
                    jobs=jobs,
                )
            )
        return sorted(out, key=lambda p: p.name)

    # --- typed hook calls -------------------------------------------------------------------
    def register_commands(self, cli: click.Group) -> None:
        self._observe("register_commands", cli=cli)

    def route_job(self, job: JobType, message: JobMessage) -> str | None:
        try:
            result: str | None = self.pm.hook.route_job(job=job, message=message)
        except Exception as exc:
            raise PluginError(f"a route_job hook failed for job {job.name!r}: {exc}") from exc
        return result

    def job_started(self, job: JobType, message: JobMessage, worker: Any) -> None:
        self._observe("job_started", job=job, message=message, worker=worker)

    def job_progress(
        self, job: JobType, message: JobMessage, progress: dict[str, Any], worker: Any
    ) -> None:
        self._observe("job_progress", job=job, message=message, progress=progress, worker=worker)

    def job_succeeded(
        self, job: JobType, message: JobMessage, result: JobResult, worker: Any
    ) -> None:
        self._observe("job_succeeded", job=job, message=message, result=result, worker=worker)

    def job_failed(
        self, job: JobType, message: JobMessage, result: JobResult, final: bool, worker: Any
    ) -> None:
        self._observe(
            "job_failed", job=job, message=message, result=result, final=final, worker=worker
        )

    def job_retrying(
        self, job: JobType, message: JobMessage, result: JobResult, delay: float, worker: Any
    ) -> None:
        self._observe(
            "job_retrying", job=job, message=message, result=result, delay=delay, worker=worker
        )

    def job_released(self, job: JobType, message: JobMessage, reason: str, worker: Any) -> None:
        self._observe("job_released", job=job, message=message, reason=reason, worker=worker)

    def job_revoked(self, job: JobType | None, message: JobMessage, worker: Any) -> None:
        self._observe("job_revoked", job=job, message=message, worker=worker)

    def job_dead(
        self,
        job: JobType | None,
        message: JobMessage | None,
        reason: str,
        result: JobResult | None,
        worker: Any,
    ) -> None:
        self._observe(
            "job_dead", job=job, message=message, reason=reason, result=result, worker=worker
        )

    def worker_started(self, worker: Any) -> None:
        self._observe("worker_started", worker=worker)

    def worker_stopping(self, worker: Any) -> None:
        self._observe("worker_stopping", worker=worker)

    def _observe(self, hook: str, **kwargs: Any) -> None:
        """Observers never break the job path, nor each other: each one's error is logged."""
        for impl in reversed(getattr(self.pm.hook, hook).get_hookimpls()):
            if self.tracing:
                log.info("hook: %s [%s] %s", hook, impl.plugin_name, sorted(kwargs))
            try:
                impl.function(**{arg: kwargs[arg] for arg in impl.argnames})
            except Exception:
                log.exception("plugin %s: its %s hook failed", impl.plugin_name, hook)

def make_plugins(
    load: Iterable[str] | None = None,
    trace: bool = False,
    extra: Iterable[object] = (),
    modules: Iterable[str] = (),
    settings: Settings | None = None,
) -> Plugins:
    """Build a plugin manager from the ``runner`` entry points.

    Args:
        load: names of entry points to load (``RUNNER_LOAD_PLUGINS``); ``None`` loads all, an
            empty list none.
        trace: log every hook call (``RUNNER_TRACE_PLUGINS``).
        extra: plugin objects registered directly (tests, embedding applications).
        modules: importable module names registered as plugins without packaging them
            (setting ``plugins``, ``RUNNER_PLUGINS``).
        settings: passed to ``register_jobs`` implementations that take it.
    """
    pm = pluggy.PluginManager(GROUP)
    pm.add_hookspecs(hookspecs)
    errors: list[str] = []
    dists: dict[str, tuple[str, str]] = {}
    wanted = None if load is None else set(load)
    for ep in importlib.metadata.entry_points(group=GROUP):
        if wanted is not None and ep.name not in wanted:
            continue
        if pm.get_plugin(ep.name) is not None:
            continue
        pkg = ep.dist.name if ep.dist else ep.value
        try:
            pm.register(ep.load(), name=ep.name)
            if ep.dist:
                dists[ep.name] = (ep.dist.name, ep.dist.version)
        except Exception as exc:
            errors.append(f"plugin {ep.name} (package {pkg}) failed to load: {exc}")
            continue
    if wanted:
        found = {ep.name for ep in importlib.metadata.entry_points(group=GROUP)}
        errors.extend(f"plugin {name} is not installed" for name in sorted(wanted - found))
    for module in modules:
        try:
            pm.register(importlib.import_module(module), name=module)
        except Exception as exc:
            errors.append(f"plugin module {module} failed to load: {exc}")
    for i, plugin in enumerate(extra):
        pm.register(plugin, name=getattr(plugin, "__name__", None) or f"extra-{i}")
    try:
        pm.check_pending()
    except pluggy.PluginValidationError as exc:
        raise PluginError(str(exc)) from exc
    if trace:
        pm.trace.root.setwriter(lambda msg: log.info("hook: %s", msg.rstrip()))
        pm.enable_tracing()
    plugins = Plugins(pm, errors, dists, settings)
    plugins.tracing = trace
    for err in errors:  # the CLI shows them once, in red; library users read .errors
        log.debug("%s", err)
    return plugins
