"""Engine and session factory. Nothing connects until an entry point calls these."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Connection, Engine, create_engine, event
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session, sessionmaker

from shared.settings import DatabaseSettings

# Connections older than this are replaced at checkout, so ones a firewall or proxy dropped
# silently while idle are not reused forever. A server restart is handled without this:
# the first statement on a dead connection fails, and SQLAlchemy then invalidates the pool.
POOL_RECYCLE_SECONDS = 1800
CONNECT_TIMEOUT_SECONDS = 5


def sqlalchemy_url(database: DatabaseSettings) -> str:
    """Plain `postgresql://` URLs (what most tools print) get the psycopg 3 driver."""
    url = database.database_url
    if url.startswith("postgresql://") or url.startswith("postgres://"):
        return "postgresql+psycopg://" + url.split("://", 1)[1]
    return url


def libpq_url(database: DatabaseSettings) -> str:
    """The database URL as psycopg itself takes it (for LISTEN, outside SQLAlchemy)."""
    scheme, rest = database.database_url.split("://", 1)
    return "postgresql://" + rest if scheme.startswith("postgres") else database.database_url


def is_sqlite(database: DatabaseSettings) -> bool:
    return database.database_url.startswith("sqlite")


def make_engine(
    database: DatabaseSettings, *, autocommit: bool = False, pool_size: int = 10, max_overflow: int = 20
) -> Engine:
    """`autocommit`: each statement is its own transaction, so a single-statement write or
    a plain read is one round trip (no BEGIN, no COMMIT); its pool is set up so once, at
    connect, rather than at every checkout."""
    url = sqlalchemy_url(database)
    options: dict[str, Any] = {"isolation_level": "AUTOCOMMIT"} if autocommit else {}
    if url.startswith("sqlite"):
        engine = create_engine(
            url, connect_args={"check_same_thread": False, "timeout": 30}, **options
        )
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    # No pool_pre_ping: it costs a round trip per checkout on every request.
    return create_engine(
        url, pool_size=pool_size, max_overflow=max_overflow, pool_recycle=POOL_RECYCLE_SECONDS,
        connect_args={"connect_timeout": CONNECT_TIMEOUT_SECONDS}, **options,
    )


def _sqlite_pragmas(dbapi_conn, _record) -> None:  # type: ignore[no-untyped-def]
    # WAL lets the API read while the worker writes in the embedded setup.
    cur = dbapi_conn.cursor()
    cur.execute("PRAGMA journal_mode=WAL")
    cur.execute("PRAGMA busy_timeout=30000")
    cur.close()


def upsert_insert(bind: Connection | Engine, table: Any) -> Any:
    """`INSERT` of the bind's dialect, the form that takes `on_conflict_do_update` (Postgres
    in production, SQLite in the embedded setup)."""
    module = postgresql if bind.dialect.name == "postgresql" else sqlite
    return module.insert(table)


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    return sessionmaker(engine, expire_on_commit=False)
