"""runner first-party plugin: commands (under construction)."""
