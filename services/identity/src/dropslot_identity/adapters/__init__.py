"""Identity's adapters: SQL (repo), Redis (throttle), password hashing."""
