"""One OpenAI batch file through vlmq against vLLM's own batch runner on the same file.

    .venv/bin/python -m tests.bench.batches      (BENCH_BATCH_LINES=64 for a quick look)

Arms:
- batch_file / batch_s3: the file through vlmq (`POST /v1/files`, `POST /v1/batches`),
  timed from the start of the upload until the client sees the batch `completed` (its
  output file written), with the local-folder store and with S3 (a moto server; its CPU,
  a stand-in's sharing the cores, is reported apart). The worker and the control process
  are started and have run a small warm-up batch before the clock starts.
- run_batch: `vllm.entrypoints.openai.run_batch` on the same lines (tests/bench/run_batch.py),
  timed from reading the file to its output written, engine start-up and warm-up excluded.

Every line is a chat completion with one distinct 224x168 PNG as a data: URL and exactly
BATCH_MAX_TOKENS tokens generated: vlmq's bench worker ignores EOS by setting and refuses
an `ignore_eos` field in a line, so only run_batch's copy of the file carries it.
"""

from __future__ import annotations

import base64
import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psutil
from openai import OpenAI
from sqlalchemy import func, select

from shared.db import make_engine, make_session_factory
from shared.models import Batch, Job
from shared.settings import Settings
from tests.bench import cpu_profile, run_batch
from tests.bench.procwatch import cpu_seconds
from tests.bench.run_batch import SERVED_MODEL
from tests.bench.stack import Stack, alive, stack
from tests.bench.workload import Workload
from tests.helpers.echo_stack import ENDPOINT, openai_client
from tests.helpers.services import Service, start_control

BATCH_LINES = int(os.environ.get("BENCH_BATCH_LINES", "1024"))
WARM_LINES = 8
BATCH_MAX_TOKENS = 32
ARMS = ("batch_file", "batch_s3", "run_batch")


def batch_lines(w: Workload, n: int, first: int = 0,
                ignore_eos: bool = False) -> list[dict[str, Any]]:
    """n chat-completion lines, each with its own image (Workload.png(first + i))."""
    extra = {"ignore_eos": True} if ignore_eos else {}
    lines = []
    for i in range(first, first + n):
        url = "data:image/png;base64," + base64.b64encode(w.png(i)).decode()
        lines.append({"custom_id": f"line-{i}", "method": "POST", "url": ENDPOINT, "body": {
            "model": SERVED_MODEL, "max_tokens": BATCH_MAX_TOKENS, "temperature": 0.0,
            **extra,
            "messages": [{"role": "user", "content": [
                {"type": "image_url", "image_url": {"url": url}},
                {"type": "text", "text": w.prompt(i)},
            ]}],
        }})
    return lines


def jsonl(lines: list[dict[str, Any]]) -> bytes:
    return "".join(json.dumps(line) + "\n" for line in lines).encode()


# -- vlmq -------------------------------------------------------------------------------


def run_vlmq_batch(client: OpenAI, content: bytes, check: Callable[[], None],
                   timeout: float) -> tuple[Any, float, float]:
    """Uploads `content`, runs it as a batch until `completed`; (batch, upload_s, total_s)."""
    start = time.perf_counter()
    file_id = client.files.create(file=("input.jsonl", content), purpose="batch").id
    uploaded = time.perf_counter()
    batch = client.batches.create(input_file_id=file_id, endpoint=ENDPOINT,
                                  completion_window="24h")
    deadline = uploaded + timeout
    while batch.status not in ("completed", "failed", "expired", "cancelled"):
        check()
        if time.perf_counter() > deadline:
            raise TimeoutError(f"batch {batch.id} still {batch.status} after {timeout:.0f}s")
        time.sleep(0.1)
        batch = client.batches.retrieve(batch.id)
    end = time.perf_counter()
    if batch.status != "completed":
        raise RuntimeError(f"batch {batch.id} ended {batch.status}: {batch.errors}")
    return batch, uploaded - start, end - start


