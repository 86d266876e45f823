"""Camera-sized photos for the camera arm: 1280x960 JPEGs of about 430 KB each.

The tiny benchmark images compress to a few KB and decode in well under a millisecond, so
they hide what a real upload costs the worker. These are smooth colour fields with sensor-
like grain, which JPEG cannot squeeze much, so their size and decode time are a phone
camera's. Each is drawn from its own seed: distinct pixels, the same bytes on every run.
"""

from __future__ import annotations

import io
import os
from pathlib import Path

import numpy as np
from PIL import Image

from shared.images import inspect_image
from shared.settings import LimitsSettings

WIDTH = 1280
HEIGHT = 960
QUALITY = 90
# Noise per channel and noise shared by the channels (grain), in 8-bit levels: tuned so a
# photo lands near 430 KB at QUALITY.
CHROMA_NOISE = 5.0
GRAIN = 8.0
SEED = 1_000

CAMERA_PHOTOS = int(os.environ.get("BENCH_CAMERA_PHOTOS", "96"))
CAMERA_TOKENS = 32


def photo(i: int) -> bytes:
    rng = np.random.default_rng(SEED + i)
    y = np.linspace(0, 1, HEIGHT, dtype=np.float32)[:, None]
    x = np.linspace(0, 1, WIDTH, dtype=np.float32)[None, :]
    channels = []
    for _ in range(3):
        level, dx, dy = rng.uniform(40, 200), rng.uniform(-80, 80), rng.uniform(-80, 80)
        fx, fy, phase = rng.uniform(1, 6), rng.uniform(1, 6), rng.uniform(0, 2 * np.pi)
        channels.append(level + dx * x + dy * y
                        + 30 * np.sin(2 * np.pi * (fx * x + fy * y) + phase))
    pixels = np.stack(channels, axis=-1)
    pixels += rng.normal(0, GRAIN, (HEIGHT, WIDTH, 1)).astype(np.float32)
    pixels += rng.normal(0, CHROMA_NOISE, (HEIGHT, WIDTH, 3)).astype(np.float32)
    buf = io.BytesIO()
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(buf, "JPEG", quality=QUALITY)
    return buf.getvalue()


def write_photos(folder: Path, n: int) -> Path:
    """Writes photos 0..n-1 into `folder` (replacing any there), each checked against the
    default upload limits so the arm fails here, not as n refused jobs."""
    folder.mkdir(parents=True, exist_ok=True)
    for old in folder.glob("photo-*.jpg"):
        old.unlink()
    limits = LimitsSettings()
    for i in range(n):
        data = photo(i)
        inspect_image(data, max_bytes=limits.max_upload_bytes, max_pixels=limits.max_image_pixels,
                      max_side=limits.max_image_side, allowed_formats=limits.allowed_formats)
        (folder / f"photo-{i:04d}.jpg").write_bytes(data)
    return folder


def read_photos(folder: Path) -> list[bytes]:
    photos = [path.read_bytes() for path in sorted(folder.glob("photo-*.jpg"))]
    if not photos:
        raise FileNotFoundError(f"no photo-*.jpg in {folder}")
    return photos
