from dropslot_kit.settings import KitSettings


class Settings(KitSettings):
    service: str = "catalog"
    # How often the scheduler looks for drops due to go LIVE or to end. Transitions happen
    # within one tick of their time; a small tick costs one indexed query per tick.
    catalog_scheduler_tick_seconds: float = 1.0
    # Drops moved per scheduler pass (each in its own short transaction).
    catalog_scheduler_batch: int = 100
    # Public answers cached in Redis: entries live this long at most (a write also makes
    # them unreachable at once by bumping the cache version).
    catalog_cache_enabled: bool = True
    catalog_cache_ttl_seconds: int = 60
    # Cache-Control max-age of public answers. 0 = clients and CDNs may store them but must
    # revalidate (cheap: ETag / 304), so a change is visible on the next read.
    catalog_public_max_age_seconds: int = 0
    catalog_public_stale_while_revalidate_seconds: int = 30