def output_stats(client: OpenAI, batch: Any, keep: Path) -> dict[str, int]:
    """Counts of the batch's output, which is kept at `keep` to compare with run_batch's."""
    text = client.files.content(batch.output_file_id).text if batch.output_file_id else ""
    keep.write_text(text)
    stats = run_batch.output_stats(keep)
    if batch.error_file_id:
        stats["errors"] += len(client.files.content(batch.error_file_id).text.splitlines())
    return stats


def phases(settings: Settings, batch_id: str) -> dict[str, float]:
    """Where the batch's time went, from its row and its jobs' rows (seconds after the
    batch was created): validated, lines expanded, first line claimed, last line done,
    completed."""
    engine = make_engine(settings)
    try:
        with make_session_factory(engine)() as session:
            b = session.get(Batch, batch_id)
            if b is None:
                return {}
            first_claim, last_done, last_created = session.execute(select(
                func.min(Job.started_at), func.max(Job.finished_at), func.max(Job.created_at),
            ).where(Job.batch_id == batch_id)).one()
            marks = {"in_progress": b.in_progress_at, "expanded": last_created,
                     "first_claim": first_claim, "last_line_done": last_done,
                     "completed": b.completed_at}
            return {k: round((v - b.created_at).total_seconds(), 3) for k, v in marks.items()
                    if v is not None}
    finally:
        engine.dispose()


def tree_cpu(pid: int) -> float:
    """CPU seconds of a process and its children (a worker's engine processes)."""
    proc = psutil.Process(pid)
    total = cpu_seconds(pid)
    for child in proc.children(recursive=True):
        try:
            total += cpu_seconds(child.pid)
        except psutil.Error:
            continue
    return total


def measure_vlmq_batch(w: Workload, log_dir: Path, store: str,
                       lines: int = BATCH_LINES) -> dict[str, object]:
    """Arm batch_file (store "file") or batch_s3 (store "s3")."""
    content = jsonl(batch_lines(w, lines))
    warm = jsonl(batch_lines(w, WARM_LINES, first=10_000))
    with stack(w, log_dir, store=store) as st:
        print(f"bench: vlmq batch ({store} store): api, vLLM worker, control", file=sys.stderr,
              flush=True)
        _, base = st.start_api()
        worker = st.start_worker("vllm")
        control = _start_control(st)
        services = {s.name: s for s in st.services}

        def check() -> None:
            alive(worker)
            alive(control)

        with openai_client(base, st.api_key, timeout=300) as client:
            run_vlmq_batch(client, warm, check, timeout=600)
            print(f"bench: vlmq batch ({store} store): {lines} lines", file=sys.stderr,
                  flush=True)
            moto = st.moto_pid
            before = ({name: tree_cpu(s.proc.pid) for name, s in services.items()},
                      cpu_seconds(moto) if moto else 0.0, cpu_profile.snapshot())
            batch, upload_s, seconds = run_vlmq_batch(client, content, check,
                                                      timeout=max(900, 2 * lines))
            after = ({name: tree_cpu(s.proc.pid) for name, s in services.items()},
                     cpu_seconds(moto) if moto else 0.0, cpu_profile.snapshot())
            stats = output_stats(client, batch, log_dir / "batch-output.jsonl")
        if stats["output_lines"] != lines or stats["errors"]:
            raise RuntimeError(f"batch {batch.id}: {stats}; see {log_dir}")
        batch_phases = phases(st.settings, batch.id)
        return {
            "store": store,
            "lines": lines,
            "seconds": seconds,  # upload start to `completed` seen
            "upload_s": upload_s,
            "lines_per_s": lines / seconds,
            **stats,
            "phases_s": batch_phases,
            "process_cpu_s": {name: round(after[0][name] - before[0][name], 2)
                              for name in before[0]},
            "moto_cpu_s": round(after[1] - before[1], 2) if moto else None,
            "cpu_seconds": cpu_profile.delta(before[2], after[2]),
        }


def _start_control(st: Stack) -> Service:
    control = start_control(st.env, st.log_dir)
    st.services.append(control)  # stopped with the stack
    return control


# -- vLLM's run_batch ------------------------------------------------------------------


