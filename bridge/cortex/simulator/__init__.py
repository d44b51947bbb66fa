"""bridge/cortex/simulator."""
