"""What happens after an attempt: done, stop for good, try again later, or dead-letter."""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from shared.webhooks.events import DeliveryStatus

_RNG = random.Random()


@dataclass(frozen=True)
class Next:
    status: DeliveryStatus
    attempt_at: datetime | None  # set only while pending


@dataclass(frozen=True)
class RetryPolicy:
    schedule: Sequence[float]  # delay after the 1st, 2nd, ... failure of a round
    jitter: float  # each delay is stretched or shrunk by up to this fraction
    retry_after_max: float

    def after(
        self,
        status_code: int | None,
        retry_after: float | None,
        round_attempts: int,
        now: datetime,
        rand: random.Random | None = None,
    ) -> Next:
        if status_code is not None and 200 <= status_code < 300:
            return Next(DeliveryStatus.succeeded, None)
        if status_code == 410:  # the receiver says the endpoint is gone for good
            return Next(DeliveryStatus.disabled, None)
        if round_attempts > len(self.schedule):
            return Next(DeliveryStatus.dead_lettered, None)
        delay = self.delay(round_attempts, rand or _RNG)
        if retry_after is not None:
            # Never come back sooner than the receiver asked, nor later than our cap.
            delay = max(delay, min(retry_after, self.retry_after_max))
        return Next(DeliveryStatus.pending, now + timedelta(seconds=delay))

    def delay(self, round_attempts: int, rand: random.Random) -> float:
        base = self.schedule[round_attempts - 1]
        # Jitter spreads the retries of many deliveries that failed together (an endpoint
        # outage) so they do not all come back in the same second.
        return max(0.0, base * (1 + rand.uniform(-self.jitter, self.jitter)))
