"""Webhook rules with no I/O: signing, the retry schedule, event-type filters, address policy."""
