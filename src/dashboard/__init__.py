"""Panel dashboard: planned in issue 4."""
