"""A 10,000-line batch whose control process is killed (SIGKILL) mid-expansion: a new
control process resumes it, and every line ends exactly once, in the output file."""

from __future__ import annotations

import base64
import json
import time
import uuid

import pytest
from openai import OpenAI
from sqlalchemy import func, select

from shared.models import Batch, Job
from tests.helpers.images import png_bytes
from tests.helpers.services import fresh_database, start_api, start_control, start_worker
from tests.helpers.stack import Stack, db_sessions

LINES = 10_000
ENDPOINT = "/v1/chat/completions"


def test_killing_the_control_process_mid_expansion_loses_and_doubles_no_line(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory,
) -> None:
    tag = uuid.uuid4().hex[:6]
    model = f"echo-{tag}"
    with fresh_database() as db_url:
        st = stack.with_env(
            database_url=db_url, model=model, engine="echo", queue_prefix=f"vlmqexp{tag}",
            store_url=f"file://{tmp_path_factory.mktemp('expansion-objects')}",
            batch_poll_seconds="0.2", batch_lease_seconds="2", max_batch_size="128",
        ).migrate()
        sessions = db_sessions(st.settings)
        image = "data:image/png;base64," + base64.b64encode(png_bytes(16, 12)).decode()
        content = "\n".join(json.dumps({
            "custom_id": f"line-{i}", "method": "POST", "url": ENDPOINT,
            "body": {"model": model, "max_tokens": 4, "messages": [{"role": "user", "content": [
                {"type": "text", "text": f"item {i}"},
                {"type": "image_url", "image_url": {"url": image}}]}]},
        }) for i in range(LINES)).encode()

        api, base = start_api(st.env, st.log_dir, name="api-expansion")
        first = start_control(st.env, st.log_dir, name="control-expansion-1")
        client = OpenAI(base_url=f"{base}/v1", api_key=st.api_key, max_retries=0,
                        _strict_response_validation=True, timeout=120)
        file_id = client.files.create(file=("big.jsonl", content), purpose="batch").id
        batch_id = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                         completion_window="24h").id

        def expanded() -> int:
            with sessions() as session:
                return session.scalar(select(Batch.lines_expanded)
                                      .where(Batch.id == batch_id)) or 0

        deadline = time.monotonic() + 120
        created = time.monotonic()
        while expanded() < LINES // 5:
            assert time.monotonic() < deadline, "expansion did not start"
            time.sleep(0.02)
        first.kill()
        at_kill = expanded()
        print(f"killed the control process with {at_kill} of {LINES} lines expanded "
              f"({at_kill / (time.monotonic() - created):.0f} lines/s, validation included)")
        assert at_kill < LINES, "expansion finished before the kill; make the file larger"

        started = time.monotonic()
        second = start_control(st.env, st.log_dir, name="control-expansion-2")
        worker = start_worker(st.env, st.log_dir, name=f"worker-{model}")
        try:
            deadline = time.monotonic() + 300
            while expanded() < LINES:
                assert time.monotonic() < deadline, "expansion did not resume"
                time.sleep(0.05)
            print(f"the new control process expanded the other {LINES - at_kill} lines in "
                  f"{time.monotonic() - started:.1f}s from its start (lease expiry included)")
            while (batch := client.batches.retrieve(batch_id)).status != "completed":
                assert batch.status in ("in_progress", "finalizing"), batch
                assert time.monotonic() < deadline, batch.request_counts
                time.sleep(0.5)
            seconds = time.monotonic() - started
            print(f"resumed and ran {LINES - at_kill} + {at_kill} lines in {seconds:.1f}s "
                  f"({LINES / seconds:.0f} lines/s end to end)")
            assert batch.request_counts is not None
            assert batch.request_counts.completed == LINES
            assert batch.error_file_id is None
            output = client.files.content(batch.output_file_id or "").text.splitlines()
            custom_ids = [json.loads(raw)["custom_id"] for raw in output]
            assert sorted(custom_ids) == sorted(f"line-{i}" for i in range(LINES))
            with sessions() as session:
                jobs = session.scalar(select(func.count()).where(Job.batch_id == batch_id))
                lines = session.scalar(select(func.count(func.distinct(Job.batch_line)))
                                       .where(Job.batch_id == batch_id))
            assert jobs == lines == LINES
        finally:
            client.close()
            worker.stop()
            second.stop()
            api.stop()
