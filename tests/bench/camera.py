"""Camera photos (1280x960 JPEG, about 430 KB) through the system and through raw vLLM.

Raw vLLM is given the JPEG bytes and decodes them one after another before `generate`, as
a plain user of vLLM would; the worker decodes on its prepare threads while the engine
runs. Both sides hand the engine the same pixels (see engines.naive_decode), so the ratio
is what that overlap is worth once decoding is no longer free.

    .venv/bin/python -m tests.bench.camera        (BENCH_CAMERA_PHOTOS photos, 96 unless set)
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path
from typing import Any

from tests.bench.drain import drain_queued
from tests.bench.engines import run_engine_arm
from tests.bench.photos import CAMERA_PHOTOS, CAMERA_TOKENS, read_photos, write_photos
from tests.bench.preload import preload
from tests.bench.report import print_split
from tests.bench.stack import TENANT, stack
from tests.bench.workload import Workload


def drain_photos(w: Workload, photos_dir: Path, log_dir: Path) -> dict[str, Any]:
    """The photos queued with the local-folder store, then drained by one vLLM worker."""
    photos = read_photos(photos_dir)
    params = {**w.params(), "max_tokens": CAMERA_TOKENS}
    with stack(w, log_dir) as st:
        ids = preload(st.settings, TENANT, len(photos), photos.__getitem__, w.prompt, params)
        print(f"bench: drain of {len(ids)} camera photos by one vLLM worker", file=sys.stderr,
              flush=True)
        return drain_queued(st, ids)


def measure_camera(w: Workload, out_dir: Path, log_dir: Path,
                   photos: int = CAMERA_PHOTOS) -> dict[str, Any]:
    """Raw vLLM first, then the system, over the same photo files under `out_dir`."""
    photos_dir = write_photos(out_dir / "camera-photos", photos)
    raw = run_engine_arm("camera", w, out_dir / "camera_raw.json", str(photos_dir))
    return {"raw": raw, "system": drain_photos(w, photos_dir, log_dir)}


def camera_figures(camera: dict[str, Any] | None) -> dict[str, float]:
    if not camera:
        return {}
    system, raw = camera["system"]["jobs_per_s"], camera["raw"]["images_per_s"]
    return {"camera_images_per_s": system, "camera_raw_images_per_s": raw,
            "camera_over_raw": system / raw}


def main() -> None:
    from shared.devtools.tiny_model import build_tiny_model

    out = Path(os.environ.get("BENCH_OUT", "bench-results"))
    w = Workload(model_path=build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve()))
    result = measure_camera(w, out, out / "logs" / "camera")
    (out / "camera.json").write_text(json.dumps(result, indent=2))
    raw, system = result["raw"], result["system"]
    print(f"{raw['images']} photos of {raw['photo_bytes_mean'] / 1000:.0f} KB on average, "
          f"{CAMERA_TOKENS} tokens each; raw vLLM {raw['seconds']:.2f} s of which decoding "
          f"{raw['decode_seconds']:.2f} s; system {system['seconds']:.2f} s, worker main "
          f"process {system['worker_cpu_s']:.2f} CPU s")
    print_split("first claim to drained", system["cpu_seconds"])
    for name, value in camera_figures(result).items():
        print(f"{name} = {value:.3f}")


if __name__ == "__main__":
    main()
