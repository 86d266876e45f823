"""A stack of its own for the OpenAI-compatible API: a fresh database and queues, an API, an
echo worker and a control process (which does the batch work), and the helpers that speak
to it through the official `openai` client."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from dataclasses import dataclass
from typing import Any

import openai
from openai import OpenAI

from tests.helpers.services import (
    Service,
    fresh_database,
    start_api,
    start_control,
    start_worker,
)
from tests.helpers.stack import Stack

ENDPOINT = "/v1/chat/completions"


@dataclass
class EchoStack:
    stack: Stack
    base: str
    api: Service
    worker: Service
    control: Service  # where batch work happens, and its log
    model: str  # served by the echo worker
    parked: str  # accepted by the API, served by no worker: its jobs wait


@contextmanager
def echo_stack(stack: Stack, name: str, **env: str) -> Iterator[EchoStack]:
    """`name` tells the processes' logs apart; `env` overrides settings (as `with_env`).

    A database of its own, so batch and file listings hold only this module's objects."""
    tag = uuid.uuid4().hex[:6]
    model, parked = f"echo-{tag}", f"parked-{tag}"
    settings: dict[str, str] = {
        "model": model, "engine": "echo", "echo_faults": "true",
        "queue_prefix": f"vlmq{name.replace('-', '')}{tag}",
        "accepted_models": json.dumps([parked]),
        "batch_poll_seconds": "0.2", "batch_lease_seconds": "3",
    }
    with fresh_database() as db_url, ExitStack() as started:
        st = stack.with_env(database_url=db_url, **{**settings, **env}).migrate()
        api, base = start_api(st.env, st.log_dir, name=f"api-{name}")
        started.callback(api.stop)
        worker = start_worker(st.env, st.log_dir, name=f"worker-{model}")
        started.callback(worker.stop)
        control = start_control(st.env, st.log_dir, name=f"control-{name}")
        started.callback(control.stop)
        yield EchoStack(st, base, api, worker, control, model, parked)


def openai_client(base: str, key: str, **options: Any) -> OpenAI:
    """Strict: a response that does not match the client's own types fails the test."""
    settings: dict[str, Any] = {"max_retries": 0, "timeout": 60, **options}
    return OpenAI(base_url=f"{base}/v1", api_key=key, _strict_response_validation=True,
                  **settings)


def batch_line(custom_id: Any, model: Any, image_url: str, prompt: str = "Describe it.",
               max_tokens: int = 8, **body: Any) -> dict[str, Any]:
    """One line of a batch input file: a chat completion with one image. `custom_id` and
    `model` are Any so that tests can send what no client would."""
    return {"custom_id": custom_id, "method": "POST", "url": ENDPOINT, "body": {
        "model": model, "max_tokens": max_tokens, **body,
        "messages": [{"role": "user", "content": [
            {"type": "text", "text": prompt},
            {"type": "image_url", "image_url": {"url": image_url}},
        ]}],
    }}


def upload(client: OpenAI, lines: list[dict[str, Any]] | list[str] | bytes) -> str:
    """A batch input file of `lines`: objects are written as JSON, strings as they are (for
    lines no client would write), bytes are the whole file."""
    content = lines if isinstance(lines, bytes) else "\n".join(
        x if isinstance(x, str) else json.dumps(x) for x in lines).encode()
    return client.files.create(file=("input.jsonl", content), purpose="batch").id


def wait_batch(client: OpenAI, batch_id: str, statuses: set[str],
               timeout: float = 120) -> openai.types.Batch:
    deadline = time.monotonic() + timeout
    while True:
        batch = client.batches.retrieve(batch_id)
        if batch.status in statuses:
            return batch
        assert time.monotonic() < deadline, f"batch still {batch.status}: {batch}"
        time.sleep(0.2)
