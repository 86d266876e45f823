"""`vlmq backfill` as a user runs it, against a real API, echo worker and S3 server."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

from vlmq.backfill.runner import OUTPUT_COLUMNS
from vlmq.client import Client

from tests.helpers.images import png_bytes
from tests.helpers.services import create_api_key, free_port, start_api, start_worker
from tests.helpers.stack import Stack
from tests.helpers.store import s3_client, store_location

# This module's own model, served by the `echo_worker` fixture.
MODEL = f"backfill-echo-{uuid.uuid4().hex[:6]}"


def backfill(stack: Stack, api: str, *args: str, key: str | None = None,
             background: bool = False) -> subprocess.CompletedProcess[str] | subprocess.Popen[str]:
    argv = [sys.executable, "-m", "shared.cli", "backfill", *args, "--server", api,
            "--model", MODEL, "--quiet"]
    env = {**stack.env, "VLMQ_API_KEY": key or stack.api_key}
    if background:
        return subprocess.Popen(argv, env=env, text=True, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT)
    return subprocess.run(argv, env=env, text=True, capture_output=True, timeout=300)


def lines(out: Path) -> list[dict]:
    return [json.loads(x) for x in out.read_text().splitlines() if x.strip()]


def images(folder: Path, n: int, nested: bool = True) -> list[Path]:
    paths = []
    for i in range(n):
        sub = folder / (f"part{i % 3}" if nested else "") / (f"deep{i % 2}" if nested else "")
        sub.mkdir(parents=True, exist_ok=True)
        path = sub / f"img{i:04d}.png"
        path.write_bytes(png_bytes(16, 12, seed=i))
        paths.append(path)
    return paths


def test_a_folder_with_nested_folders_skips_what_is_not_an_image(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "photos"
    expected = {str(p) for p in images(source, 7)}
    (source / "notes.txt").write_text("not an image")
    (source / "part0" / ".DS_Store").write_bytes(b"\0\1")
    out = tmp_path / "results.jsonl"
    run = backfill(stack, api, str(source), "--prompt", "Describe it.", "--max-tokens", "4",
                   "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    got = lines(out)
    assert {x["source"] for x in got} == expected and len(got) == 7
    assert all(x["status"] == "succeeded" and x["text"] for x in got)
    assert "succeeded" in run.stderr  # the summary table


def test_a_manifest_gives_each_line_its_prompt(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    pics = images(tmp_path / "m", 3, nested=False)
    manifest = tmp_path / "manifest.jsonl"
    manifest.write_text("\n".join(json.dumps(
        {"image": str(p.relative_to(tmp_path)), "prompt": f"question {i}", "max_tokens": 3})
        for i, p in enumerate(pics)))
    out = tmp_path / "out.csv"
    run = backfill(stack, api, str(manifest), "--out", str(out), "--csv")
    assert run.returncode == 0, run.stdout + run.stderr
    header, *rows = list(csv.reader(out.read_text().splitlines()))
    assert header == list(OUTPUT_COLUMNS) and len(rows) == 3
    with Client(api, stack.api_key) as client:
        prompts = {client.get(row[header.index("job_id")]).prompt for row in rows}
    assert prompts == {"question 0", "question 1", "question 2"}


def test_an_s3_prefix_is_sent_by_reference(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    bucket, _ = store_location(stack.settings.store_url)
    s3 = s3_client(stack.settings)
    prefix = f"archive-{uuid.uuid4().hex[:6]}/"
    for i in range(3):
        s3.put_object(Bucket=bucket, Key=f"{prefix}2024/{i}.png", Body=png_bytes(20, 20, seed=i))
    s3.put_object(Bucket=bucket, Key=f"{prefix}README.md", Body=b"# not an image")
    # A tenant names only the s3:// prefixes an operator allowed it.
    subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant", "tests",
                    "--image-url-prefix", f"s3://{bucket}/{prefix}"], env=stack.env,
                   check=True, capture_output=True, timeout=60)
    out = tmp_path / "s3.jsonl"
    run = backfill(stack, api, f"s3://{bucket}/{prefix}", "--prompt", "What is it?",
                   "--out", str(out))
    assert run.returncode == 0, run.stdout + run.stderr
    got = lines(out)
    assert sorted(x["source"] for x in got) == [f"s3://{bucket}/{prefix}2024/{i}.png"
                                                for i in range(3)]
    with Client(api, stack.api_key) as client:
        jobs = [client.get(x["job_id"]) for x in got]
    assert all(j.image_url == x["source"] for j, x in zip(jobs, got, strict=True))


def test_kill_9_and_rerun_gives_one_line_per_image(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "many"
    expected = {str(p) for p in images(source, 150)}
    out = tmp_path / "many.jsonl"
    args = (str(source), "--prompt", f"resume {uuid.uuid4().hex}", "--out", str(out),
            "--max-in-flight", "4")
    first = backfill(stack, api, *args, background=True)
    assert isinstance(first, subprocess.Popen)
    deadline = time.monotonic() + 120
    while not out.exists() or len(out.read_text().splitlines()) < 20:
        assert first.poll() is None and time.monotonic() < deadline, "no progress to cut"
        time.sleep(0.05)
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    done_before = len(out.read_text().splitlines())
    assert done_before < len(expected), "finished before the kill"

    second = backfill(stack, api, *args)
    assert second.returncode == 0, second.stdout + second.stderr
    got = lines(out)
    assert len(got) == len(expected) and {x["source"] for x in got} == expected
    with Client(api, stack.api_key) as client:
        mine = [j for j in client.iter_jobs(model=MODEL, page_size=500)
                if j.prompt == args[2]]
    assert len(mine) == len(expected), "an item was submitted twice"


def test_retry_failed_resubmits_only_the_failures(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    source = tmp_path / "mixed"
    images(source, 3, nested=False)
    broken = source / "broken.png"
    broken.write_bytes(b"not really a png")
    out = tmp_path / "mixed.jsonl"
    first = backfill(stack, api, str(source), "--prompt", "x", "--out", str(out))
    assert first.returncode == 1
    failed = [x for x in lines(out) if x["status"] != "succeeded"]
    assert [x["source"] for x in failed] == [str(broken)]
    assert "invalid_image" in failed[0]["error"]

    broken.write_bytes(png_bytes(16, 16))
    again = backfill(stack, api, str(source), "--prompt", "x", "--out", str(out),
                     "--retry-failed")
    assert again.returncode == 0, again.stdout + again.stderr
    got = lines(out)
    assert len(got) == 4 and all(x["status"] == "succeeded" for x in got)


def test_a_tenants_429s_are_waited_out_not_failures(
    stack: Stack, api: str, echo_worker: None, tmp_path: Path
) -> None:
    tenant = f"backfill-{uuid.uuid4().hex[:6]}"
    key = create_api_key(stack.settings.database_url, tenant)
    subprocess.run([sys.executable, "-m", "shared.cli", "keys", "limits", "--tenant", tenant,
                    "--submits-per-second", "2"], env=stack.env, check=True, timeout=60)
    source = tmp_path / "paced"
    images(source, 6, nested=False)
    out = tmp_path / "paced.jsonl"
    run = backfill(stack, api, str(source), "--prompt", "x", "--out", str(out), key=key)
    assert run.returncode == 0, run.stdout + run.stderr
    assert len(lines(out)) == 6 and all(x["status"] == "succeeded" for x in lines(out))


def test_dry_run_counts_and_estimates(stack: Stack, api: str, echo_worker: None,
                                     tmp_path: Path) -> None:
    images(tmp_path / "dry", 5)
    run = backfill(stack, api, str(tmp_path / "dry"), "--out", str(tmp_path / "none.jsonl"),
                   "--dry-run")
    assert run.returncode == 0, run.stderr
    assert run.stdout.startswith("5 images in")
    assert not (tmp_path / "none.jsonl").exists()


def test_dry_run_on_the_embedded_default_with_recent_jobs(tmp_path: Path, log_dir: Path) -> None:
    """No settings at all (SQLite, the folder broker, a local store under the working
    folder): the estimate compares the tenant's recent jobs' times, which SQLite once gave
    back without a zone, and the dry run crashed comparing them with aware ones."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("VLMQ_")}
    cli = [sys.executable, "-m", "shared.cli"]
    subprocess.run([*cli, "migrate"], cwd=tmp_path, env=env, check=True, timeout=120,
                   capture_output=True)
    key = subprocess.run([*cli, "keys", "create", "--tenant", "embedded", "--name", "dry"],
                         cwd=tmp_path, env=env, check=True, timeout=60, capture_output=True,
                         text=True).stdout.strip().split()[-1]
    api, base = start_api(env, log_dir, name="api-embedded-dry", cwd=tmp_path)
    worker = start_worker({**env, "VLMQ_ENGINE": "echo"}, log_dir, name="worker-embedded-dry",
                          cwd=tmp_path)
    try:
        with Client(base, key) as client:
            job = client.wait(client.submit("Recent.", image=png_bytes(16, 12)).id, timeout=60)
        assert job.status == "succeeded", job
        images(tmp_path / "photos", 3, nested=False)
        run = subprocess.run(
            [*cli, "backfill", "photos", "--prompt", "Describe it.", "--out", "out.jsonl",
             "--server", base, "--dry-run"],
            cwd=tmp_path, env={**env, "VLMQ_API_KEY": key}, text=True, capture_output=True,
            timeout=120,
        )
    finally:
        worker.stop()
        api.stop()
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("3 images in"), run.stdout
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "out.jsonl").exists()


def test_an_unreachable_server_is_one_line_at_once(tmp_path: Path) -> None:
    images(tmp_path / "few", 2, nested=False)
    started = time.monotonic()
    run = subprocess.run(
        [sys.executable, "-m", "shared.cli", "backfill", str(tmp_path / "few"), "--prompt", "Hi.",
         "--out", str(tmp_path / "out.jsonl"), "--server", f"http://127.0.0.1:{free_port()}"],
        env={**os.environ, "VLMQ_API_KEY": "vlmq_unused"}, capture_output=True, text=True,
        timeout=60,
    )
    assert run.returncode == 1
    assert "cannot reach the vlmq API at" in run.stderr and "vlmq up" in run.stderr, run.stderr
    assert "Traceback" not in run.stderr and len(run.stderr.strip().splitlines()) == 1
    # Said before any retrying: the client's retries are for a server that blips mid-run.
    assert time.monotonic() - started < 20
    assert not (tmp_path / "out.jsonl").exists()
