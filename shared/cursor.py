"""Opaque pagination cursors: the (created_at, id) of the last row of a page."""

from __future__ import annotations

import base64
import uuid
from datetime import datetime
from typing import TypeVar

from sqlalchemy import Select, and_, or_
from sqlalchemy.orm import Session

from shared.errors import InvalidInput

T = TypeVar("T")


def encode_cursor(created_at: datetime, row_id: uuid.UUID) -> str:
    raw = f"{created_at.isoformat()}|{row_id}"
    return base64.urlsafe_b64encode(raw.encode()).decode().rstrip("=")


def decode_cursor(cursor: str) -> tuple[datetime, uuid.UUID]:
    try:
        padded = cursor + "=" * (-len(cursor) % 4)
        created, job_id = base64.urlsafe_b64decode(padded).decode().split("|")
        return datetime.fromisoformat(created), uuid.UUID(job_id)
    except (ValueError, UnicodeDecodeError) as exc:
        raise InvalidInput("cursor is not one this API returned", code="invalid_cursor") from exc


def newest_first_page(
    session: Session, stmt: Select[tuple[T]], entity: type[T], limit: int, cursor: str | None
) -> tuple[list[T], str | None]:
    """One page of `stmt`'s rows, newest first, after `cursor`; and the next page's cursor."""
    created, row_id = entity.created_at, entity.id  # type: ignore[attr-defined]
    if cursor:
        created_at, last_id = decode_cursor(cursor)
        stmt = stmt.where(or_(created < created_at, and_(created == created_at, row_id < last_id)))
    stmt = stmt.order_by(created.desc(), row_id.desc()).limit(limit + 1)
    rows = list(session.scalars(stmt))
    if len(rows) <= limit:
        return rows, None
    last = rows[limit - 1]
    return rows[:limit], encode_cursor(last.created_at, last.id)  # type: ignore[attr-defined]
