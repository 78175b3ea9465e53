"""SQL and provider clients."""
