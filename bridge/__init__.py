"""Cortex-bridge: CI/CD, Kafka and Kubernetes events into Cortex, durably and effectively once."""

#: The release, in one place: the package metadata (pyproject.toml reads it), ``cortex-bridge
#: --version``, the ``cortex_bridge_build_info`` metric and the ``bridge_started`` log line.
#: Every release's changes and upgrade notes are in CHANGELOG.md.
__version__ = "0.1.0"
