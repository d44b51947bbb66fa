"""Cortex-bridge: CI/CD, Kafka and Kubernetes events into Cortex, durably and effectively once."""
