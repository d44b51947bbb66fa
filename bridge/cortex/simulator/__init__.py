"""The Cortex API simulator used by tests, benchmarks and the ``sim``/``demo`` commands."""
