"""First-party media jobs for runner: resize (Pillow), declared in :mod:`runner_media.plugin`.

This package init stays empty so that a job's child interpreter, which imports
``runner_media.resize``, does not pay for the declarations (click, pluggy).
"""
