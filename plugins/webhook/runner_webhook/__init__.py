"""runner first-party plugin: webhook (under construction)."""
