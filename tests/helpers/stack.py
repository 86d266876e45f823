"""A test session's stack: settings and environment pointing at the real Postgres, Redis
and S3, as every `vlmq` process the tests start reads them."""

from __future__ import annotations

import os
import uuid
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path

import httpx
from sqlalchemy import Engine, create_engine
from sqlalchemy.orm import Session, sessionmaker

from shared.db import make_session_factory, sqlalchemy_url
from shared.migrate import upgrade_head
from shared.settings import Settings
from tests.helpers.images import png_bytes
from tests.helpers.services import REDIS_URL, bearer, create_api_key


@dataclass
class Stack:
    """Settings + env pointing at real Postgres, Redis and S3 for one test session."""

    env: dict[str, str]
    settings: Settings
    log_dir: Path
    api_key: str = ""  # of tenant `tests`, made once the schema exists

    @property
    def headers(self) -> dict[str, str]:
        return bearer(self.api_key)

    def with_env(self, **overrides: str) -> Stack:
        env = {**self.env, **{f"VLMQ_{k.upper()}": v for k, v in overrides.items()}}
        return Stack(env=env, settings=settings_from(env), log_dir=self.log_dir,
                     api_key=self.api_key)

    def migrate(self) -> Stack:
        """Brings the database to the latest schema and makes the stack's API key."""
        upgrade_head(self.settings)
        self.api_key = create_api_key(self.settings.database_url)
        return self


def settings_from(env: dict[str, str]) -> Settings:
    """Settings exactly as a process started with `env` reads them (JSON lists included)."""
    ours = {k: v for k, v in env.items() if k.startswith("VLMQ_")}
    saved = {k: os.environ.pop(k) for k in list(os.environ) if k.startswith("VLMQ_")}
    os.environ.update(ours)
    try:
        return Settings()
    finally:
        for key in ours:
            os.environ.pop(key, None)
        os.environ.update(saved)


def make_stack(db_url: str, s3_endpoint: str, model_dir: Path, log_dir: Path) -> Stack:
    tag = uuid.uuid4().hex[:8]
    vlmq_env = {
        "VLMQ_DATABASE_URL": db_url,
        "VLMQ_BROKER_URL": REDIS_URL,
        "VLMQ_STORE_URL": f"s3://vlmq-test-{tag}/uploads",
        "VLMQ_S3_ENDPOINT_URL": s3_endpoint,
        "VLMQ_S3_ACCESS_KEY_ID": "test",
        "VLMQ_S3_SECRET_ACCESS_KEY": "test",
        "VLMQ_MODEL_PATH": str(model_dir),
        "VLMQ_ENGINE": "transformers",
        "VLMQ_QUEUE_PREFIX": f"vlmqtest{tag}",
        "VLMQ_MAX_UPLOAD_BYTES": str(2 * 1024 * 1024),
        "VLMQ_MAX_IMAGE_PIXELS": str(4_000_000),
        "VLMQ_MAX_MODEL_LEN": "2048",
        "VLMQ_WORKER_MAX_PIXELS": str(448 * 448),
        # Models no worker serves at first: jobs for them wait in their own queues.
        "VLMQ_ACCEPTED_MODELS": '["parked", "prio"]',
        # Tests submit in bursts; the limits have their own tests, with per-tenant values.
        "VLMQ_TENANT_SUBMITS_PER_SECOND": "0",
        "VLMQ_TENANT_MAX_ACTIVE_JOBS": "0",
    }
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    env.update(vlmq_env, HF_HUB_OFFLINE="1", VLLM_CPU_KVCACHE_SPACE="1", PYTHONUNBUFFERED="1")
    return Stack(env=env, settings=settings_from(env), log_dir=log_dir)


_ENGINES: dict[str, Engine] = {}


def db_sessions(settings: Settings) -> sessionmaker[Session]:
    """One pooled engine per database for the whole test session, so polling loops do not
    open a connection pool per call (Postgres allows only so many clients)."""
    if settings.database_url not in _ENGINES:
        # Pre-ping: fault tests kill every connection of the database under test, and the
        # test's own polling must ride that out (the services do without, on purpose).
        _ENGINES[settings.database_url] = create_engine(sqlalchemy_url(settings),
                                                        pool_pre_ping=True)
    return make_session_factory(_ENGINES[settings.database_url])


def dispose_engines() -> None:
    for engine in _ENGINES.values():
        engine.dispose()
    _ENGINES.clear()


def submit_many(base: str, first: int, n: int, key: str) -> list[uuid.UUID]:
    """Submits jobs first..first+n-1 concurrently over HTTP; returns their ids in order."""

    def submit(i: int) -> uuid.UUID:
        with httpx.Client(base_url=base, timeout=30, headers=bearer(key)) as client:
            resp = client.post(
                "/v1/jobs",
                files={"image": ("a.png", png_bytes(112, 84, seed=i), "image/png")},
                data={"prompt": f"job {i}", "max_tokens": "4"},
            )
            assert resp.status_code == 202, resp.text
            return uuid.UUID(resp.json()["id"])

    with ThreadPoolExecutor(8) as pool:
        return list(pool.map(submit, range(first, first + n)))
