"""Static checks of docker-compose.yml against the code it runs (no Docker needed).

Commands are checked against the real `vlmq` argparse parser and `VLMQ_*` variables against
the real Settings fields, so renaming a flag or a setting breaks this test, not a deployment.
"""

from __future__ import annotations

import argparse
import base64
import json
import re
import shlex
from pathlib import Path
from typing import Any

import pytest
import yaml

from shared.cli import _flower_auth_args, _parser
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = ROOT / "docker-compose.yml"
ENV_EXAMPLE = ROOT / ".env.example"

VLMQ_VAR = re.compile(r"\bVLMQ_[A-Za-z0-9_]+")
# ${NAME}, ${NAME:-default}, ${NAME-default}, ${NAME:?err}, ${NAME?err}
INTERPOLATION = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])([^}]*))?\}")
CONDITIONS = {"service_started", "service_healthy", "service_completed_successfully"}
# Names of variables that hold credentials. Not a bare AUTH or KEY: those would also match
# switches such as VLMQ_AUTH_DISABLED.
SECRETISH = re.compile(r"PASSWORD|SECRET|ACCESS_KEY|API_KEY|TOKEN|BASIC_AUTH")
# Only these face the network; everything else is reached over the compose network.
PUBLISHED = {"api", "flower"}
# The optional monitoring services publish on the host's loopback alone: Prometheus has no
# authentication and Grafana's admin account is one password.
LOOPBACK_PUBLISHED = {"prometheus", "grafana"}
# What a filled-in .env would give each required variable, in the shape its setting parses.
SAMPLE_SECRETS = {
    "VLMQ_WEBHOOK_SECRETS": json.dumps([f"whsec_{base64.b64encode(b'0' * 32).decode()}"]),
}


@pytest.fixture(scope="module")
def compose_text() -> str:
    return COMPOSE_FILE.read_text()


@pytest.fixture(scope="module")
def compose(compose_text: str) -> dict[str, Any]:
    # SafeLoader resolves anchors and `<<` merge keys the way Compose does.
    return yaml.safe_load(compose_text)


@pytest.fixture(scope="module")
def services(compose: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return compose["services"]


def interpolate(value: str) -> str:
    """What Compose substitutes when .env sets only the required variables: their sample
    values, and the defaults of the others."""

    def repl(m: re.Match[str]) -> str:
        name, op, arg = m.groups()
        if op and op.endswith("?"):
            return SAMPLE_SECRETS.get(name, f"sample-{name.lower()}")
        return arg if op and op.endswith("-") else ""

    return INTERPOLATION.sub(repl, value).replace("$$", "$")


def variables(value: object) -> set[str]:
    return {m.group(1) for m in INTERPOLATION.finditer(str(value))}


def raw_environment(service: dict[str, Any]) -> dict[str, str]:
    """A service's environment before interpolation."""
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


def env_example() -> dict[str, str]:
    entries = {}
    for line in ENV_EXAMPLE.read_text().splitlines():
        if line.strip() and not line.lstrip().startswith("#"):
            name, _, value = line.partition("=")
            entries[name.strip()] = value.strip()
    return entries


def as_argv(value: str | list[str] | None) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return shlex.split(value)
    return [str(v) for v in value]


def environment(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment") or {}
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): interpolate("" if v is None else str(v)) for k, v in env.items()}


def depends_on(service: dict[str, Any]) -> dict[str, str]:
    deps = service.get("depends_on") or {}
    if isinstance(deps, list):
        return {name: "service_started" for name in deps}
    return {name: (spec or {}).get("condition", "service_started") for name, spec in deps.items()}


def vlmq_commands(services: dict[str, dict[str, Any]]) -> dict[str, list[str]]:
    """Service name -> argv after `vlmq`, for every service whose command runs `vlmq`."""
    found = {}
    for name, svc in services.items():
        argv = as_argv(svc.get("entrypoint")) + as_argv(svc.get("command"))
        if argv and argv[0] == "vlmq":
            found[name] = argv[1:]
    return found


def subcommands() -> dict[str, argparse.ArgumentParser]:
    parser = _parser()
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return dict(action.choices)
    raise AssertionError("shared.cli._parser() defines no sub-commands")


def container_port(spec: str | int | dict[str, Any]) -> int:
    if isinstance(spec, dict):
        return int(spec["target"])
    return int(str(spec).split(":")[-1].split("/")[0])


