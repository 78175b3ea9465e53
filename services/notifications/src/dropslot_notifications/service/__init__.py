"""Use cases: event handlers (write rows) and the sender loop (render and deliver)."""
