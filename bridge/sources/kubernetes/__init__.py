"""bridge/sources/kubernetes."""
