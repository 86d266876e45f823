"""`vlmq up`: the embedded default as a running local stack in one command.

Migrates the database, makes sure of the model, starts the API, a worker with the demo's
fast settings and the control process (Flower with --flower), prints where each is and the
key to use, and says "ready" only once a job can run. Ctrl-C stops everything. Logs are
under the vlmq home's logs/ folder.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
import time
from pathlib import Path

import httpx

from shared import home
from shared.cli import preflight
from shared.db import make_engine, make_session_factory
from shared.devtools import local_stack
from shared.migrate import upgrade_head
from shared.settings import Settings
from shared.tenancy import repo as tenancy_repo

TENANT = "local"
# The key of tenant `local`, kept so every `vlmq up` in a project gives the same one.
KEY_FILE = "api-key"
# The webhook signing secret, kept so receivers keep verifying across runs.
SECRET_FILE = "webhook-secret"


def _say(msg: str) -> None:
    print(f"up: {msg}", flush=True)


def run_up(port: int | None, flower: bool, flower_port: int) -> int:
    user_settings = Settings()
    defaults = local_stack.service_defaults(user_settings)
    port = port or user_settings.api_port
    defaults["api_port"] = port
    settings = Settings(**defaults)
    preflight.writable_database_folder("up", settings)
    # Settings every process must read alike: the API accepts a webhook URL only where
    # the control process can sign and send its events, so both get the same secret.
    shared_env: dict[str, str] = {}
    if not user_settings.webhook_secrets:
        shared_env["VLMQ_WEBHOOK_SECRETS"] = json.dumps([local_webhook_secret()])
    if flower and not user_settings.flower_basic_auth:
        shared_env["VLMQ_FLOWER_BASIC_AUTH"] = json.dumps([f"local:{secrets.token_urlsafe(12)}"])
    env = {**local_stack.child_env(defaults, settings), **shared_env}
    _say(f"home {home.vlmq_home()}")
    _say(f"database {settings.database_url} | broker {settings.broker_url} | "
         f"store {settings.store_url}")
    _say(f"engine {settings.engine.value} | model {settings.model} ({settings.model_path})")
    try:
        with local_stack.stop_on_signals():
            _run(settings, env, port, flower_port if flower else None)
    except KeyboardInterrupt:
        _say("stopped")
    return 0


def local_webhook_secret() -> str:
    """The stack's webhook signing secret: the saved one, else a new one, saved."""
    path = home.vlmq_home() / SECRET_FILE
    if path.exists():
        return path.read_text().strip()
    secret = f"whsec_{base64.b64encode(secrets.token_bytes(32)).decode()}"
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_private(path, secret + "\n")
    return secret


def _run(settings: Settings, env: dict[str, str], port: int, flower_port: int | None) -> None:
    local_stack.ensure_model(settings, _say)
    upgrade_head(settings)
    key = local_key(settings)
    with local_stack.local_stack(settings, env, _say, "up", port=port,
                                 flower_port=flower_port) as running:
        with httpx.Client(base_url=running.base, timeout=30,
                          headers={"Authorization": f"Bearer {key}"}) as client:
            local_stack.wait_ready(client, running.logs, _say, "up")
            local_stack.wait_worker(client, settings, running.logs, _say, "up")
        _print_ready(running, key, env, flower_port)
        while True:
            local_stack.check_children("vlmq up")
            time.sleep(0.5)


def local_key(settings: Settings) -> str:
    """The key of tenant `local`: the saved one while it still authenticates, else a new
    one, saved (owner-only) for the next run."""
    path = home.vlmq_home() / KEY_FILE
    engine = make_engine(settings)
    try:
        sessions = make_session_factory(engine)
        if path.exists():
            saved = path.read_text().strip()
            with sessions() as session:
                if tenancy_repo.authenticate(session, saved) is not None:
                    return saved
        with sessions.begin() as session:
            row, key = tenancy_repo.create_key(session, TENANT, "vlmq up", is_admin=False)
    finally:
        engine.dispose()
    _write_private(path, key + "\n")
    _say(f"created API key {row.id} for tenant {TENANT}, saved in {path}")
    return key


def _write_private(path: Path, text: str) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(text)


def _print_ready(running: local_stack.Running, key: str, env: dict[str, str],
                 flower_port: int | None) -> None:
    base = running.base
    lines = [
        f"API      {base}  (docs {base}/docs)",
        f"key      export VLMQ_API_KEY={key}",
        f"logs     {running.logs}",
    ]
    webhook_secrets = json.loads(env.get("VLMQ_WEBHOOK_SECRETS") or "[]")
    if webhook_secrets:
        saved = home.vlmq_home() / SECRET_FILE
        where = f", saved in {saved}" if saved.exists() else ""
        lines.append(f"webhooks signed with {webhook_secrets[0]}{where}")
        lines.append("         (a receiver on this machine also needs VLMQ_WEBHOOK_ALLOW_HTTP=true "
                     "and VLMQ_WEBHOOK_ALLOWED_NETWORKS='[\"127.0.0.1/32\"]')")
    if flower_port:
        auth = json.loads(env.get("VLMQ_FLOWER_BASIC_AUTH") or "[]")
        lines.append(f"Flower   http://127.0.0.1:{flower_port}  (user:password {auth[0]})")
    print("\n" + "\n".join(lines), flush=True)
    print(f"\nready: a job submitted now runs at once, e.g.\n"
          f"  curl -s -H \"Authorization: Bearer $VLMQ_API_KEY\" -F image=@examples/cat.png "
          f"-F prompt='What is in this picture?' {base}/v1/jobs\n"
          "Ctrl-C stops everything.", flush=True)
