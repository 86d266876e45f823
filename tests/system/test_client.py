"""`vlmq.client` against a real API and echo worker: typed jobs, long polls, retries that
never make a second job, waiting out a tenant's 429s, and webhook verification."""

from __future__ import annotations

import asyncio
import base64
import contextlib
import json
import socket
import subprocess
import sys
import threading
import uuid
from collections.abc import Iterator
from datetime import datetime, timezone
from pathlib import Path

import pytest
from standardwebhooks.webhooks import Webhook, WebhookVerificationError
from vlmq.client import ApiError, AsyncClient, Client, verify_webhook

from tests.helpers.images import png_bytes
from tests.helpers.services import bearer, create_api_key
from tests.helpers.stack import Stack

# This module's own model, served by the `echo_worker` fixture.
MODEL = f"client-echo-{uuid.uuid4().hex[:6]}"


@pytest.fixture()
def vlmq(api: str, stack: Stack) -> Iterator[Client]:
    with Client(api, stack.api_key, backoff_seconds=0.05) as client:
        yield client


def test_submit_wait_and_typed_results(vlmq: Client, echo_worker: None,
                                       tmp_path: Path) -> None:
    path = tmp_path / "cat.png"
    path.write_bytes(png_bytes(64, 48))
    job = vlmq.submit("What is it?", image=path, model=MODEL, max_tokens=5, stop=["zz"])
    assert job.status == "queued" and job.params["max_tokens"] == 5
    done = vlmq.wait(job.id, timeout=60)
    assert done.status == "succeeded" and done.done and done.attempts == 1
    assert done.result is not None and done.result.completion_tokens <= 5
    assert isinstance(done.finished_at, datetime)

    by_url = vlmq.wait(vlmq.submit(
        "And this?", image_url="data:image/png;base64," + base64.b64encode(
            png_bytes(32, 24)).decode(), model=MODEL).id, timeout=60)
    assert by_url.status == "succeeded"


def test_cancel_list_and_errors(vlmq: Client) -> None:
    prompt = f"listed {uuid.uuid4().hex}"
    ids = [vlmq.submit(prompt, image=png_bytes(16, 16, seed=i), model="parked").id
           for i in range(3)]
    cancelled = vlmq.cancel(ids[0])
    assert cancelled.status == "cancelled"
    assert vlmq.cancel(ids[0]).status == "cancelled"  # a repeated cancel is not an error
    listed = [j.id for j in vlmq.iter_jobs(model="parked", page_size=2)
              if j.prompt == prompt]
    assert sorted(listed) == sorted(ids)
    for job_id in ids[1:]:
        vlmq.cancel(job_id)
    with pytest.raises(ApiError) as refused:
        vlmq.submit("", image=png_bytes(8, 8))
    assert refused.value.status == 400 and refused.value.code == "missing_prompt"
    with pytest.raises(ApiError) as missing:
        vlmq.get(str(uuid.uuid4()))
    assert missing.value.status == 404


class ResponseDropper:
    """A TCP proxy that passes the first request to the API, then closes the client's
    connection without its response: the submit reached the server, the answer was lost."""

    def __init__(self, upstream: str) -> None:
        host, port = upstream.removeprefix("http://").split(":")
        self.upstream = (host, int(port))
        self.server = socket.create_server(("127.0.0.1", 0))
        self.url = f"http://127.0.0.1:{self.server.getsockname()[1]}"
        self.connections = 0
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.server.accept()
            except OSError:
                return
            self.connections += 1
            drop = self.connections == 1
            threading.Thread(target=self._pipe, args=(conn, drop), daemon=True).start()

    def _pipe(self, client: socket.socket, drop: bool) -> None:
        upstream = socket.create_connection(self.upstream)

        def forward(src: socket.socket, dst: socket.socket) -> None:
            try:
                while data := src.recv(65536):
                    dst.sendall(data)
            except OSError:
                pass
            finally:
                for s in (src, dst):
                    try:
                        s.shutdown(socket.SHUT_RDWR)
                    except OSError:
                        pass

        threading.Thread(target=forward, args=(client, upstream), daemon=True).start()
        if drop:
            upstream.recv(1)  # the API has answered, so the job is committed
            # Shutdown, not only close: the forwarding thread is blocked in recv on the
            # client socket, and a bare close sends no FIN until that recv returns, so the
            # client would wait out its whole timeout instead of seeing the drop.
            for sock in (client, upstream):
                # The forwarding thread may have shut it already, on the client's own FIN.
                with contextlib.suppress(OSError):
                    sock.shutdown(socket.SHUT_RDWR)
                sock.close()
            return
        forward(upstream, client)

    def close(self) -> None:
        self.server.close()


