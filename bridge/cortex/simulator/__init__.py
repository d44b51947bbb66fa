"""A simulated Cortex tenant on loopback, for tests, benchmarks, the demo and trying the bridge.

An independent model of Cortex as docs/cortex-api.md describes it: it imports nothing of the
bridge outside this package, so the bridge agreeing with it is evidence, not construction.
``server.py`` (the process, rate limit, faults, ``/_sim/`` inspection), ``api.py`` (the Cortex
endpoints), ``store.py`` (what the tenant holds), ``bodies.py`` (request validation),
``errors.py`` (refusals), ``config.py`` (the tenant's setup).
"""

from bridge.cortex.simulator.config import EXAMPLE_CONFIG, SimFaults, SimulatorConfig
from bridge.cortex.simulator.server import SimulatorServer, create_app, serve
from bridge.cortex.simulator.store import SimEntity, SimStore

__all__ = [
    "EXAMPLE_CONFIG",
    "SimEntity",
    "SimFaults",
    "SimStore",
    "SimulatorConfig",
    "SimulatorServer",
    "create_app",
    "serve",
]
