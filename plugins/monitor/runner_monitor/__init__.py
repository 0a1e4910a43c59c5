"""runner first-party plugin: lifecycle events and the monitor (under construction)."""
