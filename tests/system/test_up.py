"""`vlmq up` runs the embedded default as a local stack in one command, and every command
finds the project's state from any folder inside it, or says in one line what is wrong."""

from __future__ import annotations

import re
import subprocess
import time
from pathlib import Path

import httpx
import psutil
import pytest

from tests.helpers.images import png_bytes
from tests.helpers.services import free_port
from tests.helpers.up import CLI, make_project, plain_env, start_up, stop_up

KEY = re.compile(r"export VLMQ_API_KEY=(vlmq_\S+)")
STARTED = re.compile(r"started (\w+) \(pid (\d+)")


@pytest.fixture()
def project(tmp_path: Path, tiny_model: Path) -> Path:
    return make_project(tmp_path, tiny_model)


def test_up_serves_until_ctrl_c_and_keeps_its_key(project: Path) -> None:
    port = free_port()
    proc, lines = start_up(project, port)
    out = "".join(lines)
    pids = {name: int(pid) for name, pid in STARTED.findall(out)}
    try:
        assert set(pids) == {"api", "worker", "control"}, out
        key = KEY.search(out)
        assert key, out
        assert f"http://127.0.0.1:{port}" in out and f"logs     {project / '.vlmq' / 'logs'}" in out
        # "ready" means a job submitted now runs.
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {key.group(1)}"}) as client:
            job = client.post("/v1/jobs", data={"prompt": "Up?"},
                              files={"image": ("a.png", png_bytes(32, 32), "image/png")}).json()
            done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
        assert done["status"] == "succeeded", done
        # The API and the control process got the same signing secret: a webhook URL is
        # taken, and its events will be signed and sent. (An address literal: this machine
        # may resolve no names.)
        with httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30,
                          headers={"Authorization": f"Bearer {key.group(1)}"}) as client:
            hooked = client.post("/v1/jobs", files={"image": ("a.png", png_bytes(32, 32),
                                                              "image/png")},
                                 data={"prompt": "Hook?", "webhook_url": "https://93.184.215.14/h"})
        assert hooked.status_code == 202, hooked.text
        control_log = (project / ".vlmq" / "logs" / "control.log").read_text()
        assert "webhook delivery is off" not in control_log
    finally:
        rest = stop_up(proc)
    assert proc.returncode == 0, out + rest
    assert "Traceback" not in rest and "stopped api" in rest, rest
    for pid in pids.values():
        assert not psutil.pid_exists(pid) or psutil.Process(pid).status() == "zombie"

    # The key is saved owner-only in the home and given again on the next run.
    key_file = project / ".vlmq" / "api-key"
    assert key_file.read_text().strip() == key.group(1)
    assert key_file.stat().st_mode & 0o077 == 0
    proc, lines = start_up(project, free_port())
    stop_up(proc)
    assert f"export VLMQ_API_KEY={key.group(1)}" in "".join(lines)
    secret = (project / ".vlmq" / "webhook-secret").read_text().strip()
    assert secret.startswith("whsec_") and f"webhooks signed with {secret}" in out
    assert f"webhooks signed with {secret}" in "".join(lines)


def test_commands_find_the_project_home_from_any_folder_inside_it(project: Path) -> None:
    env = plain_env()
    subprocess.run([*CLI, "migrate"], cwd=project, env=env, check=True, timeout=120,
                   capture_output=True)
    deep = project / "src" / "deeper"
    deep.mkdir(parents=True)
    made = subprocess.run([*CLI, "keys", "create", "--tenant", "anywhere"], cwd=deep, env=env,
                          capture_output=True, text=True, timeout=60)
    assert made.returncode == 0, made.stderr
    listed = subprocess.run([*CLI, "keys", "list"], cwd=project, env=env, capture_output=True,
                            text=True, timeout=60)
    assert "anywhere" in listed.stdout + listed.stderr
    assert not (deep / ".vlmq").exists()