def test_compose_file_parses(compose: dict[str, Any]) -> None:
    assert isinstance(compose.get("services"), dict) and compose["services"]


def test_vlmq_commands_use_real_subcommands_and_flags(services: dict[str, dict[str, Any]]) -> None:
    commands = vlmq_commands(services)
    # api, worker, control, flower and migrate all run the vlmq CLI; make sure the scan
    # found them.
    assert {"api", "worker", "control", "flower", "migrate"} <= commands.keys()
    choices = subcommands()
    for name, argv in commands.items():
        assert argv, f"service {name!r} runs `vlmq` with no sub-command"
        sub, rest = argv[0], argv[1:]
        assert sub in choices, f"service {name!r}: `vlmq {sub}` is not one of {sorted(choices)}"
        try:
            _, unknown = choices[sub].parse_known_args(rest)
        except SystemExit:
            pytest.fail(f"service {name!r}: `vlmq {' '.join(argv)}` is rejected by the CLI parser")
        assert not unknown, f"service {name!r}: `vlmq {sub}` does not accept {unknown}"


def test_every_vlmq_variable_is_a_settings_field(compose_text: str) -> None:
    # Scans the raw text so anchors, interpolations and commands are all covered.
    known = {f"VLMQ_{field.upper()}" for field in Settings.model_fields}
    used = set(VLMQ_VAR.findall(compose_text))
    assert used, "no VLMQ_* variables found in docker-compose.yml"
    unknown = sorted(v for v in used if v.upper() not in known)
    assert not unknown, f"not fields of shared.settings.Settings: {unknown}"


