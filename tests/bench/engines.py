"""The reference arms, each run in its own process (`python -m tests.bench.engines ARM`):

- naive: one request at a time through transformers `generate`, as the common tutorials do;
- vllm: vLLM's offline `LLM.generate` over all requests at once (the ceiling), and the
  engine's own latency for one request at a time (what the system adds overhead to);
- camera: `LLM.generate` over camera photos given as JPEG bytes, decoded one after another
  in this process first, as a plain user of vLLM would (needs the photo folder as argument).
"""

from __future__ import annotations

import io
import json
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import psutil
from PIL import Image

from shared.images import bound_pixels
from tests.bench.workload import Workload
from tests.helpers.parity_probe import drain
from worker.engines.base import GenerationRequest
from worker.prompting import render_chat_prompt


def naive(w: Workload) -> dict[str, float]:
    from worker.engines.transformers_backend import TransformersBackend

    s = w.engine_settings("transformers")
    backend = TransformersBackend(s.model_path, max_model_len=s.max_model_len, max_batch_size=1,
                                  ignore_eos=True)
    requests = [GenerationRequest(f"n{i}", w.prompt(i), w.image(i), w.params())
                for i in range(w.naive_jobs + 1)]
    drain(backend, requests[:1])  # warm-up
    start = time.perf_counter()
    tokens = 0
    for i, request in enumerate(requests[1:], 1):
        tokens += sum(o.completion_tokens for o in drain(backend, [request]).values())
        if i % 8 == 0:
            print(f"bench: naive {i}/{w.naive_jobs}", file=sys.stderr, flush=True)
    elapsed = time.perf_counter() - start
    return {"images": w.naive_jobs, "seconds": elapsed, "images_per_s": w.naive_jobs / elapsed,
            "tokens": tokens}


def _llm(w: Workload) -> Any:
    """vLLM's offline engine with the worker's engine settings."""
    s = w.engine_settings("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.cpu_kvcache_gib))
    from vllm import LLM

    return LLM(model=s.model_path, max_model_len=s.max_model_len, enforce_eager=True,
               max_num_seqs=s.max_num_seqs, limit_mm_per_prompt={"image": 1, "video": 0},
               disable_log_stats=True)


def raw_vllm(w: Workload) -> dict[str, float]:
    llm = _llm(w)  # first: it sets the environment vLLM reads at import
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    sampling = SamplingParams(max_tokens=w.max_tokens, ignore_eos=True, temperature=0.0)

    def inputs(i: int) -> dict[str, object]:
        return {"prompt": render_chat_prompt(tokenizer, w.prompt(i)),
                "multi_modal_data": {"image": w.image(i)}}

    llm.generate([inputs(10_000 + i) for i in range(8)], sampling, use_tqdm=False)  # warm-up
    print("bench: raw vLLM batch", file=sys.stderr, flush=True)
    prompts = [inputs(i) for i in range(w.jobs)]
    start = time.perf_counter()
    outs = llm.generate(prompts, sampling, use_tqdm=False)
    elapsed = time.perf_counter() - start

    print("bench: raw vLLM one at a time", file=sys.stderr, flush=True)
    single = []
    for i in range(w.light_jobs):
        t = time.perf_counter()
        llm.generate([inputs(20_000 + i)], sampling, use_tqdm=False)
        single.append(time.perf_counter() - t)
    llm.llm_engine.engine_core.shutdown()  # stops the engine-core and worker processes
    return {
        "images": w.jobs,
        "seconds": elapsed,
        "images_per_s": w.jobs / elapsed,
        "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "single_p50_s": statistics.median(single),
    }


def naive_decode(data: bytes, max_pixels: int) -> Image.Image:
    """The plain decode of a user of vLLM, then the worker's bound on pixels.

    The worker scales an image down to VLMQ_WORKER_MAX_PIXELS before the engine sees it,
    and the engine's processor then resizes what it gets. Fed the photo as decoded, the
    processor would resize other pixels at another cost, and the two sides would not do
    the same engine work; so the worker's own bound (the output checked against
    shared.images.prepare_image before timing) runs here too, inside the timed part as it is in the worker's.
    """
    return bound_pixels(Image.open(io.BytesIO(data)).convert("RGB"), max_pixels)


def raw_camera(w: Workload, photos_dir: Path) -> dict[str, float]:
    """The camera arm's reference: the timed part is the decode of every photo, one after
    another, then one `generate` over them all."""
    from shared.images import prepare_image
    from tests.bench.photos import CAMERA_TOKENS, photo, read_photos

    max_pixels = w.engine_settings("vllm").worker_max_pixels
    warm = [photo(10_000 + i) for i in range(8)]
    if naive_decode(warm[0], max_pixels).tobytes() != prepare_image(warm[0], max_pixels).tobytes():
        raise RuntimeError("naive_decode no longer gives the worker's pixels; see "
                           "shared.images.prepare_image")
    llm = _llm(w)
    from vllm import SamplingParams

    tokenizer = llm.get_tokenizer()
    sampling = SamplingParams(max_tokens=CAMERA_TOKENS, ignore_eos=True, temperature=0.0)
    photos = read_photos(photos_dir)
    prompts = [render_chat_prompt(tokenizer, w.prompt(i)) for i in range(len(photos))]

    llm.generate([{"prompt": render_chat_prompt(tokenizer, w.prompt(i)),
                   "multi_modal_data": {"image": naive_decode(data, max_pixels)}}
                  for i, data in enumerate(warm)], sampling, use_tqdm=False)  # warm-up
    print(f"bench: raw vLLM over {len(photos)} camera photos", file=sys.stderr, flush=True)
    start = time.perf_counter()
    inputs = [{"prompt": prompt, "multi_modal_data": {"image": naive_decode(data, max_pixels)}}
              for prompt, data in zip(prompts, photos)]
    decoded = time.perf_counter()
    outs = llm.generate(inputs, sampling, use_tqdm=False)
    elapsed = time.perf_counter() - start
    llm.llm_engine.engine_core.shutdown()
    return {
        "images": len(photos),
        "seconds": elapsed,
        "images_per_s": len(photos) / elapsed,
        "decode_seconds": decoded - start,
        "tokens": sum(len(o.outputs[0].token_ids) for o in outs),
        "photo_bytes_mean": sum(map(len, photos)) / len(photos),
    }


def run_engine_arm(arm: str, w: Workload, out: Path, *extra: str) -> dict[str, float]:
    """Runs `arm` in a process of its own (vLLM's engine leaves threads and children that
    must not outlive it) and returns what it wrote to `out`."""
    out.parent.mkdir(parents=True, exist_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1"}
    print(f"bench: {arm} arm", file=sys.stderr, flush=True)
    subprocess.run([sys.executable, "-m", "tests.bench.engines", arm, str(w.model_path),
                    str(out), *extra], check=True, env=env, stdout=subprocess.DEVNULL)
    return json.loads(out.read_text())


def main() -> None:
    arm, model_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    w = Workload(model_path=model_path)
    if arm == "naive":
        result = naive(w)
    elif arm == "camera":
        result = raw_camera(w, Path(sys.argv[4]))
    else:
        result = raw_vllm(w)
    write_and_exit(out, result)


def write_and_exit(out: Path, result: dict[str, object]) -> None:
    """Writes an arm's result and ends its process. vLLM's helper threads can keep the
    interpreter alive after the work is done; exit without them, but never leave an engine
    process behind."""
    out.write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
