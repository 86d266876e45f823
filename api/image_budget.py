"""A bound on the memory that concurrent image inspection in one API process may use.

Checking an upload decodes it, and a small file can hold a large image: a 153 KB PNG of
6,300 x 6,300 pixels decodes to 160 MB. Each inspection first reserves what its image
will take decoded, read from the header, so however many such uploads arrive together
the decoded pixels in memory stay under VLMQ_API_IMAGE_MEMORY_BYTES. A request that
cannot reserve within VLMQ_API_IMAGE_MEMORY_WAIT_SECONDS is answered 503 with Retry-After.
"""

from __future__ import annotations

import io
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager

from PIL import Image

from shared.errors import Unavailable

# Pillow keeps these modes in one byte per pixel, 16-bit integer modes in two, and
# everything else (RGB included, padded to four channels) in four.
_ONE_BYTE = {"1", "L", "P"}
_TWO_BYTES = {"I;16", "I;16L", "I;16B", "I;16N"}


def decoded_bytes(data: bytes) -> int:
    """What decoding `data` will allocate, from its header alone; 0 when it has none
    (inspection then refuses it before decoding anything)."""
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height, mode = img.width, img.height, img.mode
    except Exception:
        return 0
    per_pixel = 1 if mode in _ONE_BYTE else 2 if mode in _TWO_BYTES else 4
    return width * height * per_pixel


class ImageMemoryBudget:
    def __init__(self, limit_bytes: int, wait_seconds: float) -> None:
        self._limit = limit_bytes
        self._wait = wait_seconds
        self._in_use = 0
        self._changed = threading.Condition()

    @property
    def in_use(self) -> int:
        return self._in_use

    @contextmanager
    def reserve(self, nbytes: int) -> Iterator[None]:
        # One image larger than the whole budget may still be inspected, alone.
        nbytes = min(nbytes, self._limit)
        deadline = time.monotonic() + self._wait
        with self._changed:
            while self._in_use + nbytes > self._limit:
                left = deadline - time.monotonic()
                if left <= 0 or not self._changed.wait(left):
                    if self._in_use + nbytes <= self._limit:
                        break
                    raise Unavailable(
                        "the server is inspecting as many large images as its memory allows; "
                        "retry after Retry-After seconds"
                    )
            self._in_use += nbytes
        try:
            yield
        finally:
            with self._changed:
                self._in_use -= nbytes
                self._changed.notify_all()
