"""Catalog's own Prometheus metrics (served on /metrics with the kit's)."""

from prometheus_client import Counter

PUBLIC_CACHE = Counter("catalog_public_cache_total", "Public answers by where they came from",
                       ["kind", "result"])  # result: hit | miss | unavailable
DROP_TRANSITIONS = Counter("catalog_drop_transitions_total", "Drop lifecycle moves", ["to", "by"])  # by: owner | clock
