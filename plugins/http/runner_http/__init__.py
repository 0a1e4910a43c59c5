"""First-party http job for runner, declared in :mod:`runner_http.plugin`.

This package init stays empty so that the job's child interpreter, which imports
``runner_http.job``, does not pay for the declarations (click, pluggy).
"""
