"""How long a tenant's data is kept: its own setting, else the server's."""

from __future__ import annotations

from datetime import timedelta


def keeps_images(own: bool | None, default: bool) -> bool:
    """Whether a job's uploaded images outlive it: the first choice made of the job's, the
    tenant's and the server's."""
    return default if own is None else own


def retention(own_seconds: int | None, default_seconds: int) -> timedelta | None:
    """The time data is kept after it ends; None: for ever (0 means that too)."""
    seconds = default_seconds if own_seconds is None else own_seconds
    return timedelta(seconds=seconds) if seconds > 0 else None
