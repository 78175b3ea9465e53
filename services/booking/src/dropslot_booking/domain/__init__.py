"""Booking rules with no I/O: states, the reservation rule, capacity arithmetic, check-in tokens."""
