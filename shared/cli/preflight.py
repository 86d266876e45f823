"""Checks a command makes before it starts, so a database that is missing, unreachable or
not yet migrated is one line saying what to do, not a traceback from deep inside SQLAlchemy
(or, for the servers, from a process that has already said it started)."""

from __future__ import annotations

import os
from pathlib import Path

from sqlalchemy import inspect
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError

from shared import home
from shared.db import is_sqlite, make_engine
from shared.outages import unreachable
from shared.settings import DatabaseSettings


def _where() -> str:
    chosen = os.environ.get(home.HOME_VARIABLE)
    return (f"{home.HOME_VARIABLE}={chosen}" if chosen
            else f"the vlmq home is {home.vlmq_home()}; set {home.HOME_VARIABLE} to choose another")


def _sqlite_path(database: DatabaseSettings) -> Path | None:
    path = make_url(database.database_url).database
    return Path(path) if path and path != ":memory:" else None


def writable_database_folder(command: str, database: DatabaseSettings) -> None:
    """For commands that create the database (`migrate`, `up`, `demo`): its folder must be
    one this user can make and write."""
    if not is_sqlite(database) or (path := _sqlite_path(database)) is None:
        return
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise SystemExit(f"vlmq {command}: cannot create {path.parent} for the database "
                         f"({exc.strerror}); {_where()}") from None
    if not os.access(path.parent, os.W_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise SystemExit(f"vlmq {command}: the database {path} is not writable by this user; "
                         f"{_where()}")


def migrated_database(command: str, database: DatabaseSettings, *,
                      server: bool = False) -> None:
    """For commands that use the database: it exists, answers, and holds vlmq's schema.

    A `server` (API, worker, control process) starts while a networked database is down:
    it rides out an outage, and /readyz says unavailable meanwhile. Only a database that
    cannot become usable by waiting (a missing SQLite file, no schema) stops it."""
    shown = make_url(database.database_url).render_as_string(hide_password=True)
    if is_sqlite(database) and (path := _sqlite_path(database)) is not None:
        if not path.exists():
            raise SystemExit(f"vlmq {command}: no database at {path}; run `vlmq migrate` "
                             f"(or `vlmq up`) first; {_where()}")
        if not os.access(path, os.W_OK):
            raise SystemExit(f"vlmq {command}: the database {path} is not writable by this "
                             f"user; {_where()}")
    engine = make_engine(database, pool_size=1, max_overflow=0)
    try:
        with engine.connect() as conn:
            has_schema = inspect(conn).has_table("alembic_version")
    except SQLAlchemyError as exc:
        if server and not is_sqlite(database) and unreachable(exc) == "database":
            return
        reason = " ".join(str(getattr(exc, "orig", None) or exc).split())[:300]
        raise SystemExit(f"vlmq {command}: cannot open the database {shown}: {reason}") from None
    finally:
        engine.dispose()
    if not has_schema:
        raise SystemExit(f"vlmq {command}: the database {shown} has no vlmq schema yet; "
                         "run `vlmq migrate` first")
