"""Benchmark clients: multipart submits, and many of them from a few threads that each
keep one connection, as a real uploader would."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

import httpx

from tests.bench.workload import Workload

T = TypeVar("T")


def submit_upload(client: httpx.Client, w: Workload, model: str, i: int,
                  png: bytes) -> httpx.Response:
    """The workload's i-th job as a multipart submit; raises on an error status."""
    resp = client.post("/v1/jobs", files={"image": (f"{i}.png", png, "image/png")},
                       data={"prompt": w.prompt(i), "model": model,
                             "max_tokens": str(w.max_tokens), "temperature": "0"})
    resp.raise_for_status()
    return resp


def fan_out(base: str, headers: dict[str, str], threads: int, items: Iterable[int],
            call: Callable[[httpx.Client, int], T]) -> list[T]:
    """`call(client, item)` for every item, from `threads` clients taking items from one
    shared queue; the results in the order they finished."""
    todo = iter(items)
    lock = threading.Lock()
    results: list[T] = []

    def client_loop() -> None:
        with httpx.Client(base_url=base, headers=headers, timeout=60) as client:
            while True:
                with lock:
                    item = next(todo, None)
                if item is None:
                    return
                result = call(client, item)
                with lock:
                    results.append(result)

    with ThreadPoolExecutor(threads) as pool:
        for f in [pool.submit(client_loop) for _ in range(threads)]:
            f.result()
    return results
