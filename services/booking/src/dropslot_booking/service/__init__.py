"""Booking's use cases: one function per command or event (open a unit of work, load, apply the
domain rule, save, emit events; the unit of work commits once, with the outbox rows)."""