def test_each_service_environment_builds_valid_settings(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Values must parse too (e.g. VLMQ_ENGINE must be an EngineKind, VLMQ_MAX_MODEL_LEN an int).
    import os

    for name, svc in services.items():
        env = {k: v for k, v in environment(svc).items() if k.startswith("VLMQ_")}
        if not env:
            continue
        with monkeypatch.context() as mp:
            for key in [k for k in os.environ if k.upper().startswith("VLMQ_")]:
                mp.delenv(key)
            for key, value in env.items():
                mp.setenv(key, value)
            try:
                Settings(_env_file=None)
            except Exception as exc:
                pytest.fail(f"service {name!r}: its VLMQ_* values do not validate: {exc}")


def test_depends_on_targets_exist_and_are_ready_when_waited_on(
    services: dict[str, dict[str, Any]],
) -> None:
    for name, svc in services.items():
        for target, condition in depends_on(svc).items():
            assert target in services, f"service {name!r} depends on unknown service {target!r}"
            assert condition in CONDITIONS, f"{name!r} -> {target!r}: bad condition {condition!r}"
            if condition == "service_healthy":
                check = services[target].get("healthcheck")
                assert check and not check.get("disable") and check.get("test"), (
                    f"{name!r} waits for {target!r} to be healthy but it has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", (
                    f"{name!r} waits for one-shot {target!r} to finish, but it restarts"
                )


def test_servers_wait_for_migrations(services: dict[str, dict[str, Any]]) -> None:
    migrate = next(n for n, argv in vlmq_commands(services).items() if argv[:1] == ["migrate"])
    for name in ("api", "worker", "control"):
        assert depends_on(services[name]).get(migrate) == "service_completed_successfully", (
            f"{name!r} must wait for {migrate!r} with service_completed_successfully"
        )


def test_the_control_process_runs_batches_and_webhooks(
        services: dict[str, dict[str, Any]]) -> None:
    # Batch work runs only there (the API has no batch thread), so compose must run it.
    assert vlmq_commands(services)["control"][:1] == ["control"]
    assert not any(argv[:1] == ["webhooks"] for argv in vlmq_commands(services).values()), (
        "`vlmq webhooks` is the old name of `vlmq control`; run one control service"
    )


def test_worker_reserves_a_gpu_and_runs_vllm(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    devices = (
        worker.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices") or []
    )
    assert any(
        d.get("driver") == "nvidia" and "gpu" in d.get("capabilities", []) for d in devices
    ), "worker must reserve an nvidia GPU under deploy.resources.reservations.devices"
    env = environment(worker)
    assert env.get("VLMQ_ENGINE") == "vllm"


def test_worker_model_path_is_on_a_read_only_mount(services: dict[str, dict[str, Any]]) -> None:
    worker = services["worker"]
    model_path = environment(worker)["VLMQ_MODEL_PATH"]
    ro_targets = []
    for vol in worker.get("volumes", []):
        if isinstance(vol, dict):
            if vol.get("read_only"):
                ro_targets.append(vol["target"])
        else:
            parts = str(vol).split(":")
            if len(parts) == 3 and "ro" in parts[2].split(","):
                ro_targets.append(parts[1])
    assert any(
        model_path == t or model_path.startswith(t.rstrip("/") + "/") for t in ro_targets
    ), f"VLMQ_MODEL_PATH={model_path} is not inside a read-only volume ({ro_targets})"


def test_api_published_port_matches_its_port_flag(services: dict[str, dict[str, Any]]) -> None:
    api_argv = vlmq_commands(services)["api"]
    args, _ = subcommands()["api"].parse_known_args(api_argv[1:])
    assert args.port is not None, "the api command should pass --port explicitly"
    assert args.host == "0.0.0.0", "the api must listen on all interfaces inside the container"
    published = [container_port(p) for p in services["api"].get("ports", [])]
    assert args.port in published, f"api listens on {args.port} but publishes {published}"
    check = " ".join(as_argv(services["api"]["healthcheck"]["test"]))
    assert f":{args.port}/healthz" in check, "the api healthcheck should probe /healthz on its port"


def test_flower_published_port_matches_its_port_flag(services: dict[str, dict[str, Any]]) -> None:
    flower_argv = vlmq_commands(services)["flower"]
    args, _ = subcommands()["flower"].parse_known_args(flower_argv[1:])
    published = [container_port(p) for p in services["flower"].get("ports", [])]
    assert args.port in published, f"flower listens on {args.port} but publishes {published}"


def test_published_flower_and_scraped_metrics_listen_on_the_container_network(
    services: dict[str, dict[str, Any]],
) -> None:
    # vlmq binds loopback by default; inside a container that would reach nothing.
    flower_argv = vlmq_commands(services)["flower"]
    args, _ = subcommands()["flower"].parse_known_args(flower_argv[1:])
    assert args.host == "0.0.0.0", "flower's port is published, so it must listen on 0.0.0.0"
    for name, svc in services.items():
        env = environment(svc)
        for port_var in ("VLMQ_METRICS_PORT", "VLMQ_API_METRICS_PORT"):
            if env.get(port_var, "0") not in ("", "0"):
                assert env.get("VLMQ_METRICS_HOST") == "0.0.0.0", (
                    f"service {name!r} serves metrics for Prometheus on the compose network, "
                    "so it needs VLMQ_METRICS_HOST: 0.0.0.0"
                )


def test_built_services_have_a_dockerfile(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        build = svc.get("build")
        if build is None:
            continue
        if isinstance(build, str):
            build = {"context": build}
        context = (ROOT / build.get("context", ".")).resolve()
        dockerfile = context / build.get("dockerfile", "Dockerfile")
        assert dockerfile.is_file(), f"service {name!r} builds from missing {dockerfile}"


def test_only_the_api_and_flower_publish_ports(services: dict[str, dict[str, Any]]) -> None:
    for name in ("postgres", "redis", "minio", "worker"):
        assert name in services, f"expected a {name!r} service"
    published = {name for name, svc in services.items()
                 if svc.get("ports") and name not in LOOPBACK_PUBLISHED}
    assert published <= PUBLISHED, (
        f"{sorted(published - PUBLISHED)} publish ports; reach them over the compose network "
        "or publish them in a local docker-compose.override.yml"
    )
    for name in LOOPBACK_PUBLISHED:
        for spec in services.get(name, {}).get("ports", []):
            assert str(spec).startswith("127.0.0.1:"), f"{name!r} publishes {spec} beyond loopback"


def test_secrets_are_required_never_defaulted(compose_text: str) -> None:
    for m in INTERPOLATION.finditer(compose_text):
        name, op, message = m.groups()
        if SECRETISH.search(name) or name.startswith(("MINIO_ROOT_", "FLOWER_")):
            assert op == ":?", f"${{{name}}} must be ${{{name}:?...}}: no default, never empty"
            assert ".env.example" in message, f"${{{name}:?}} should say to fill in .env"


def test_no_literal_credentials(services: dict[str, dict[str, Any]]) -> None:
    for name, svc in services.items():
        for key, value in raw_environment(svc).items():
            if SECRETISH.search(key):
                literal = re.sub(r"[^A-Za-z0-9]", "", INTERPOLATION.sub("", value))
                required = all(m.group(2) == ":?" for m in INTERPOLATION.finditer(value))
                assert variables(value) and required and not literal, (
                    f"service {name!r}: {key} must come from .env, not {value!r}"
                )
            for url_password in re.findall(r"://[^:/@\s]+:([^@\s]+)@", value):
                m = INTERPOLATION.fullmatch(url_password)
                assert m and m.group(2) == ":?", (
                    f"service {name!r}: {key} has a literal or default password in its URL"
                )


def test_vlmq_uses_its_own_s3_account_not_minio_root(
    services: dict[str, dict[str, Any]],
) -> None:
    root = variables(raw_environment(services["minio"]).values())
    assert {"MINIO_ROOT_USER", "MINIO_ROOT_PASSWORD"} <= root
    app: set[str] = set()
    for name, svc in services.items():
        env = raw_environment(svc)
        for key in ("VLMQ_S3_ACCESS_KEY_ID", "VLMQ_S3_SECRET_ACCESS_KEY"):
            if key in env:
                assert not variables(env[key]) & root, f"service {name!r}: {key} is MinIO root's"
                app |= variables(env[key])
    assert len(app) == 2, f"the app account should be two variables of its own, not {app}"


def test_minio_init_grants_the_app_account_only_its_bucket(
    services: dict[str, dict[str, Any]],
) -> None:
    store_url = environment(services["api"])["VLMQ_STORE_URL"]
    bucket = store_url.removeprefix("s3://").split("/")[0]
    init = services["minio-init"]
    script = interpolate(" ".join(as_argv(init.get("command"))))
    app_key = environment(init)["VLMQ_S3_ACCESS_KEY_ID"]
    assert app_key == environment(services["api"])["VLMQ_S3_ACCESS_KEY_ID"]
    assert "mc admin user add" in script and "$VLMQ_S3_ACCESS_KEY_ID" in script
    assert re.search(r"mc admin policy attach local (\S+) --user \"\$VLMQ_S3_ACCESS_KEY_ID\"",
                     script)
    policy = json.loads(re.search(r"'(\{.*\})'", script).group(1))
    for statement in policy["Statement"]:
        assert statement["Effect"] == "Allow"
        for resource in statement["Resource"]:
            assert resource in (f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"), (
                f"the app policy reaches beyond bucket {bucket!r}: {resource}"
            )


def test_flower_runs_behind_basic_auth(
    services: dict[str, dict[str, Any]], monkeypatch: pytest.MonkeyPatch
) -> None:
    flower = services["flower"]
    assert "--no-auth" not in vlmq_commands(services)["flower"]
    monkeypatch.setenv("VLMQ_FLOWER_BASIC_AUTH", environment(flower)["VLMQ_FLOWER_BASIC_AUTH"])
    auth = _flower_auth_args(Settings(_env_file=None).flower_basic_auth, no_auth=False)
    assert auth == ["--basic-auth=sample-flower_user:sample-flower_password"]
    # Flower needs the broker only; database, storage and webhook secrets stay out of it.
    leaked = [k for k in environment(flower) if SECRETISH.search(k) and "FLOWER" not in k]
    assert not leaked and "VLMQ_DATABASE_URL" not in environment(flower), leaked


def test_env_example_lists_every_interpolated_variable(compose_text: str) -> None:
    listed = env_example()
    missing = sorted({m.group(1) for m in INTERPOLATION.finditer(compose_text)} - listed.keys())
    assert not missing, f"add these to .env.example: {missing}"
    filled = sorted(k for k, v in listed.items() if SECRETISH.search(k) and v)
    assert not filled, f".env.example must not ship values for {filled}"
    ignored = (ROOT / ".gitignore").read_text().splitlines()
    assert ".env" in ignored, ".env holds the secrets and must be git-ignored"


def test_only_the_worker_image_carries_the_engines(services: dict[str, dict[str, Any]]) -> None:
    dockerfile = (ROOT / "Dockerfile").read_text()
    assert re.search(r'^ARG EXTRAS=""$', dockerfile, re.M), "the default build must be the base"
    for name, svc in services.items():
        if "build" not in svc:
            continue
        extras = str((svc["build"].get("args") or {}).get("EXTRAS", "")).split(",")
        if name == "worker":
            assert "gpu" in extras, "the GPU worker builds with EXTRAS=gpu"
        else:
            assert not {"gpu", "worker"} & set(extras), f"{name!r} should not install the engines"
