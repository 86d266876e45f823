"""What follows a delivery attempt: success, disable, retry with jitter, dead letter."""

from __future__ import annotations

import os
import random
import subprocess
import sys
from datetime import datetime, timezone

import pytest
from pydantic import ValidationError

from shared.settings import Settings
from shared.webhooks.events import DeliveryStatus
from tests.helpers.services import start_control
from tests.helpers.stack import Stack
from worker.webhooks.policy import RetryPolicy

NOW = datetime(2026, 1, 1, tzinfo=timezone.utc)
DEFAULT = Settings().webhook_retry_schedule


def policy(jitter: float = 0.0) -> RetryPolicy:
    return RetryPolicy(schedule=DEFAULT, jitter=jitter, retry_after_max=86_400)


def seconds_until(after: object) -> float:
    return (after.attempt_at - NOW).total_seconds()  # type: ignore[attr-defined]


def test_default_schedule_is_the_documented_one() -> None:
    assert DEFAULT == [5, 300, 1800, 7200, 18000, 36000, 36000]


@pytest.mark.parametrize("code", [200, 201, 204, 299])
def test_2xx_is_success(code: int) -> None:
    assert policy().after(code, None, 1, NOW).status == DeliveryStatus.succeeded


def test_410_disables_even_on_the_first_attempt() -> None:
    after = policy().after(410, 60, 1, NOW)
    assert (after.status, after.attempt_at) == (DeliveryStatus.disabled, None)


@pytest.mark.parametrize("code", [None, 301, 302, 400, 404, 429, 500, 503])
def test_everything_else_retries_on_the_schedule(code: int | None) -> None:
    waits = [seconds_until(policy().after(code, None, n, NOW)) for n in range(1, 8)]
    assert waits == DEFAULT
    assert policy().after(code, None, 8, NOW).status == DeliveryStatus.dead_lettered


def test_jitter_stays_within_its_fraction_and_varies() -> None:
    rand = random.Random(7)
    waits = [seconds_until(policy(0.2).after(500, None, 2, NOW, rand)) for _ in range(200)]
    assert all(240 <= w <= 360 for w in waits)
    assert len({round(w) for w in waits}) > 20


def test_retry_after_delays_but_never_hastens_and_is_capped() -> None:
    assert seconds_until(policy().after(503, 120, 1, NOW)) == 120  # longer than 5 s: honoured
    assert seconds_until(policy().after(503, 1, 2, NOW)) == 300  # shorter: the schedule wins
    assert seconds_until(policy().after(429, 10**9, 1, NOW)) == 86_400


@pytest.mark.parametrize("secret", ["abc", "whsec_", "whsec_c2hvcnQ=", "whsec_!!!notbase64!!!"])
def test_settings_refuse_a_secret_that_is_not_a_whsec_key(secret: str) -> None:
    with pytest.raises(ValidationError, match="vlmq webhook-secret"):
        Settings(webhook_secrets=[secret])


def vlmq(*args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    return subprocess.run([sys.executable, "-m", "shared.cli", *args],
                          capture_output=True, text=True, env=env, timeout=60)


def test_webhook_secret_command_prints_a_usable_secret() -> None:
    first, second = (vlmq("webhook-secret").stdout.strip() for _ in range(2))
    assert Settings(webhook_secrets=[first]).webhook_secrets == [first]
    assert first != second


def test_control_without_a_secret_runs_and_says_what_to_set(stack: Stack) -> None:
    """Batches and the sweeper do not need webhooks: the control process keeps running, and
    says once how to turn delivery on."""
    env = {k: v for k, v in stack.env.items() if k != "VLMQ_WEBHOOK_SECRETS"}
    control = start_control(env, stack.log_dir, name="control-no-secret")
    try:
        log = control.log_text()
        assert "webhook delivery is off" in log
        assert "VLMQ_WEBHOOK_SECRETS" in log and "vlmq webhook-secret" in log
        assert control.proc.poll() is None
    finally:
        control.stop()