def test_a_missing_database_is_one_line_saying_what_to_do(tmp_path: Path) -> None:
    for command in (["api"], ["worker"], ["control"], ["keys", "list"]):
        run = subprocess.run([*CLI, *command], cwd=tmp_path, env=plain_env(),
                             capture_output=True, text=True, timeout=60)
        err = run.stderr.strip()
        assert run.returncode != 0, command
        assert "Traceback" not in err and len(err.splitlines()) == 1, err
        assert "no database at" in err and "vlmq migrate" in err, err
        assert str(tmp_path / ".vlmq") in err, err


def test_an_unwritable_home_is_one_line_naming_it(tmp_path: Path) -> None:
    blocked = tmp_path / "file-not-folder"
    blocked.write_text("")
    run = subprocess.run([*CLI, "migrate"], cwd=tmp_path,
                         env=plain_env(home=str(blocked / "home")),
                         capture_output=True, text=True, timeout=60)
    err = run.stderr.strip()
    assert run.returncode != 0
    assert "Traceback" not in err and len(err.splitlines()) == 1, err
    assert f"VLMQ_HOME={blocked / 'home'}" in err, err


def test_an_unmigrated_database_says_to_migrate(tmp_path: Path) -> None:
    (tmp_path / ".vlmq").mkdir()
    (tmp_path / ".vlmq" / "vlmq.db").write_bytes(b"")
    run = subprocess.run([*CLI, "keys", "list"], cwd=tmp_path, env=plain_env(),
                         capture_output=True, text=True, timeout=60)
    err = run.stderr.strip()
    assert run.returncode != 0 and "Traceback" not in err, err
    assert "no vlmq schema yet; run `vlmq migrate`" in err, err


def test_up_with_flower_on_the_folder_broker(project: Path) -> None:
    """Flower on the embedded folder broker, and the jobs of the stack in its task list."""
    flower_port, port = free_port(), free_port()
    proc, lines = start_up(project, port, "--flower", "--flower-port", str(flower_port))
    out = "".join(lines)
    try:
        shown = re.search(rf"Flower   http://127.0.0.1:{flower_port}  \(user:password (\S+)\)",
                          out)
        assert shown, out
        user, password = shown.group(1).split(":", 1)
        deadline = time.monotonic() + 60
        while True:
            try:
                page = httpx.get(f"http://127.0.0.1:{flower_port}/workers", auth=(user, password))
                if page.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline, "Flower did not answer"
            time.sleep(0.5)
        assert httpx.get(f"http://127.0.0.1:{flower_port}/workers").status_code == 401
        key = KEY.search(out)
        assert key, out
        seen = _jobs_seen_by_flower(f"http://127.0.0.1:{port}", key.group(1),
                                    f"http://127.0.0.1:{flower_port}", (user, password))
        assert seen["state"] == "SUCCESS" and seen["name"].startswith("vlmq.job."), seen
    finally:
        rest = stop_up(proc)
    assert proc.returncode == 0 and "stopped flower" in rest, out + rest
    flower_log = (project / ".vlmq" / "logs" / "flower.log").read_text()
    assert "Failed to capture events" not in flower_log


def _jobs_seen_by_flower(api: str, key: str, flower: str, auth: tuple[str, str]
                         ) -> dict[str, object]:
    """Submits jobs until Flower shows one that succeeded (its event queue is bound a moment
    after it answers, and events sent before that reach nobody); that job's task."""
    deadline = time.monotonic() + 60
    with httpx.Client(base_url=api, timeout=30, headers={"Authorization": f"Bearer {key}"}
                      ) as client:
        while True:
            job = client.post("/v1/jobs", data={"prompt": "Flower?"},
                              files={"image": ("a.png", png_bytes(32, 32), "image/png")}).json()
            done = client.get(f"/v1/jobs/{job['id']}", params={"wait": 30}).json()
            assert done["status"] == "succeeded", done
            for _ in range(10):
                task = httpx.get(f"{flower}/api/tasks", auth=auth, timeout=30).json().get(job["id"])
                if task is not None and task["state"] == "SUCCESS":
                    return task
                time.sleep(0.5)
            assert time.monotonic() < deadline, "Flower never showed a job"
