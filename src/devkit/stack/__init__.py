"""The compose stack in containers: ``make image``, ``make stack-up``, ``make stack-down``."""
