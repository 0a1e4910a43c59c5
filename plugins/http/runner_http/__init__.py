"""runner first-party plugin: http (under construction)."""
