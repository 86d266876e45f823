"""Fixtures of the system tier: real Postgres, Redis, a moto S3 server and `vlmq` processes
started as subprocesses, as a user starts them."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
import redis
from sqlalchemy import Engine

from shared.db import make_engine
from shared.devtools.tiny_model import build_tiny_model
from tests.helpers.services import (
    REDIS_URL,
    Service,
    fresh_database,
    moto_server,
    start_api,
    start_control,
    start_worker,
)
from tests.helpers.stack import Stack, dispose_engines, make_stack
from tests.helpers.store import s3_client

# pytest-xdist hands out whole files in collection order (`--dist loadfile`), so the files
# that run longest go first and the two workers finish together instead of one waiting on
# a long file started last.
LONGEST_FIRST = ("test_vllm_engine", "test_structured_output", "test_multi_image",
                 "test_faults", "test_partition", "test_demo", "test_api_memory",
                 "test_openapi", "test_batch_expansion", "test_gpu_check")


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    def rank(item: pytest.Item) -> int:
        name = item.path.stem
        return LONGEST_FIRST.index(name) if name in LONGEST_FIRST else len(LONGEST_FIRST)

    items.sort(key=rank)


@pytest.fixture(scope="session")
def log_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("logs")


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    cached = Path(os.environ.get("VLMQ_TEST_MODEL_DIR", ".vlmq/models/tiny-qwen2-vl"))
    return build_tiny_model(cached.resolve())


@pytest.fixture(scope="session")
def s3_endpoint(log_dir: Path) -> Iterator[str]:
    with moto_server(log_dir) as url:
        yield url


@pytest.fixture(scope="session")
def stack(s3_endpoint: str, tiny_model: Path, log_dir: Path) -> Iterator[Stack]:
    with fresh_database() as db_url:
        yield make_stack(db_url, s3_endpoint, tiny_model, log_dir).migrate()


@pytest.fixture(scope="session")
def api(stack: Stack) -> Iterator[str]:
    svc, base = start_api(stack.env, stack.log_dir)
    yield base
    svc.stop()


@pytest.fixture(scope="session")
def worker(stack: Stack) -> Iterator[Service]:
    svc = start_worker(stack.env, stack.log_dir)
    yield svc
    svc.stop()


@pytest.fixture(scope="session")
def control(stack: Stack) -> Iterator[Service]:
    """A control process (`vlmq control`) on the session's stack: batch work and the
    sweeper; webhook delivery is off, as the stack has no signing secret."""
    svc = start_control(stack.env, stack.log_dir)
    yield svc
    svc.stop()


@pytest.fixture(scope="module")
def echo_worker(request: pytest.FixtureRequest, stack: Stack) -> Iterator[None]:
    """An echo worker for the requesting module's `MODEL`, a model no other module uses, so
    the module's jobs are its own and no other worker takes them."""
    model: str = request.module.MODEL
    st = stack.with_env(model=model, engine="echo")
    svc = start_worker(st.env, st.log_dir, name=f"worker-{model}")
    yield
    svc.stop()


@pytest.fixture()
def client(api: str, stack: Stack) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=api, timeout=30, headers=stack.headers) as c:
        yield c


@pytest.fixture(scope="session")
def redis_client() -> redis.Redis:
    return redis.Redis.from_url(REDIS_URL)


@pytest.fixture(scope="module")
def db_engine(stack: Stack) -> Iterator[Engine]:
    """A plain engine on the session's database, for counting rows straight in SQL; one a
    module, so its connections are closed before the next module's start."""
    engine = make_engine(stack.settings)
    yield engine
    engine.dispose()


@pytest.fixture(scope="module")
def s3(stack: Stack) -> Any:
    """A boto3 client on the session's S3 server, as an outside actor reaches the store."""
    return s3_client(stack.settings)


@pytest.fixture(scope="session", autouse=True)
def _dispose_engines() -> Iterator[None]:
    yield
    dispose_engines()
