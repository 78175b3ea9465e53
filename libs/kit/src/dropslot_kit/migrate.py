"""Runs a service's Alembic migrations as the service's own role.

    python -m dropslot_kit.migrate <service> [<service> ...]   # or `all`
"""

from __future__ import annotations

import sys
from pathlib import Path

from alembic import command
from alembic.config import Config

from .settings import SERVICES_WITH_DB, KitSettings


def repo_root() -> Path:
    here = Path(__file__).resolve()
    for parent in here.parents:
        if (parent / "services").is_dir() and (parent / "libs").is_dir():
            return parent
    return Path.cwd()


def alembic_config(service: str, settings: KitSettings | None = None) -> Config:
    settings = settings or KitSettings(service=service)
    settings = settings.model_copy(update={"service": service})
    root = repo_root() / "services" / service
    cfg = Config(str(root / "alembic.ini"))
    cfg.set_main_option("script_location", str(root / "migrations"))
    cfg.set_main_option("sqlalchemy.url", settings.service_dsn().replace("%", "%%"))
    return cfg


def upgrade(service: str, settings: KitSettings | None = None, revision: str = "head") -> None:
    command.upgrade(alembic_config(service, settings), revision)


if __name__ == "__main__":
    names = sys.argv[1:] or ["all"]
    if names == ["all"]:
        names = list(SERVICES_WITH_DB)
    for name in names:
        upgrade(name)
        print(f"{name}: migrated to head")
