"""What a structured-output constraint costs the worker (`python -m tests.bench.structured`;
not part of `make bench`, which runs jobs without one).

1. Grammar compilation, as vLLM's xgrammar backend does it per request: the first request
   with a schema compiles it against the vocabulary (uncached), a later one with the same
   schema finds it in the compiler's cache. Measured with the tiny model's tokenizer and
   with a synthetic vocabulary the size of Qwen2-VL's (151,646 tokens), since the cost
   grows with the vocabulary.
2. The worker's vLLM engine class (VllmBackend) over N schema jobs, then N plain jobs
   with EOS ignored and exactly as many tokens as the schema jobs averaged, so the
   difference is the constraint's per-token mask and per-job compile alone.
"""

from __future__ import annotations

import argparse
import json
import random
import statistics
import time
from pathlib import Path
from typing import Any

SCHEMA = {
    "type": "object",
    "properties": {"label": {"type": "string", "enum": ["cat", "dog", "bird"]},
                   "count": {"type": "integer", "minimum": 0, "maximum": 20}},
    "required": ["label", "count"],
    "additionalProperties": False,
}
# An extraction schema with free text, numbers, an array of objects and a format: free
# strings are where a large vocabulary costs most to precompute masks for.
EXTRACTION = {
    "type": "object",
    "properties": {
        "product": {"type": "string", "maxLength": 80},
        "brand": {"type": ["string", "null"]},
        "nutrients": {"type": "array", "items": {
            "type": "object",
            "properties": {"name": {"type": "string"}, "amount": {"type": "number"},
                           "unit": {"enum": ["g", "mg", "kcal"]}},
            "required": ["name", "amount", "unit"]}},
        "vegan": {"type": "boolean"},
        "date": {"type": "string", "format": "date"},
    },
    "required": ["product", "nutrients", "vegan"],
}
QWEN2_VL_VOCAB = 151_646


def compile_times(tokenizer_info: Any, schema: dict[str, Any],
                  rounds: int = 3) -> dict[str, float]:
    """Median ms, in a fresh compiler each round: `first_any_ms`, its first compile of any
    schema (`{"type": "object"}`: per-vocabulary work a worker pays once, on its first
    constrained job); `uncached_ms`, `schema` compiled next (a job with a schema the worker
    has not seen); `cached_ms`, `schema` again (every later job with it: a cache hit)."""
    import xgrammar as xgr

    times: dict[str, list[float]] = {"first_any_ms": [], "uncached_ms": [], "cached_ms": []}
    for _ in range(rounds):
        compiler = xgr.GrammarCompiler(tokenizer_info, max_threads=8, cache_enabled=True,
                                       cache_limit_bytes=512 * 1024 * 1024)
        for key, spec in (("first_any_ms", '{"type": "object"}'),
                          ("uncached_ms", json.dumps(schema)),
                          ("cached_ms", json.dumps(schema))):
            start = time.perf_counter()
            compiler.compile_json_schema(spec, any_whitespace=False, separators=(",", ":"))
            times[key].append((time.perf_counter() - start) * 1e3)
    return {key: round(statistics.median(values), 3) for key, values in times.items()}


def synthetic_vocab(size: int) -> Any:
    import xgrammar as xgr

    rng = random.Random(0)
    alphabet = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789 _-\"{}:,.[]"
    vocab = {chr(c) for c in range(32, 127)}
    while len(vocab) < size:
        vocab.add("".join(rng.choices(alphabet, k=rng.randint(2, 10))))
    return xgr.TokenizerInfo(sorted(vocab), vocab_type=xgr.VocabType.RAW, stop_token_ids=[0])


def engine_runs(model_path: Path, jobs: int) -> dict[str, Any]:
    from PIL import Image

    from shared.settings import Settings
    from tests.helpers.parity_probe import drain
    from worker.engines.base import GenerationRequest
    from worker.engines.vllm_backend import VllmBackend

    settings = Settings(engine="vllm", model_path=str(model_path), max_model_len=2048,
                        enforce_eager=True, max_num_seqs=64, max_batch_size=64)
    backend = VllmBackend.from_settings(settings)
    base = {"temperature": 0.0, "top_p": 1.0, "top_k": -1, "seed": None, "stop": []}

    def image(i: int) -> Image.Image:
        return Image.new("RGB", (224, 168), (i * 37 % 256, i * 91 % 256, 200))

    def run(params: dict[str, Any], tag: str, ignore_eos: bool) -> tuple[float, int]:
        backend.ignore_eos = ignore_eos
        reqs = [GenerationRequest(f"{tag}{i}", "What is in the picture? Answer in JSON.",
                                  image(i), params) for i in range(jobs)]
        start = time.perf_counter()
        done = drain(backend, reqs)
        elapsed = time.perf_counter() - start
        return elapsed, sum(o.completion_tokens for o in done.values())

    fmt = {"type": "json_schema", "json_schema": {"name": "a", "schema": SCHEMA}}
    try:
        run({**base, "max_tokens": 8}, "warm", ignore_eos=True)
        schema_s, schema_tokens = run({**base, "max_tokens": 64, "response_format": fmt},
                                      "schema", ignore_eos=False)
        per_job = max(1, round(schema_tokens / jobs))
        plain_s, plain_tokens = run({**base, "max_tokens": per_job}, "plain", ignore_eos=True)
        # The same schema again: its grammar is cached now.
        again_s, again_tokens = run({**base, "max_tokens": 64, "response_format": fmt},
                                    "again", ignore_eos=False)
    finally:
        backend.shutdown()
    return {
        "jobs": jobs, "tokens_per_job": per_job,
        "schema_jobs_per_s_first": jobs / schema_s, "schema_tokens": schema_tokens,
        "schema_jobs_per_s_cached": jobs / again_s, "again_tokens": again_tokens,
        "plain_jobs_per_s": jobs / plain_s, "plain_tokens": plain_tokens,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--model", type=Path, default=Path(".vlmq/models/tiny-qwen2-vl"))
    parser.add_argument("--jobs", type=int, default=50)
    parser.add_argument("--no-engine", action="store_true", help="compile times only")
    args = parser.parse_args()

    import xgrammar as xgr
    from transformers import AutoTokenizer

    tiny = xgr.TokenizerInfo.from_huggingface(AutoTokenizer.from_pretrained(args.model))
    big = synthetic_vocab(QWEN2_VL_VOCAB)
    for info in (tiny, big):
        for name, schema in (("label", SCHEMA), ("extraction", EXTRACTION)):
            print(f"compile, {name} schema, {info.vocab_size}-token vocabulary: "
                  f"{compile_times(info, schema)}")
    if not args.no_engine:
        print("engine:", json.dumps(engine_runs(args.model, args.jobs)))


if __name__ == "__main__":
    main()
