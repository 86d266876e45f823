"""vLLM's own batch runner on a batch file, with its start-up left out of the time.

    python -m tests.bench.run_batch MODEL_PATH WARM.jsonl INPUT.jsonl OUT.json

This is `python -m vllm.entrypoints.openai.run_batch` (the `vllm` console script needs
distribution metadata the CPU build lacks), driven from here so the clock can start late:
the engine is built once with the raw-vLLM arm's settings, vLLM's `run_batch` runs the
small warm-up file, then the timed file, on that engine. The time runs from the moment
run_batch starts reading the timed file to the moment its output file is written; model
load, engine start and the serving objects each `run_batch` call builds are outside it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from pathlib import Path
from typing import Any

from tests.bench.engines import write_and_exit
from tests.bench.workload import Workload

SERVED_MODEL = "bench"  # the model name the batch lines ask for, as vlmq's bench stack serves


def engine_argv(w: Workload) -> list[str]:
    """The raw-vLLM arm's engine (tests/bench/engines.py), as run_batch's command line."""
    s = w.engine_settings("vllm")
    return ["--model", s.model_path, "--served-model-name", SERVED_MODEL,
            "--max-model-len", str(s.max_model_len), "--enforce-eager",
            "--max-num-seqs", str(s.max_num_seqs),
            "--limit-mm-per-prompt", json.dumps({"image": 1, "video": 0}),
            "--disable-log-stats"]


def output_stats(path: Path) -> dict[str, int]:
    """Lines, failed lines and tokens of a batch output file (vLLM's or vlmq's)."""
    stats = dict.fromkeys(["output_lines", "errors", "prompt_tokens", "completion_tokens"], 0)
    for raw in path.read_text().splitlines():
        if not raw.strip():
            continue
        line = json.loads(raw)
        stats["output_lines"] += 1
        body = (line.get("response") or {}).get("body")
        if line.get("error") or not body:
            stats["errors"] += 1
        else:
            stats["prompt_tokens"] += body["usage"]["prompt_tokens"]
            stats["completion_tokens"] += body["usage"]["completion_tokens"]
    return stats


async def run(w: Workload, warm: Path, timed: Path, out: Path) -> dict[str, Any]:
    from vllm.entrypoints.launchers import run_batch as launcher
    from vllm.entrypoints.launchers.api_server.entry import build_async_engine_client
    from vllm.usage.usage_lib import UsageContext
    from vllm.utils.argparse_utils import FlexibleArgumentParser

    parser = launcher.make_arg_parser(FlexibleArgumentParser())

    def parse(source: Path, suffix: str) -> Any:
        return parser.parse_args([*engine_argv(w), "-i", str(source),
                                  "-o", str(out.with_suffix(suffix))])

    warm_args, args = parse(warm, ".warm.jsonl"), parse(timed, ".output.jsonl")
    launcher.validate_run_batch_args(args)

    # run_batch reads its input first thing after building its serving objects: the
    # clock starts there, as vlmq's starts at the upload of the same file.
    reads: list[float] = []
    read_file = launcher.read_file

    async def timed_read(path_or_url: str) -> str:
        reads.append(time.perf_counter())
        return await read_file(path_or_url)

    launcher.read_file = timed_read
    started = time.perf_counter()
    async with build_async_engine_client(
            args, usage_context=UsageContext.OPENAI_BATCH_RUNNER) as engine_client:
        engine_s = time.perf_counter() - started
        print("bench: run_batch warm-up", file=sys.stderr, flush=True)
        await launcher.run_batch(engine_client, warm_args)
        print("bench: run_batch timed file", file=sys.stderr, flush=True)
        call = time.perf_counter()
        await launcher.run_batch(engine_client, args)
        end = time.perf_counter()
    stats = output_stats(Path(args.output_file))
    return {"seconds": end - reads[-1], "setup_s": reads[-1] - call, "engine_start_s": engine_s,
            **stats}


def main() -> None:
    model_path, warm, timed, out = (Path(a) for a in sys.argv[1:5])
    w = Workload(model_path=model_path)
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(w.engine_settings("vllm").cpu_kvcache_gib))
    write_and_exit(out, asyncio.run(run(w, warm, timed, out)))


if __name__ == "__main__":
    main()
