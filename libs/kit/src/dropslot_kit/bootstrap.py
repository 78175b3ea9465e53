"""Creates the database, and per service a schema and a non-superuser role that owns it.

Runs with an admin connection (`DROPSLOT_ADMIN_DATABASE_URL`); idempotent.

    python -m dropslot_kit.bootstrap [--drop]
"""

from __future__ import annotations

import asyncio
import sys

import asyncpg

from .settings import SERVICES_WITH_DB, KitSettings, database_name, with_credentials


def _ident(name: str) -> str:
    if not name.replace("_", "").isalnum():
        raise ValueError(f"unsafe identifier {name!r}")
    return f'"{name}"'


async def bootstrap(settings: KitSettings | None = None, services: tuple[str, ...] = SERVICES_WITH_DB) -> str:
    settings = settings or KitSettings()
    dbname = database_name(settings.database_url)
    admin = await asyncpg.connect(settings.admin_database_url)
    try:
        exists = await admin.fetchval("SELECT 1 FROM pg_database WHERE datname = $1", dbname)
        if not exists:
            await admin.execute(f"CREATE DATABASE {_ident(dbname)}")
        for service in services:
            role = f"dropslot_{service}"
            has_role = await admin.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            pw = settings.db_password.replace("'", "''")
            verb = "ALTER" if has_role else "CREATE"
            # Ordinary roles: no superuser, no BYPASSRLS, so row-level security applies to them.
            await admin.execute(
                f"{verb} ROLE {_ident(role)} LOGIN NOSUPERUSER NOBYPASSRLS NOCREATEDB NOCREATEROLE PASSWORD '{pw}'"
            )
            await admin.execute(f"GRANT CONNECT ON DATABASE {_ident(dbname)} TO {_ident(role)}")
    finally:
        await admin.close()

    admin_db = with_credentials_of(settings.admin_database_url, dbname)
    conn = await asyncpg.connect(admin_db)
    try:
        await conn.execute("REVOKE CREATE ON SCHEMA public FROM PUBLIC")
        for service in services:
            role = f"dropslot_{service}"
            await conn.execute(f"CREATE SCHEMA IF NOT EXISTS {_ident(service)} AUTHORIZATION {_ident(role)}")
            await conn.execute(f"REVOKE ALL ON SCHEMA {_ident(service)} FROM PUBLIC")
            await conn.execute(
                f"ALTER ROLE {_ident(role)} IN DATABASE {_ident(dbname)} SET search_path = {_ident(service)}"
            )
    finally:
        await conn.close()
    return dbname


def with_credentials_of(admin_url: str, dbname: str) -> str:
    """The admin URL pointed at another database."""
    from urllib.parse import urlsplit, urlunsplit

    parts = urlsplit(admin_url)
    return urlunsplit((parts.scheme, parts.netloc, "/" + dbname, parts.query, ""))


async def drop_database(settings: KitSettings) -> None:
    dbname = database_name(settings.database_url)
    admin = await asyncpg.connect(settings.admin_database_url)
    try:
        await admin.execute(f"DROP DATABASE IF EXISTS {_ident(dbname)} WITH (FORCE)")
    finally:
        await admin.close()


__all__ = ["bootstrap", "drop_database", "with_credentials"]

if __name__ == "__main__":
    s = KitSettings()
    if "--drop" in sys.argv:
        asyncio.run(drop_database(s))
    name = asyncio.run(bootstrap(s))
    print(f"database {name}: schemas and roles for {', '.join(SERVICES_WITH_DB)} are in place")
