"""Batch input and output files: the row in the database, the bytes in the object store."""

from __future__ import annotations

from typing import BinaryIO

from sqlalchemy.orm import Session, sessionmaker

from shared.batches import repo as batches
from shared.errors import Conflict, InvalidInput, NotFound, quoted
from shared.models import StoredFile
from shared.storage import ObjectStore


def add_file(sessions: sessionmaker[Session], store: ObjectStore, *, tenant_id: str,
             purpose: str, filename: str | None, source: BinaryIO, size: int) -> StoredFile:
    """Streams `source` to `files/<id>`, then lists it under the tenant."""
    name = _filename(filename)  # before the put: a refused name leaves no object behind
    file_id = batches.new_file_id()
    key = f"files/{file_id}"
    store.put_file(key, source, "application/jsonl")
    with sessions.begin() as session:
        return batches.add_file(session, file_id=file_id, tenant_id=tenant_id, purpose=purpose,
                                filename=name, size=size, object_key=key)


def list_files(reads: sessionmaker[Session], tenant: str | None, purpose: str | None,
               limit: int, after: str | None) -> tuple[list[StoredFile], bool]:
    """A page, newest first, and whether more follow."""
    with reads() as session:
        return batches.list_files(session, tenant, purpose, limit, after)


def get_file(reads: sessionmaker[Session], file_id: str, tenant: str | None) -> StoredFile:
    with reads() as session:
        return _file(session, file_id, tenant)


def open_content(reads: sessionmaker[Session], store: ObjectStore, file_id: str,
                 tenant: str | None) -> BinaryIO:
    """The file's bytes as a stream, which the caller closes."""
    with reads() as session:
        key = _file(session, file_id, tenant).object_key
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
        key = row.object_key
        batches.delete_file(session, row)
    # Only once the row is gone: a failed delete leaves an object nothing lists, never a
    # listed file without its bytes.
    store.delete(key)


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
