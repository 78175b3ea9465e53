"""Everything that talks to PostgreSQL (repo) and Redis (cache)."""
