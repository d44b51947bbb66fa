"""Sender: batching, rate limit, retry and reconcile against Cortex."""
