"""The two reference arms, each run in its own process (`python -m tests.bench.engines ARM`):

- naive: one request at a time through transformers `generate`, as the common tutorials do;
- vllm: vLLM's offline `LLM.generate` over all requests at once (the ceiling), and the
  engine's own latency for one request at a time (what the system adds overhead to).
"""

from __future__ import annotations

import json
import os
import statistics
import sys
import time
from pathlib import Path

import psutil

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


def raw_vllm(w: Workload) -> dict[str, float]:
    s = w.engine_settings("vllm")
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(s.cpu_kvcache_gib))
    from vllm import LLM, SamplingParams

    llm = LLM(model=s.model_path, max_model_len=s.max_model_len, enforce_eager=True,
              max_num_seqs=s.max_num_seqs, limit_mm_per_prompt={"image": 1, "video": 0},
              disable_log_stats=True)
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


def main() -> None:
    arm, model_path, out = sys.argv[1], Path(sys.argv[2]), Path(sys.argv[3])
    w = Workload(model_path=model_path)
    result = naive(w) if arm == "naive" else raw_vllm(w)
    out.write_text(json.dumps(result))
    sys.stdout.flush()
    sys.stderr.flush()
    # vLLM's helper threads can keep the interpreter alive after the work is done; exit
    # without them, but never leave an engine process behind.
    for child in psutil.Process().children(recursive=True):
        child.kill()
    os._exit(0)


if __name__ == "__main__":
    main()