def test_a_retried_submit_never_makes_a_second_job(api: str, stack: Stack) -> None:
    # A tenant of its own, so listing its jobs reads only what this test made.
    key = create_api_key(stack.settings.database_url, f"retried-{uuid.uuid4().hex[:6]}")
    dropper = ResponseDropper(api)
    prompt = f"once {uuid.uuid4().hex}"
    try:
        with Client(dropper.url, key, backoff_seconds=0.05) as through_proxy:
            job = through_proxy.submit(prompt, image=png_bytes(16, 16), model="parked")
    finally:
        dropper.close()
    assert dropper.connections >= 2, "the first response was not dropped"
    with Client(api, key) as direct:
        mine = [j for j in direct.iter_jobs(model="parked") if j.prompt == prompt]
        assert [j.id for j in mine] == [job.id]
        direct.cancel(job.id)


def test_a_tenants_429s_are_waited_out(api: str, stack: Stack) -> None:
    tenant = f"client-{uuid.uuid4().hex[:6]}"
    key = create_api_key(stack.settings.database_url, tenant)
    subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant", tenant,
                    "--submits-per-second", "2"], env=stack.env, check=True, timeout=60)
    with Client(api, key, backoff_seconds=0.05) as limited:
        jobs = [limited.submit(f"paced {i}", image=png_bytes(8, 8), model="parked")
                for i in range(6)]
        assert len({j.id for j in jobs}) == 6
        assert len([j for j in limited.iter_jobs(model="parked")]) == 6
        for job in jobs:
            limited.cancel(job.id)


def test_the_async_client(api: str, stack: Stack, echo_worker: None) -> None:
    async def run() -> list[str]:
        async with AsyncClient(api, stack.api_key) as client:
            jobs = await asyncio.gather(*(
                client.submit(f"async {i}", image=png_bytes(16, 16, seed=i), model=MODEL)
                for i in range(4)))
            done = await asyncio.gather(*(client.wait(j.id, timeout=60) for j in jobs))
            listed = [j.id async for j in client.iter_jobs(model=MODEL, page_size=2)]
            assert {j.id for j in jobs} <= set(listed)
            return [j.status for j in done]

    assert asyncio.run(run()) == ["succeeded"] * 4


def test_webhook_verification_for_receivers() -> None:
    old = "whsec_" + base64.b64encode(b"o" * 32).decode()
    new = "whsec_" + base64.b64encode(b"n" * 32).decode()
    body = json.dumps({"type": "job.succeeded", "data": {"id": "x"}})
    now = datetime.now(timezone.utc)
    signature = Webhook(new).sign("msg_1", now, body)
    headers = {"webhook-id": "msg_1", "webhook-timestamp": str(int(now.timestamp())),
               "webhook-signature": signature}
    assert verify_webhook(body, headers, [old, new])["type"] == "job.succeeded"
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body.replace("succeeded", "failed"), headers, [old, new])
    with pytest.raises(WebhookVerificationError):
        verify_webhook(body, headers, [old])


def test_the_key_goes_in_the_bearer_header(api: str, stack: Stack) -> None:
    with Client(api, "vlmq_000000000000_" + "x" * 43, max_retries=0) as wrong:
        with pytest.raises(ApiError) as refused:
            wrong.get(str(uuid.uuid4()))
    assert refused.value.status == 401
    assert bearer(stack.api_key)["Authorization"].startswith("Bearer ")


def test_a_submit_says_when_it_got_an_earlier_job_back(api: str, stack: Stack) -> None:
    with Client(api, stack.api_key) as client:
        key = f"replay-{uuid.uuid4().hex}"
        first = client.submit("Once.", image=png_bytes(16, 16), model="parked",
                              idempotency_key=key)
        again = client.submit("Once.", image=png_bytes(16, 16), model="parked",
                              idempotency_key=key)
        client.cancel(first.id)
    assert not first.replayed
    assert again.replayed and again.id == first.id
