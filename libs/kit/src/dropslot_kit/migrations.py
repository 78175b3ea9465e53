"""Alembic support: one environment per service, in the service's own schema.

Each service's `migrations/env.py` is two lines: import `run_env` and call it with the
schema. Autogenerate is filtered to that schema so it never proposes dropping other
services' tables.
"""

from __future__ import annotations

import asyncio
from typing import Any

from sqlalchemy import MetaData, pool
from sqlalchemy.ext.asyncio import create_async_engine

NAMING_CONVENTION = {
    "ix": "ix_%(table_name)s_%(column_0_N_name)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


def metadata(schema: str) -> MetaData:
    return MetaData(schema=schema, naming_convention=NAMING_CONVENTION)


def messaging_ddl(schema: str) -> list[str]:
    """Outbox and inbox tables every service has (a statement-level trigger wakes the relay)."""
    return [
        f"""
        CREATE TABLE IF NOT EXISTS {schema}.outbox (
            id uuid PRIMARY KEY,
            seq bigserial NOT NULL,
            routing_key text NOT NULL,
            envelope json NOT NULL,
            traceparent text,
            created_at timestamptz NOT NULL DEFAULT now(),
            attempts int NOT NULL DEFAULT 0,
            last_error text
        )""",
        f"CREATE INDEX IF NOT EXISTS ix_outbox_seq ON {schema}.outbox (seq)",
        f"""
        CREATE OR REPLACE FUNCTION {schema}.outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN PERFORM pg_notify('{schema}_outbox', ''); RETURN NULL; END $$""",
        f"""
        CREATE OR REPLACE TRIGGER outbox_notify AFTER INSERT ON {schema}.outbox
        FOR EACH STATEMENT EXECUTE FUNCTION {schema}.outbox_notify()""",
        f"""
        CREATE TABLE IF NOT EXISTS {schema}.inbox (
            event_id uuid NOT NULL,
            handler text NOT NULL,
            processed_at timestamptz NOT NULL DEFAULT now(),
            PRIMARY KEY (event_id, handler)
        )""",
        f"CREATE INDEX IF NOT EXISTS ix_inbox_processed_at ON {schema}.inbox (processed_at)",
    ]


def create_messaging_tables(op: Any, schema: str) -> None:
    for stmt in messaging_ddl(schema):
        op.execute(stmt)


def run_env(schema: str, target_metadata: MetaData | None = None) -> None:
    """Body of a service's alembic env.py."""
    from alembic import context

    from .settings import KitSettings

    config = context.config
    url = config.get_main_option("sqlalchemy.url") or KitSettings(service=schema).service_dsn()

    def include_name(name: str | None, type_: str, parent_names: Any) -> bool:
        if type_ == "schema":
            return name == schema
        return True

    opts: dict[str, Any] = dict(
        target_metadata=target_metadata,
        version_table_schema=schema,
        include_schemas=True,
        include_name=include_name,
        compare_type=True,
    )

    if context.is_offline_mode():
        context.configure(url=url, literal_binds=True, **opts)
        with context.begin_transaction():
            context.run_migrations()
        return

    def do_run(connection: Any) -> None:
        context.configure(connection=connection, **opts)
        with context.begin_transaction():
            context.run_migrations()

    async def main() -> None:
        engine = create_async_engine(
            url, poolclass=pool.NullPool, connect_args={"server_settings": {"search_path": schema}}
        )
        async with engine.connect() as conn:
            await conn.run_sync(do_run)
            await conn.commit()
        await engine.dispose()

    asyncio.run(main())
