"""Audit rules with no I/O: what an event says about who did what to which entity, the
monthly partition calendar and retention, and the list cursor."""
