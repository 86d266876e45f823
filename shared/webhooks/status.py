"""The states of one event's delivery and the moves between them that the system allows.

Every write of a delivery's status is a named verb in shared/webhooks/transitions.py, whose
guarded UPDATE names the source states this table allows for its target.
"""

from __future__ import annotations

from enum import StrEnum


class DeliveryStatus(StrEnum):
    pending = "pending"  # an attempt is due now or scheduled
    succeeded = "succeeded"  # the endpoint answered 2xx
    disabled = "disabled"  # the endpoint answered 410 Gone: no more attempts for this job
    dead_lettered = "dead_lettered"  # every scheduled attempt failed; replayable


# A delivery row is inserted pending, due at once.
CREATED_AS: frozenset[DeliveryStatus] = frozenset({DeliveryStatus.pending})

# target status -> statuses it may be entered from
ALLOWED_FROM: dict[DeliveryStatus, frozenset[DeliveryStatus]] = {
    # pending -> pending: an attempt failed and another is scheduled; from any state: an
    # operator's redelivery starts a fresh round whatever became of the last one.
    DeliveryStatus.pending: frozenset(DeliveryStatus),
    DeliveryStatus.succeeded: frozenset({DeliveryStatus.pending}),
    DeliveryStatus.disabled: frozenset({DeliveryStatus.pending}),
    DeliveryStatus.dead_lettered: frozenset({DeliveryStatus.pending}),
}
