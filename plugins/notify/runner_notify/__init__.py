"""Failure notifications (e-mail) for runner: a first-party plugin."""
