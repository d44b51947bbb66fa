"""Cortex API: the simulator used by tests, benchmarks and the ``sim``/``demo`` commands."""
