"""Objects in the store that no row names: an upload whose insert's outcome was unknown, or
a process that died between its put and its insert. Each is removed once older than the
safety window, which must exceed the longest time between a put and its row's commit.

Every key the server writes names its row: `images/<job id>` and `images/<job id>.<n>` (a
job's n-th image after its first, shared/jobs/images.py), and `files/<file id>`. Keys of
any other shape are left alone: nothing says they are ours. An image is kept only while
its job's row still names that very key.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from datetime import timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from shared.jobs.images import job_of_key, stored_keys
from shared.models import Job, StoredFile
from shared.storage import ObjectStore
from shared.timeutil import utcnow

log = logging.getLogger(__name__)

_PAGE = 1000


def _named_images(session: Session, keys: Sequence[str]) -> set[str]:
    ids = {job for key in keys if (job := job_of_key(key)) is not None}
    rows = session.execute(select(Job.image_key, Job.extra_images).where(Job.id.in_(ids)))
    return {key for row in rows for key in stored_keys(row.image_key, row.extra_images)}


def _named_files(session: Session, keys: Sequence[str]) -> set[str]:
    ids = [key.removeprefix("files/") for key in keys]
    return set(session.scalars(select(StoredFile.object_key).where(
        StoredFile.id.in_(ids), StoredFile.purged_at.is_(None))))


def _ours(prefix: str, key: str) -> bool:
    if prefix == "images/":
        return job_of_key(key) is not None
    name = key.removeprefix(prefix)
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
