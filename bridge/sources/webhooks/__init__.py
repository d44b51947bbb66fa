"""bridge/sources/webhooks."""
