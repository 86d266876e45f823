"""Objects in the store that no row names: an upload whose insert's outcome was unknown, or
a process that died between its put and its insert. Each is removed once older than the
safety window, which must exceed the longest time between a put and its row's commit.

Every key the server writes names its row: `images/<job id>` (shared/jobs/intake.py) and
`files/<file id>`. Keys of any other shape are left alone: nothing says they are ours.
"""

from __future__ import annotations

import logging
import uuid
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.models import Job, StoredFile
from shared.storage import ObjectStore
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

_PAGE = 1000


def _named_images(session: Session, keys: Sequence[str]) -> set[str]:
    ids = {}
    for key in keys:
        try:
            ids[uuid.UUID(key.removeprefix("images/"))] = key
        except ValueError:
            continue
    named = session.execute(select(Job.image_key).where(Job.id.in_(list(ids)))).scalars()
    return {key for key in named if key is not None}


def _named_files(session: Session, keys: Sequence[str]) -> set[str]:
    ids = [key.removeprefix("files/") for key in keys]
    return set(session.scalars(select(StoredFile.object_key).where(
        StoredFile.id.in_(ids), StoredFile.purged_at.is_(None))))


def _ours(prefix: str, key: str) -> bool:
    name = key.removeprefix(prefix)
    if prefix == "images/":
        try:
            uuid.UUID(name)
        except ValueError:
            return False
        return True
    return name.startswith("file-") and "/" not in name


_KINDS: tuple[tuple[str, Callable[[Session, Sequence[str]], set[str]]], ...] = (
    ("images/", _named_images),
    ("files/", _named_files),
)


def remove_orphans(sessions: sessionmaker[Session], store: ObjectStore,
                   min_age: timedelta) -> int:
    """One walk of the store; returns how many objects it removed."""
    cutoff = utcnow() - min_age
    removed = 0
    for prefix, named in _KINDS:
        for page in store.list_pages(prefix, _PAGE):
            old = [o.key for o in page if o.modified_at < cutoff and _ours(prefix, o.key)]
            if not old:
                continue
            with sessions() as session:
                kept = named(session, old)
            stray = [key for key in old if key not in kept]
            if stray:
                store.delete_many(stray)
                removed += len(stray)
    if removed:
        log.warning("removed %d objects that no row named (older than %s)", removed, min_age)
    return removed