def measure_run_batch(w: Workload, log_dir: Path, lines: int = BATCH_LINES) -> dict[str, object]:
    """Arm run_batch, in a process of its own (tests/bench/run_batch.py)."""
    log_dir.mkdir(parents=True, exist_ok=True)
    warm, timed, out = (log_dir / "run-batch-warm.jsonl", log_dir / "run-batch-input.jsonl",
                        log_dir / "run-batch.json")
    warm.write_bytes(jsonl(batch_lines(w, WARM_LINES, first=10_000, ignore_eos=True)))
    timed.write_bytes(jsonl(batch_lines(w, lines, ignore_eos=True)))
    out.unlink(missing_ok=True)
    env = {**os.environ, "HF_HUB_OFFLINE": "1",
           "VLLM_CPU_KVCACHE_SPACE": str(w.engine_settings("vllm").cpu_kvcache_gib)}
    print(f"bench: vLLM run_batch, {lines} lines", file=sys.stderr, flush=True)
    with (log_dir / "run-batch.log").open("wb") as log:
        subprocess.run([sys.executable, "-m", "tests.bench.run_batch", str(w.model_path),
                        str(warm), str(timed), str(out)],
                       check=True, env=env, stdout=log, stderr=subprocess.STDOUT)
    result = json.loads(out.read_text())
    if result["output_lines"] != lines or result["errors"]:
        raise RuntimeError(f"run_batch: {result}; see {log_dir / 'run-batch.log'}")
    return {"lines": lines, "lines_per_s": lines / result["seconds"], **result}


# -- together ---------------------------------------------------------------------------


def measure_batches(w: Workload, log_dir: Path,
                    runner_wants: Callable[[str], bool] | None = None) -> dict[str, object]:
    """The arms `runner_wants` accepts (all when None), each by its name in ARMS."""
    wants = runner_wants or (lambda arm: True)
    results: dict[str, object] = {}
    if wants("run_batch"):
        results["run_batch"] = measure_run_batch(w, log_dir / "run-batch")
    if wants("batch_file"):
        results["batch_file"] = measure_vlmq_batch(w, log_dir / "batch-file", "file")
    if wants("batch_s3"):
        results["batch_s3"] = measure_vlmq_batch(w, log_dir / "batch-s3", "s3")
    return results


def batch_figures(results: dict[str, Any]) -> dict[str, float]:
    """Targets: batch_file_over_run_batch >= 1.0, batch_s3_over_run_batch >= 0.9."""
    f: dict[str, float] = {}
    ref = results.get("run_batch")
    if ref:
        f["run_batch_lines_per_s"] = ref["lines_per_s"]
    for arm in ("batch_file", "batch_s3"):
        if r := results.get(arm):
            f[f"{arm}_lines_per_s"] = r["lines_per_s"]
            if ref:
                f[f"{arm}_over_run_batch"] = r["lines_per_s"] / ref["lines_per_s"]
    if (s3 := results.get("batch_s3")) and s3.get("moto_cpu_s") is not None:
        f["batch_s3_moto_cpu_s"] = s3["moto_cpu_s"]
    return f


def main() -> None:
    from shared.devtools.tiny_model import build_tiny_model

    out = Path(os.environ.get("BENCH_OUT", "bench-results"))
    selected = [a.strip() for a in os.environ.get("BENCH_ARMS", "").split(",") if a.strip()]
    model = build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve())
    w = Workload(model_path=model)
    results = measure_batches(w, out / "logs" / "batches",
                              (lambda arm: arm in selected) if selected else None)
    figures = batch_figures(results)
    out.mkdir(parents=True, exist_ok=True)
    (out / "batches.json").write_text(json.dumps({"figures": figures, "results": results},
                                                 indent=2))
    print(json.dumps(results, indent=2))
    print(f"\n{BATCH_LINES} lines, {w.width}x{w.height} PNG data: URLs, {BATCH_MAX_TOKENS} "
          "tokens each (EOS ignored)")
    for name, value in figures.items():
        print(f"  {name:32s} {value:10.3f}")


if __name__ == "__main__":
    main()
