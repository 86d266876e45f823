"""`make soak-backfill`: 10,000 generated images through `vlmq backfill`, with the CLI
killed (SIGKILL) twice and the worker killed twice; at the end the output must hold exactly
one line per image, and the run prints its images/s beside `make bench`'s drain figure.

    .venv/bin/python -m tests.soak.backfill [--images N] [--engine vllm|echo]
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from shared.devtools.tiny_model import build_tiny_model
from tests.helpers.images import png_bytes
from tests.helpers.services import Service, fresh_database, moto_server, start_api, start_worker
from tests.helpers.stack import make_stack

HISTORY = Path("bench-results/history.jsonl")


def main() -> None:
    parser = argparse.ArgumentParser(prog="soak-backfill")
    parser.add_argument("--images", type=int, default=10_000)
    parser.add_argument("--engine", choices=["vllm", "echo"], default="vllm")
    args = parser.parse_args()
    log_dir = Path(tempfile.mkdtemp(prefix="vlmq-soak-backfill-"))
    source = log_dir / "images"
    for i in range(args.images):
        folder = source / f"{i // 1000:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{i:05d}.png").write_bytes(png_bytes(64, 48, seed=i % 50))
    print(f"soak-backfill: {args.images} images in {source}; logs in {log_dir}", flush=True)
    model = build_tiny_model(Path(".vlmq/models/tiny-qwen2-vl").resolve())
    with moto_server(log_dir) as s3, fresh_database() as db_url:
        stack = make_stack(db_url, s3, model, log_dir).with_env(
            engine=args.engine, enforce_eager="true", max_batch_size="64",
            lease_seconds="5", heartbeat_seconds="1", retry_backoff_seconds="0.2",
        ).migrate()
        api, base = start_api(stack.env, log_dir)
        worker = start_worker(stack.env, log_dir, "soak-backfill-worker-0")
        out = log_dir / "captions.jsonl"
        argv = [sys.executable, "-m", "shared.cli", "backfill", str(source), "--prompt",
                "Describe the image.", "--max-tokens", "8", "--out", str(out), "--server", base,
                "--max-in-flight", "64", "--quiet"]
        env = {**stack.env, "VLMQ_API_KEY": stack.api_key}
        started = time.monotonic()
        try:
            faults = ["cli", "worker", "cli", "worker"]
            cli = subprocess.Popen(argv, env=env)
            for n, fault in enumerate(faults, 1):
                target = args.images * n // (len(faults) + 1)
                while _done(out) < target:
                    if cli.poll() is not None:
                        raise SystemExit(f"the backfill ended early with {cli.returncode}")
                    time.sleep(0.2)
                if fault == "cli":
                    os.kill(cli.pid, signal.SIGKILL)
                    cli.wait()
                    cli = subprocess.Popen(argv, env=env)
                else:
                    worker.kill()
                    worker = start_worker(stack.env, log_dir, f"soak-backfill-worker-{n}")
                print(f"soak-backfill: fault {n}/{len(faults)} ({fault} killed) at "
                      f"{_done(out)} lines", flush=True)
            code = cli.wait()
        finally:
            _stop(worker)
            api.stop()
        seconds = time.monotonic() - started
    lines = [json.loads(x) for x in out.read_text().splitlines() if x.strip()]
    sources = [x["source"] for x in lines]
    print()
    print(f"{'images':34s} {args.images:8d}")
    print(f"{'output lines':34s} {len(lines):8d}")
    print(f"{'distinct images in the output':34s} {len(set(sources)):8d}")
    print(f"{'succeeded':34s} {sum(x['status'] == 'succeeded' for x in lines):8d}")
    print(f"{'backfill exit status':34s} {code:8d}")
    print(f"{'images/s (faults included)':34s} {args.images / seconds:8.2f}")
    print(f"{'make bench drain (images/s)':34s} {_drain_figure()}")
    if len(lines) != args.images or len(set(sources)) != args.images or code != 0:
        raise SystemExit(1)


def _done(out: Path) -> int:
    return out.read_text().count("\n") if out.exists() else 0


def _stop(worker: Service) -> None:
    worker.stop()


def _drain_figure() -> str:
    """The drain figure of the latest `make bench` run on this checkout, if there is one."""
    if not HISTORY.exists():
        return "     n/a (run make bench)"
    for line in reversed(HISTORY.read_text().splitlines()):
        figures = json.loads(line)
        for key, value in figures.items():
            if "drain" in key and isinstance(value, int | float):
                return f"{value:8.2f} ({key})"
    return "     n/a (no drain figure in bench-results/history.jsonl)"


if __name__ == "__main__":
    main()
