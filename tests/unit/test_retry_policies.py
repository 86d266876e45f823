"""The two retry policies: a job's attempts (shared/jobs/lifecycle.py) and a webhook
delivery's (worker/webhooks/policy.py). Pure functions of their inputs."""

from __future__ import annotations

import random
from datetime import datetime, timedelta, timezone

import pytest

from shared.jobs.lifecycle import RetryPolicy as JobRetryPolicy
from shared.settings import Settings
from shared.webhooks.events import DeliveryStatus
from worker.webhooks.policy import RetryPolicy as WebhookRetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)


# --- jobs ----------------------------------------------------------------------------------


def test_job_backoff_doubles_from_the_base_until_the_last_attempt() -> None:
    policy = JobRetryPolicy(max_attempts=5, backoff_seconds=2.0, backoff_max_seconds=300.0)
    assert [policy.delay_after(n) for n in range(1, 6)] == [2.0, 4.0, 8.0, 16.0, None]


def test_job_backoff_is_capped() -> None:
    policy = JobRetryPolicy(max_attempts=20, backoff_seconds=2.0, backoff_max_seconds=30.0)
    assert policy.delay_after(4) == 16.0
    assert policy.delay_after(5) == 30.0
    assert policy.delay_after(19) == 30.0


@pytest.mark.parametrize("attempt", [3, 4, 100])
def test_no_retry_at_or_past_max_attempts(attempt: int) -> None:
    policy = JobRetryPolicy(max_attempts=3, backoff_seconds=1.0, backoff_max_seconds=10.0)
    assert policy.delay_after(attempt) is None


def test_a_single_attempt_is_never_retried() -> None:
    policy = JobRetryPolicy(max_attempts=1, backoff_seconds=1.0, backoff_max_seconds=10.0)
    assert policy.delay_after(1) is None


def test_job_policy_from_settings() -> None:
    settings = Settings(max_attempts=4, retry_backoff_seconds=0.5, retry_backoff_max_seconds=1.5)
    policy = JobRetryPolicy.from_settings(settings)
    assert policy == JobRetryPolicy(4, 0.5, 1.5)
    assert [policy.delay_after(n) for n in range(1, 5)] == [0.5, 1.0, 1.5, None]


def test_job_policy_defaults_give_three_attempts() -> None:
    policy = JobRetryPolicy.from_settings(Settings())
    assert [policy.delay_after(n) for n in range(1, 4)] == [2.0, 4.0, None]


# --- webhook deliveries --------------------------------------------------------------------

SCHEDULE = [5.0, 60.0, 600.0]


def webhook_policy(jitter: float = 0.0, retry_after_max: float = 3600.0) -> WebhookRetryPolicy:
    return WebhookRetryPolicy(schedule=SCHEDULE, jitter=jitter, retry_after_max=retry_after_max)


def wait_of(after: object) -> float:
    attempt_at = after.attempt_at  # type: ignore[attr-defined]
    assert attempt_at is not None
    return (attempt_at - NOW).total_seconds()


@pytest.mark.parametrize("code", [200, 202, 204, 299])
def test_2xx_ends_the_delivery(code: int) -> None:
    after = webhook_policy().after(code, None, 3, NOW)
    assert (after.status, after.attempt_at) == (DeliveryStatus.succeeded, None)


def test_410_disables_whatever_the_attempt_and_retry_after() -> None:
    for attempts in (1, 2, 10):
        after = webhook_policy().after(410, 30.0, attempts, NOW)
        assert (after.status, after.attempt_at) == (DeliveryStatus.disabled, None)


@pytest.mark.parametrize("code", [None, 300, 400, 404, 408, 429, 500, 502, 503])
def test_other_answers_follow_the_schedule_then_dead_letter(code: int | None) -> None:
    policy = webhook_policy()
    waits = [wait_of(policy.after(code, None, n, NOW)) for n in range(1, len(SCHEDULE) + 1)]
    assert waits == SCHEDULE
    pending = policy.after(code, None, 1, NOW)
    assert pending.status == DeliveryStatus.pending
    last = policy.after(code, None, len(SCHEDULE) + 1, NOW)
    assert (last.status, last.attempt_at) == (DeliveryStatus.dead_lettered, None)


def test_retry_after_is_honoured_when_longer_never_when_shorter_and_capped() -> None:
    policy = webhook_policy(retry_after_max=120.0)
    assert wait_of(policy.after(503, 30.0, 1, NOW)) == 30.0  # longer than 5 s
    assert wait_of(policy.after(503, 1.0, 2, NOW)) == 60.0  # shorter than the schedule's
    assert wait_of(policy.after(429, 10_000.0, 1, NOW)) == 120.0  # capped


def test_retry_after_does_not_revive_a_dead_letter() -> None:
    after = webhook_policy().after(503, 5.0, len(SCHEDULE) + 1, NOW)
    assert after.status == DeliveryStatus.dead_lettered


def test_jitter_stays_within_its_fraction() -> None:
    rand = random.Random(1)
    policy = webhook_policy(jitter=0.25)
    waits = [wait_of(policy.after(500, None, 2, NOW, rand)) for _ in range(300)]
    assert all(45.0 <= w <= 75.0 for w in waits)
    assert min(waits) < 50.0 and max(waits) > 70.0  # it does spread


def test_jitter_is_reproducible_with_a_seeded_random() -> None:
    policy = webhook_policy(jitter=0.5)
    first = policy.delay(1, random.Random(42))
    assert first == policy.delay(1, random.Random(42))
    assert 2.5 <= first <= 7.5


def test_zero_jitter_is_exact_and_delays_never_go_negative() -> None:
    assert webhook_policy().delay(3, random.Random(0)) == 600.0
    full = WebhookRetryPolicy(schedule=[0.0, 1.0], jitter=1.0, retry_after_max=10.0)
    assert all(full.delay(n, random.Random(s)) >= 0.0 for n in (1, 2) for s in range(50))


def test_next_attempt_is_relative_to_now() -> None:
    later = NOW + timedelta(hours=5)
    after = webhook_policy().after(500, None, 1, later)
    assert after.attempt_at == later + timedelta(seconds=5)
