"""Which dependency an exception says is down: the database, the broker or the store.

Every process (API, GPU worker, control process) asks this one function, so an outage is
told apart from a bug the same way everywhere: an outage is expected and passes, so a loop
logs it in one line and waits; anything else is a bug and gets its traceback. The API
answers an outage with 503 and `Retry-After` (api/errors.py).
"""

from __future__ import annotations

import logging

import kombu.exceptions
import psycopg
import redis.exceptions
import sqlalchemy.exc
from botocore.exceptions import BotoCoreError, ClientError, HTTPClientError
from botocore.exceptions import ConnectionError as BotoConnectionError

from shared.storage import StoreUnreachable

# Exception types raised by the clients of our dependencies; which of them mean "down" is
# decided by `unreachable` below.
CLIENT_ERRORS: tuple[type[Exception], ...] = (
    sqlalchemy.exc.SQLAlchemyError,
    psycopg.Error,
    redis.exceptions.RedisError,
    kombu.exceptions.KombuError,
    BotoCoreError,
    ClientError,
    StoreUnreachable,
)


def unreachable(exc: BaseException) -> str | None:
    """Which dependency `exc` (or an exception it was raised from) says is unreachable."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        what = _unreachable_one(current)
        if what is not None:
            return what
        current = current.__cause__ or current.__context__
    return None


def _unreachable_one(exc: BaseException) -> str | None:
    if isinstance(exc, sqlalchemy.exc.DBAPIError):
        if exc.connection_invalidated or isinstance(
            exc, sqlalchemy.exc.OperationalError | sqlalchemy.exc.InterfaceError
        ):
            return "database"
        return None
    if isinstance(exc, sqlalchemy.exc.TimeoutError):  # every pooled connection is busy
        return "database"
    if isinstance(exc, psycopg.OperationalError | psycopg.InterfaceError):
        return "database"
    if isinstance(exc, redis.exceptions.ConnectionError | redis.exceptions.TimeoutError):
        return "broker"
    if isinstance(exc, kombu.exceptions.OperationalError):
        return "broker"
    if isinstance(exc, StoreUnreachable | BotoConnectionError | HTTPClientError):
        # refused, reset, timed out
        return "object store"
    if isinstance(exc, ClientError):
        status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode", 0)
        return "object store" if status >= 500 else None
    return None


def log_failure(logger: logging.Logger, message: str, exc: BaseException,
                *args: object) -> None:
    """A loop's failed pass: an outage in one line (which dependency, the exception's type),
    since it is expected and passes; anything else with its traceback, since it is a bug."""
    what = unreachable(exc)
    if what is None:
        logger.warning(message, *args, exc_info=exc)
    else:
        logger.warning(message + " (the %s is unreachable: %s)", *args, what,
                       exc.__class__.__name__)
