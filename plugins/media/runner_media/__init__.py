"""First-party media jobs (placeholder until the plugin lands)."""
