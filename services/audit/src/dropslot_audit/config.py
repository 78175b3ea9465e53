from dropslot_kit.settings import KitSettings


class Settings(KitSettings):
    service: str = "audit"
    # Keep at least this many whole months before the current one; older monthly partitions are
    # dropped (archived first when `audit_archive_dir` is set). 0 keeps everything forever.
    audit_retention_months: int = 0
    # Where dropped partitions are archived (gzipped CSV via COPY), on the audit service's host.
    audit_archive_dir: str | None = None
    # Monthly partitions created ahead of time beyond the current month.
    audit_partitions_ahead: int = 2
    # How often partitions are created ahead and retention applied.
    audit_maintenance_interval_seconds: float = 86_400.0
