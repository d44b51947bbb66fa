"""bridge/sources/kafka."""
