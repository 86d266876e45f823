"""`vlmq backfill` stopped with Ctrl-C and run again: how it leaves, what it counts, and the
CSV header, against a real API and echo worker."""

from __future__ import annotations

import csv
import json
import re
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vlmq.client import Client

from tests.helpers.images import png_bytes
from tests.helpers.stack import Stack

# This module's own model, served by the `echo_worker` fixture.
MODEL = f"backfill-int-{uuid.uuid4().hex[:6]}"
# Accepted by the stack's API and served by no worker: its jobs stay queued, so a run on it
# is always mid-way.
PARKED = "parked"
RESUME_HINT = "run the same command again"


def start(stack: Stack, api: str, *args: str, model: str = MODEL) -> subprocess.Popen[str]:
    argv = [sys.executable, "-m", "shared.cli", "backfill", *args, "--server", api,
            "--model", model]
    # Wide enough that the summary table keeps each row on one line.
    env = {**stack.env, "VLMQ_API_KEY": stack.api_key, "COLUMNS": "200"}
    return subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT)


def run(stack: Stack, api: str, *args: str) -> tuple[int, str]:
    proc = start(stack, api, *args)
    output, _ = proc.communicate(timeout=300)
    return proc.returncode, output


def images(folder: Path, n: int, first: int = 0) -> set[str]:
    folder.mkdir(parents=True, exist_ok=True)
    paths = set()
    for i in range(first, first + n):
        path = folder / f"img{i:04d}.png"
        path.write_bytes(png_bytes(16, 12, seed=i))
        paths.add(str(path))
    return paths


def summary(output: str) -> dict[str, int]:
    """The summary table's row by column, the first word of each header naming it."""
    lines = output.splitlines()
    at = max(i for i, line in enumerate(lines) if "succeeded" in line and "┃" in line)
    header = [c.strip().split(" ")[0] for c in lines[at].split("┃")[1:-1]]
    row = next(x for x in lines[at + 1:] if re.search(r"│\s*\d", x))
    cells = [c.strip() for c in row.split("│")[1:-1]]
    return {name: int(cells[header.index(name)]) if name in header else -1
            for name in ("skipped", "resumed", "submitted", "succeeded", "failed")}


