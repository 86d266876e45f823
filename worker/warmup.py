"""A fresh engine's first steps are slow: kernels are picked and compiled for each new shape
and memory is touched for the first time. A few throwaway requests run through the engine
before the worker claims anything, so no job pays for that.
"""

from __future__ import annotations

import logging
import time

from PIL import Image, ImageDraw

from shared.settings import EngineKind, EngineSettings
from worker.engines.base import Engine, GenerationRequest

log = logging.getLogger(__name__)

# Two image sizes and a batch of requests, so the vision encoder and the batched decode
# steps each see more than one shape; a few tokens suffice to run every kind of step.
WARM_UP_SIZES = ((224, 168), (448, 336))
WARM_UP_REQUESTS = 8
WARM_UP_TOKENS = 8
WARM_UP_TIMEOUT_SECONDS = 300.0


def _image(i: int, size: tuple[int, int]) -> Image.Image:
    img = Image.new("RGB", size, (40 + 20 * i, 90, 160))
    ImageDraw.Draw(img).ellipse((10, 10, size[0] // 2, size[1] // 2), fill=(230, 180, 40))
    return img


def warm_up(engine: Engine, settings: EngineSettings) -> None:
    """Runs the throwaway requests; a failure is logged, not raised, since the jobs that
    follow would meet it anyway and their failures are handled per job."""
    if settings.engine == EngineKind.echo:
        return  # nothing to warm
    started = time.monotonic()
    requests = [
        GenerationRequest(f"warm-up-{i}", "Describe this image.",
                          _image(i, WARM_UP_SIZES[i % len(WARM_UP_SIZES)]),
                          {"max_tokens": WARM_UP_TOKENS, "temperature": 0.0}, counted=False)
        for i in range(WARM_UP_REQUESTS)
    ]
    try:
        for future in [engine.submit(request) for request in requests]:
            future.result(timeout=WARM_UP_TIMEOUT_SECONDS)
    except Exception as exc:
        log.warning("engine warm-up failed (%s: %s); claiming jobs anyway",
                    exc.__class__.__name__, exc)
        return
    log.info("engine warmed up with %d requests in %.1fs", len(requests),
             time.monotonic() - started)
