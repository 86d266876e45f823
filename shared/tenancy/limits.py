"""What a tenant's own limits mean beside the server's defaults.

In a tenant's row a limit (max_active_jobs, submits_per_second, max_queued_batch_lines,
max_active_batches) is NULL for the server's default (`VLMQ_TENANT_*`), 0 for no limit
for this tenant, and N for N: the same 0 as the server-wide settings, so one tenant can
be made unlimited while the others keep the defaults. Retention is alike: NULL is
`VLMQ_RETENTION_SECONDS`, 0 keeps for ever; `keep_images` NULL is `VLMQ_KEEP_IMAGES`.

Every reader goes through `effective_limit`, so no reader can mistake a tenant's 0 for
"unset" (`own or default` would).
"""

from __future__ import annotations

import enum
import math
from typing import Literal, TypeVar

from shared.errors import InvalidInput

# The limits are INTEGER columns; a rate above this is no limit in any practical sense,
# and keeps the sliding window's count a sane integer.
MAX_COUNT = 2**31 - 1
MAX_RATE = 1e9
# Retention is an INTEGER column of seconds (about 68 years).
MAX_RETENTION_SECONDS = 2**31 - 1

Number = TypeVar("Number", int, float)


def effective_limit(own: Number | None, default: Number) -> Number | None:
    """The limit that applies to a tenant: its own, else the server's; None when there is
    none (a 0, the tenant's or the default's)."""
    value = default if own is None else own
    return value if value > 0 else None


class Keep(enum.Enum):
    """A setting left as it is (an absent field, an option not given): apart from None,
    which returns a setting to the server's default."""

    KEEP = "keep"


KEEP = Keep.KEEP
Unchanged = Literal[Keep.KEEP]


def check_count(name: str, value: int) -> int:
    """A limit that counts (jobs, lines, batches): 0 (no limit) up to MAX_COUNT."""
    if isinstance(value, bool) or not isinstance(value, int) or not 0 <= value <= MAX_COUNT:
        raise InvalidInput(f"{name}: a whole number from 0 (no limit) to {MAX_COUNT}, "
                           f"not {value!r}", code="invalid_limit")
    return value


def check_rate(name: str, value: float) -> float:
    """A rate per second: 0 (no limit) up to MAX_RATE, finite."""
    if (isinstance(value, bool) or not isinstance(value, int | float)
            or not math.isfinite(value) or not 0 <= value <= MAX_RATE):
        raise InvalidInput(f"{name}: a number from 0 (no limit) to {MAX_RATE:g}, "
                           f"not {value!r}", code="invalid_limit")
    return float(value)


def check_retention(value: int) -> int:
    """Seconds kept after the end: 0 (for ever) up to MAX_RETENTION_SECONDS."""
    if (isinstance(value, bool) or not isinstance(value, int)
            or not 0 <= value <= MAX_RETENTION_SECONDS):
        raise InvalidInput(f"retention_seconds: a whole number of seconds from 0 (keep for "
                           f"ever) to {MAX_RETENTION_SECONDS}, not {value!r}",
                           code="invalid_limit")
    return value
