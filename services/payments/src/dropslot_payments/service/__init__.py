"""Use cases and background loops."""
