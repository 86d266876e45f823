"""Batch input and output files: the row in the database, the bytes in the object store."""

from __future__ import annotations

from datetime import timedelta
from typing import BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from api.schemas.openai import (
    EXPIRES_AFTER_ANCHORS,
    MAX_EXPIRES_AFTER_SECONDS,
    MIN_EXPIRES_AFTER_SECONDS,
)
from shared.batches import repo as batches
from shared.errors import Conflict, InvalidInput, NotFound, quoted
from shared.models import StoredFile
from shared.retention.removal import gone
from shared.storage import ObjectStore


def expires_after_seconds(field: str, anchor: object, seconds: object) -> int:
    """The seconds of an OpenAI `expires_after` policy (`field` names it in the message),
    checked against OpenAI's anchors and bounds."""
    if anchor not in EXPIRES_AFTER_ANCHORS:
        raise InvalidInput(
            f"{field}.anchor must be {' or '.join(EXPIRES_AFTER_ANCHORS)}, not {quoted(anchor)}",
            code="invalid_expires_after",
        )
    if (not isinstance(seconds, int) or isinstance(seconds, bool)
            or not MIN_EXPIRES_AFTER_SECONDS <= seconds <= MAX_EXPIRES_AFTER_SECONDS):
        raise InvalidInput(
            f"{field}.seconds must be a whole number from {MIN_EXPIRES_AFTER_SECONDS} (1 hour) "
            f"to {MAX_EXPIRES_AFTER_SECONDS} (30 days), not {quoted(seconds)}",
            code="invalid_expires_after",
        )
    return seconds


def add_file(sessions: sessionmaker[Session], store: ObjectStore, *, tenant_id: str,
             purpose: str, filename: str | None, source: BinaryIO, size: int,
             keep: timedelta | None) -> StoredFile:
    """Streams `source` to `files/<id>`, then lists it under the tenant, expiring `keep`
    from now (None: kept until deleted)."""
    name = _filename(filename)  # before the put: a refused name leaves no object behind
    file_id = batches.new_file_id()
    key = f"files/{file_id}"
    store.put_file(key, source, "application/jsonl")
    with sessions.begin() as session:
        return batches.add_file(session, file_id=file_id, tenant_id=tenant_id, purpose=purpose,
                                filename=name, size=size, object_key=key,
                                keep=keep)


def list_files(reads: sessionmaker[Session], tenant: str | None, purpose: str | None,
               limit: int, after: str | None) -> tuple[list[StoredFile], bool]:
    """A page, newest first, and whether more follow."""
    with reads() as session:
        return batches.list_files(session, tenant, purpose, limit, after)


def get_file(reads: sessionmaker[Session], file_id: str, tenant: str | None) -> StoredFile:
    with reads() as session:
        return present(_file(session, file_id, tenant))


def open_content(reads: sessionmaker[Session], store: ObjectStore, file_id: str,
                 tenant: str | None) -> BinaryIO:
    """The file's bytes as a stream, which the caller closes."""
    with reads() as session:
        key = present(_file(session, file_id, tenant)).object_key
    return store.open(key)


def delete_file(sessions: sessionmaker[Session], store: ObjectStore, file_id: str,
                tenant: str | None) -> None:
    """Refused while a batch not yet ended reads the file: its lines come from it until the
    batch's output is written."""
    with sessions.begin() as session:
        # The row lock makes a batch being created on this file wait for the delete, or
        # the delete wait for that batch (and then see it).
        row = _file(session, file_id, tenant, lock="update")
        if batches.file_in_use(session, row.id):
            raise Conflict(f"file {file_id} is the input of a batch that has not ended",
                           code="file_in_use")
        # A purged file's bytes are gone already: only its row is left to delete.
        key = row.object_key if row.purged_at is None else None
        batches.delete_file(session, row)
    # Only once the row is gone: a failed delete leaves an object nothing lists, never a
    # listed file without its bytes.
    if key is not None:
        store.delete(key)


def present(row: StoredFile) -> StoredFile:
    """`row`, unless retention removed its bytes: then 410. Checked after the tenant, so
    another tenant's purged file stays a 404."""
    if row.purged_at is not None:
        raise gone("file", row.id, row.purged_at)
    return row



def _file(session: Session, file_id: str, tenant: str | None,
          lock: str | None = None) -> StoredFile:
    row = batches.get_file(session, file_id, tenant, lock)
    if row is None:
        raise NotFound(f"no file with id {file_id}")
    return row


def _filename(filename: str | None) -> str:
    """The name the file is listed under; it must fit `files.filename` (Postgres text
    holds no NUL)."""
    name = filename or "upload"
    limit = StoredFile.filename.type.length
    if len(name) > limit or "\x00" in name:
        raise InvalidInput(
            f"the file's name {quoted(name)} must be at most {limit} characters, with no "
            "NUL", code="invalid_filename",
        )
    return name
