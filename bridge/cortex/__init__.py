"""The Cortex API layer: endpoints and bodies, client, request budget, circuit breaker, catalog, token.

Imports only :mod:`bridge.records`, :mod:`bridge.metrics`, :mod:`bridge.config`, :mod:`bridge.logs`
and itself (``tests/cortex/test_layers.py``). The simulator (``simulator/``) imports nothing of the
bridge outside itself: it is an independent model of Cortex.
"""
