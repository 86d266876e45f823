"""Image inspection in the API stays within its memory budget whatever clients send.

64 clients upload at once a small PNG (about 150 KB) of 6,300 x 6,300 pixels, which
decodes to 160 MB. Without a bound that is ~10 GB of pixels; with one, the API's peak
resident memory stays under its baseline plus the budget, every upload ends as a 202 or
a 503 with Retry-After (never a 500), and clients that retry as told all get in.
"""

from __future__ import annotations

import io
import threading
import time
import uuid
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor

import httpx
import psutil
import pytest
from PIL import Image

from tests.helpers.services import Service, fresh_database, start_api
from tests.helpers.stack import Stack

CLIENTS = 64
SIDE = 6300
BUDGET = 512 * 1024 * 1024
# Beyond baseline + budget: the uploads' own bytes, multipart buffers, allocator slack.
MARGIN = 384 * 1024 * 1024


def big_sparse_png() -> bytes:
    buf = io.BytesIO()
    Image.new("RGB", (SIDE, SIDE), (30, 90, 160)).save(buf, format="PNG", optimize=True)
    return buf.getvalue()


@pytest.fixture(scope="module")
def budget_api(stack: Stack, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[Service, str, Stack]]:
    with fresh_database() as db_url:
        st = stack.with_env(
            database_url=db_url,
            store_url=f"file://{tmp_path_factory.mktemp('budget-objects')}",
            queue_prefix=f"vlmqmem{uuid.uuid4().hex[:6]}",
            max_image_pixels=str(40_000_000),
            max_upload_bytes=str(4 * 1024 * 1024),
            api_image_memory_bytes=str(BUDGET),
            api_image_memory_wait_seconds="2",
            accepted_models='["parked"]',
        ).migrate()
        svc, base = start_api(st.env, st.log_dir, name="api-memory")
        yield svc, base, st
        svc.stop()


class PeakRss:
    def __init__(self, pid: int) -> None:
        self.process = psutil.Process(pid)
        self.peak = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._sample, daemon=True)

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, self.process.memory_info().rss)
            time.sleep(0.01)

    def __enter__(self) -> PeakRss:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join()


def test_many_large_images_at_once_stay_within_the_budget(
    budget_api: tuple[Service, str, Stack],
) -> None:
    svc, base, st = budget_api
    image = big_sparse_png()
    assert len(image) < 400_000
    statuses: list[int] = []
    lock = threading.Lock()

    def upload(i: int) -> int:
        with httpx.Client(base_url=base, timeout=120, headers=st.headers) as client:
            for _ in range(60):
                resp = client.post("/v1/jobs", files={"image": ("big.png", image, "image/png")},
                                   data={"prompt": f"big {i}", "model": "parked"})
                with lock:
                    statuses.append(resp.status_code)
                if resp.status_code != 503:
                    return resp.status_code
                time.sleep(float(resp.headers["retry-after"]))
            return resp.status_code

    baseline = psutil.Process(svc.proc.pid).memory_info().rss
    with PeakRss(svc.proc.pid) as rss, ThreadPoolExecutor(CLIENTS) as pool:
        finals = list(pool.map(upload, range(CLIENTS)))
    print(f"baseline {baseline / 2**20:.0f} MiB, peak {rss.peak / 2**20:.0f} MiB, "
          f"budget {BUDGET / 2**20:.0f} MiB; responses {sorted(set(statuses))}, "
          f"503s {statuses.count(503)}")
    assert finals == [202] * CLIENTS
    assert set(statuses) <= {202, 503}
    assert rss.peak < baseline + BUDGET + MARGIN, (
        f"peak {rss.peak / 2**20:.0f} MiB over baseline {baseline / 2**20:.0f} MiB "
        f"+ budget {BUDGET / 2**20:.0f} MiB + margin"
    )
