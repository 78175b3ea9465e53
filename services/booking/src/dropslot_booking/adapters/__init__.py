"""Everything that talks to PostgreSQL (all of booking's SQL lives here)."""
