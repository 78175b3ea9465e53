"""Catalog rules with no I/O: the drop lifecycle, what may change after publishing,
opening hours, currencies, distances. Plain Python, unit-tested without a database."""
