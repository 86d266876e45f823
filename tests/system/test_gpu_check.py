"""`make gpu-check` measures on a GPU machine, which CI does not have; this runs the script
on the tiny model on CPU through transformers, so it keeps working between GPU runs."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def test_gpu_check_prints_the_worker_beside_the_raw_engine(
    tiny_model: Path, tmp_path: Path
) -> None:
    out = tmp_path / "gpu-check.json"
    proc = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gpu_check.py"), "--shape", "tiny",
         "--model-dir", str(tiny_model), "--device", "cpu", "--engine", "transformers",
         "--images", "4", "--max-tokens", "4", "--batch", "4", "--out", str(out)],
        cwd=tmp_path, env={**os.environ, "VLMQ_ENGINE": "echo"},  # ignored: arguments rule
        capture_output=True, text=True, timeout=180,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    report = proc.stdout
    assert "raw transformers (generate)" in report
    assert "worker engine path (batcher + backend)" in report
    assert "images/s" in report and "worker / raw:" in report
    assert "n/a (cpu run)" in report  # no GPU to sample
    result = json.loads(out.read_text())
    for arm in ("raw", "worker"):
        assert result[arm]["images"] == 4 and result[arm]["images_per_s"] > 0
        assert result[arm]["tokens"] == 4 * 4  # EOS ignored: every image gets its 4 tokens
    assert result["worker_over_raw"] > 0
    assert result["width"] == 1280 and result["height"] == 960
