"""The sandbox: what the host allows, the layers, and each job's exec chain.

Rooms (docs/security.md): :mod:`~runner.sandbox.probe` finds what the host allows;
:mod:`~runner.sandbox.chain` composes the layers (:mod:`~runner.sandbox.bwrap`,
:mod:`~runner.sandbox.seccomp`, :mod:`~runner.sandbox.landlock`, :mod:`~runner.sandbox.cgroup`)
into a job's exec chain; :mod:`~runner.sandbox.run` starts one contained process and waits for it;
:mod:`~runner.sandbox.reaper` keeps the worker a clean subreaper; :mod:`~runner.sandbox.child`
is the entry point of a function job's interpreter.

Nothing is imported here: a job's child interpreter imports :mod:`runner.sandbox.child` and
must not pay for the rest.
"""