def wait_for_lines(path: Path, n: int, proc: subprocess.Popen[str], timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists() or len(path.read_text().splitlines()) < n:
        assert proc.poll() is None, proc.communicate()[0]
        assert time.monotonic() < deadline, f"fewer than {n} lines in {path}"
        time.sleep(0.05)


def cancel_parked(api: str, stack: Stack, prompt: str) -> None:
    # Other modules count the parked model's queue: leave none of these jobs queued.
    with Client(api, stack.api_key) as client:
        for job in list(client.iter_jobs(model=PARKED, status="queued", page_size=500)):
            if job.prompt == prompt:
                client.cancel(job.id)


def parked_run(stack: Stack, api: str, tmp_path: Path, prompt: str,
               *extra: str) -> tuple[subprocess.Popen[str], Path]:
    """A run that cannot finish, stopped with its first jobs submitted and waiting."""
    source = tmp_path / "parked"
    images(source, 40)
    out = tmp_path / "parked.jsonl"
    proc = start(stack, api, str(source), "--prompt", prompt, "--out", str(out),
                 "--max-in-flight", "4", *extra, model=PARKED)
    wait_for_lines(out.with_name(out.name + ".state"), 4, proc)
    return proc, out


def test_ctrl_c_stops_at_once_says_how_to_resume_and_exits_130(
    stack: Stack, api: str, tmp_path: Path
) -> None:
    prompt = f"interrupt {uuid.uuid4().hex}"
    proc, out = parked_run(stack, api, tmp_path, prompt)
    try:
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - sent
        assert proc.returncode == 130, output
        assert took < 10, f"took {took:.1f} s to leave"
        assert "Traceback" not in output and "KeyboardInterrupt" not in output, output
        hints = [line for line in output.splitlines() if RESUME_HINT in line]
        assert len(hints) == 1, output
        assert re.search(r"up to \d+ s", hints[0]), hints[0]
        # Nothing was submitted after Ctrl-C: the server has exactly the jobs in the state.
        submitted = len(out.with_name(out.name + ".state").read_text().splitlines())
        time.sleep(1)
        with Client(api, stack.api_key) as client:
            mine = [j for j in client.iter_jobs(model=PARKED, page_size=500)
                    if j.prompt == prompt]
        assert len(mine) == submitted <= 4 + 1
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_parked(api, stack, prompt)


def test_a_second_ctrl_c_leaves_at_once(stack: Stack, api: str, tmp_path: Path) -> None:
    prompt = f"twice {uuid.uuid4().hex}"
    proc, _ = parked_run(stack, api, tmp_path, prompt, "--quiet")
    try:
        proc.send_signal(signal.SIGINT)
        time.sleep(0.3)
        sent = time.monotonic()
        proc.send_signal(signal.SIGINT)
        output, _ = proc.communicate(timeout=15)
        took = time.monotonic() - sent
        assert proc.returncode == 130, output
        assert took < 2, f"took {took:.1f} s after the second Ctrl-C"
        assert "Traceback" not in output, output
        assert len([x for x in output.splitlines() if RESUME_HINT in x]) == 1, output
    finally:
        if proc.poll() is None:
            proc.kill()
        cancel_parked(api, stack, prompt)


def test_ctrl_c_mid_run_then_rerun_gives_one_line_per_image_each_counted_once(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "many"
    expected = images(source, 80)
    out = tmp_path / "many.jsonl"
    args = (str(source), "--prompt", f"resume {uuid.uuid4().hex}", "--out", str(out),
            "--max-in-flight", "4", "--quiet")
    first = start(stack, api, *args)
    wait_for_lines(out, 10, first)
    first.send_signal(signal.SIGINT)
    output, _ = first.communicate(timeout=30)
    assert first.returncode == 130 and "Traceback" not in output, output
    done_before = len(out.read_text().splitlines())
    assert done_before < len(expected), "finished before Ctrl-C"

    code, output = run(stack, api, *args)
    assert code == 0, output
    got = [json.loads(x) for x in out.read_text().splitlines()]
    assert len(got) == len(expected) and {x["source"] for x in got} == expected
    with Client(api, stack.api_key) as client:
        mine = [j for j in client.iter_jobs(model=MODEL, page_size=500) if j.prompt == args[2]]
    assert len(mine) == len(expected), "an item was submitted twice"
    counts = summary(output)
    assert counts["skipped"] == done_before, output
    assert counts["skipped"] + counts["resumed"] + counts["submitted"] == len(expected), output
    assert counts["succeeded"] == counts["resumed"] + counts["submitted"], output


def test_a_rerun_counts_done_items_as_skipped_and_replayed_submits_as_resumed(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "photos"
    images(source, 10)
    out = tmp_path / "photos.jsonl"
    args = (str(source), "--prompt", f"count {uuid.uuid4().hex}", "--out", str(out))
    code, output = run(stack, api, *args)
    assert code == 0, output
    assert summary(output) == {"skipped": 0, "resumed": 0, "submitted": 10, "succeeded": 10,
                               "failed": 0}
    # The live line's last state agrees with the summary.
    assert "submitted 10 | resumed 0" in output, output

    # Four more images: the ten done are skipped, only the new four are submitted.
    images(source, 4, first=10)
    code, output = run(stack, api, *args)
    assert code == 0, output
    assert summary(output) == {"skipped": 10, "resumed": 0, "submitted": 4, "succeeded": 4,
                               "failed": 0}

    # Output and state lost: every submit is replayed by its Idempotency-Key, so nothing
    # is a new submission.
    out.unlink()
    out.with_name(out.name + ".state").unlink()
    code, output = run(stack, api, *args)
    assert code == 0, output
    assert summary(output) == {"skipped": 0, "resumed": 14, "submitted": 0, "succeeded": 14,
                               "failed": 0}
    assert len(out.read_text().splitlines()) == 14


def test_csv_output_has_one_header_also_after_a_rerun(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "csv"
    expected = images(source, 3)
    out = tmp_path / "out.csv"
    args = (str(source), "--prompt", f"csv {uuid.uuid4().hex}", "--out", str(out), "--csv",
            "--quiet")
    code, output = run(stack, api, *args)
    assert code == 0, output
    expected |= images(source, 2, first=3)
    code, output = run(stack, api, *args)
    assert code == 0, output
    rows = list(csv.reader(out.open(newline="")))
    assert rows[0] == ["source", "job_id", "status", "text", "prompt_tokens",
                       "completion_tokens", "error"]
    assert [r[0] for r in rows].count("source") == 1
    assert len(rows) == 1 + len(expected) and {r[0] for r in rows[1:]} == expected
    assert all(r[2] == "succeeded" for r in rows[1:])
    # The header is not taken for an item: --retry-failed keeps it and drops nothing.
    code, output = run(stack, api, *args, "--retry-failed")
    assert code == 0, output
    assert list(csv.reader(out.open(newline=""))) == rows
