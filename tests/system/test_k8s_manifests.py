"""The Kubernetes manifests (deploy/k8s), checked without a cluster.

`kubectl kustomize` renders the base and the example overlay; every built-in object is
validated, strictly (an unknown field fails), against the schemas of one Kubernetes release
that kubernetes-validate bundles, and KEDA's objects against the CRDs kept in
deploy/k8s/schemas. Then the wiring that no schema sees: settings that vlmq really reads,
Secrets and keys that exist, probes on routes the API serves, a worker's grace period that
outlasts its shutdown, KEDA aimed at real Deployments and allowed to reach zero, a model
accepted by the API while it has no worker, no secret written into a manifest, and only
the API and Flower open to the world. Each check returns what is wrong, and the last tests
corrupt a render in memory to prove that each one notices.
"""

from __future__ import annotations

import base64
import copy
import functools
import json
import os
import shutil
import subprocess
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from unittest import mock

import jsonschema
import kubernetes_validate
import pytest
import yaml

from shared import home
from shared.settings import Settings

ROOT = Path(__file__).resolve().parents[2]
K8S = ROOT / "deploy" / "k8s"
BASE = K8S / "base"
OVERLAY = K8S / "overlays" / "example"
SCHEMAS = K8S / "schemas"

# The oldest release still widely run that has every API version used here (autoscaling/v2,
# policy/v1, batch/v1 ttlSecondsAfterFinished); kubernetes-validate bundles its schemas.
KUBERNETES_VERSION = "1.30.0"

# After VLMQ_SHUTDOWN_GRACE_SECONDS a worker aborts what it still holds and waits up to 10 s
# for those jobs to be handed back (worker/app.py), then releases the engine: the pod's grace
# period must cover all of it, or SIGKILL leaves jobs to lapse with their leases.
SHUTDOWN_MARGIN_SECONDS = 30

PLACEHOLDER = "REPLACE_ME"

Obj = dict[str, Any]


# --- rendering ---------------------------------------------------------------------------

def kubectl_or_skip() -> str:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed: these checks render deploy/k8s with "
                    "`kubectl kustomize` (the kubectl client alone is enough, no cluster)")
    return kubectl


@functools.cache
def _rendered(path: Path) -> str:
    done = subprocess.run([kubectl_or_skip(), "kustomize", str(path)], capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, f"kubectl kustomize {path} failed:\n{done.stderr}"
    return done.stdout


def render(path: Path) -> list[Obj]:
    """The objects of a kustomization, fresh each call (tests may change them)."""
    return [o for o in yaml.safe_load_all(_rendered(path)) if o]


@pytest.fixture(scope="module", params=[BASE, OVERLAY], ids=["base", "overlay"])
def objects(request: pytest.FixtureRequest) -> list[Obj]:
    return render(request.param)


@pytest.fixture(scope="module")
def overlay() -> list[Obj]:
    return render(OVERLAY)


# --- reading a render --------------------------------------------------------------------

def workloads(objects: list[Obj]) -> Iterator[Obj]:
    return (o for o in objects if o["kind"] in ("Deployment", "Job"))


def pod_spec(workload: Obj) -> Obj:
    return workload["spec"]["template"]["spec"]


def containers(workload: Obj) -> list[Obj]:
    spec = pod_spec(workload)
    return [*spec.get("initContainers", []), *spec["containers"]]


def component(workload: Obj) -> str:
    return workload["spec"]["template"]["metadata"]["labels"]["app.kubernetes.io/component"]


def named(objects: list[Obj], kind: str) -> dict[str, Obj]:
    return {o["metadata"]["name"]: o for o in objects if o["kind"] == kind}


def secret_data(secret: Obj) -> dict[str, str]:
    data = {k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()}
    return {**data, **secret.get("stringData", {})}


def literal_env(objects: list[Obj], container: Obj) -> dict[str, str]:
    """What the container's environment holds that the render itself says (ConfigMaps by
    envFrom, then literal env, which wins), for parsing as vlmq would."""
    maps = named(objects, "ConfigMap")
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] in maps:
            env.update(maps[source["configMapRef"]["name"]].get("data", {}))
    for var in container.get("env", []):
        if "value" in var:
            env[var["name"]] = var["value"]
        else:
            env.pop(var["name"], None)
    return env


def env_names(objects: list[Obj], container: Obj) -> set[str]:
    maps, secrets = named(objects, "ConfigMap"), named(objects, "Secret")
    names = {var["name"] for var in container.get("env", [])}
    for source in container.get("envFrom", []):
        if "configMapRef" in source and source["configMapRef"]["name"] in maps:
            names |= set(maps[source["configMapRef"]["name"]].get("data", {}))
        if "secretRef" in source and source["secretRef"]["name"] in secrets:
            names |= set(secret_data(secrets[source["secretRef"]["name"]]))
    return names


def settings_of(objects: list[Obj], container: Obj) -> Settings:
    """The settings the container would run with, secrets aside (none of these read them)."""
    with mock.patch.dict(os.environ, literal_env(objects, container), clear=True):
        return Settings()


def workers(objects: list[Obj]) -> list[Obj]:
    return [o for o in objects if o["kind"] == "Deployment"
            and pod_spec(o)["containers"][0]["command"][:2] == ["vlmq", "worker"]]


def container_running(objects: list[Obj], command: str) -> list[Obj]:
    return [c for w in workloads(objects) for c in containers(w)
            if c.get("command", [])[:2] == ["vlmq", command]]


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    if any(labels.get(k) != v for k, v in selector.get("matchLabels", {}).items()):
        return False
    for expr in selector.get("matchExpressions", []):
        present = expr["key"] in labels
        value = labels.get(expr["key"])
        ok = {"In": present and value in expr.get("values", []),
              "NotIn": not present or value not in expr.get("values", []),
              "Exists": present, "DoesNotExist": not present}[expr["operator"]]
        if not ok:
            return False
    return True


def valid_setting_names() -> set[str]:
    """Every variable vlmq reads: each field of Settings (every section's, by inheritance)
    under its env prefix, plus VLMQ_HOME, which the embedded setup reads itself."""
    config = Settings.model_config
    assert not config.get("env_nested_delimiter"), "nested sections: extend this mapping"
    prefix = config.get("env_prefix", "")
    names = set()
    for name, field in Settings.model_fields.items():
        alias = field.validation_alias or field.alias
        names.add(alias if isinstance(alias, str) else f"{prefix}{name}".upper())
    return names | {home.HOME_VARIABLE}


@functools.cache
def api_routes() -> frozenset[str]:
    from api.app import create_app

    return frozenset(getattr(r, "path", "") for r in create_app(Settings()).routes)


# --- the checks: each returns what is wrong ----------------------------------------------

def builtin_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for o in objects:
        if o["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(o, KUBERNETES_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            where = "/".join(str(p) for p in exc.absolute_path)
            problems.append(f"{o['kind']} {o['metadata']['name']}: {where}: {exc.message}")
    return problems


def _strict(schema: Any) -> Any:
    """The CRD schema with unknown fields refused where the API server would prune them."""
    if isinstance(schema, list):
        return [_strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {k: _strict(v) for k, v in schema.items()}
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


@functools.cache
def crd_schemas() -> dict[tuple[str, str], Obj]:
    schemas = {}
    for path in SCHEMAS.glob("*.yaml"):
        for crd in yaml.safe_load_all(path.read_text()):
            if not crd:
                continue
            for version in crd["spec"]["versions"]:
                key = (f"{crd['spec']['group']}/{version['name']}", crd["spec"]["names"]["kind"])
                schemas[key] = _strict(version["schema"]["openAPIV3Schema"])
    return schemas


def crd_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for o in objects:
        if not o["apiVersion"].startswith("keda.sh/"):
            continue
        schema = crd_schemas().get((o["apiVersion"], o["kind"]))
        if schema is None:
            problems.append(f"{o['kind']} {o['apiVersion']}: no CRD schema in {SCHEMAS}")
            continue
        for error in jsonschema.Draft7Validator(schema).iter_errors(o):
            where = "/".join(str(p) for p in error.absolute_path)
            problems.append(f"{o['kind']} {o['metadata']['name']}: {where}: {error.message}")
    return problems


def setting_name_problems(objects: list[Obj]) -> list[str]:
    valid = valid_setting_names()
    return [f"{w['metadata']['name']}/{c['name']}: {name} is not a vlmq setting"
            for w in workloads(objects) for c in containers(w)
            for name in sorted(env_names(objects, c))
            if name.startswith("VLMQ_") and name not in valid]


def reference_problems(objects: list[Obj]) -> list[str]:
    """Every Secret and ConfigMap a pod or KEDA names exists, with the key it names."""
    secrets, maps = named(objects, "Secret"), named(objects, "ConfigMap")
    problems = []

    def need(kind: str, found: dict[str, Obj], name: str, key: str | None, who: str) -> None:
        if name not in found:
            problems.append(f"{who}: no {kind} {name}")
        elif key is not None:
            keys = secret_data(found[name]) if kind == "Secret" else found[name].get("data", {})
            if key not in keys:
                problems.append(f"{who}: {kind} {name} has no key {key}")

    for w in workloads(objects):
        for c in containers(w):
            who = f"{w['metadata']['name']}/{c['name']}"
            for var in c.get("env", []):
                source = var.get("valueFrom", {})
                if "secretKeyRef" in source:
                    ref = source["secretKeyRef"]
                    need("Secret", secrets, ref["name"], ref["key"], f"{who} {var['name']}")
                if "configMapKeyRef" in source:
                    ref = source["configMapKeyRef"]
                    need("ConfigMap", maps, ref["name"], ref["key"], f"{who} {var['name']}")
            for source in c.get("envFrom", []):
                if "secretRef" in source:
                    need("Secret", secrets, source["secretRef"]["name"], None, who)
                if "configMapRef" in source:
                    need("ConfigMap", maps, source["configMapRef"]["name"], None, who)
    for auth in named(objects, "TriggerAuthentication").values():
        for ref in auth["spec"].get("secretTargetRef", []):
            need("Secret", secrets, ref["name"], ref["key"],
                 f"TriggerAuthentication {auth['metadata']['name']}")
    return problems


def probe_problems(objects: list[Obj]) -> list[str]:
    problems = []
    api = container_running(objects, "api")
    if not api:
        return ["no container runs `vlmq api`"]
    for c in api:
        ports = {p.get("name") for p in c.get("ports", [])} | {
            p["containerPort"] for p in c.get("ports", [])}
        for kind, path in (("readinessProbe", "/readyz"), ("livenessProbe", "/healthz")):
            get = c.get(kind, {}).get("httpGet")
            if get is None or get["path"] != path:
                problems.append(f"api {kind}: not an HTTP GET of {path}")
        for kind in ("startupProbe", "readinessProbe", "livenessProbe"):
            get = c.get(kind, {}).get("httpGet")
            if get is None:
                continue
            if get["path"] not in api_routes():
                problems.append(f"api {kind}: the API serves no route {get['path']}")
            if get["port"] not in ports:
                problems.append(f"api {kind}: port {get['port']} is not one of the container's")
    return problems


@functools.cache
def _image_entrypoint() -> bool:
    lines = (ROOT / "Dockerfile").read_text().splitlines()
    return any(line.strip().upper().startswith("ENTRYPOINT") for line in lines)


def worker_problems(objects: list[Obj]) -> list[str]:
    problems = []
    for w in workers(objects):
        name, spec = w["metadata"]["name"], pod_spec(w)
        c = spec["containers"][0]
        settings = settings_of(objects, c)
        grace = spec.get("terminationGracePeriodSeconds", 30)
        if grace < settings.shutdown_grace_seconds + SHUTDOWN_MARGIN_SECONDS:
            problems.append(f"{name}: terminationGracePeriodSeconds {grace} does not outlast "
                            f"VLMQ_SHUTDOWN_GRACE_SECONDS {settings.shutdown_grace_seconds} "
                            f"plus {SHUTDOWN_MARGIN_SECONDS} s to hand jobs back")
        resources = c.get("resources", {})
        # An extended resource's request, when given, must equal its limit.
        for part in ("limits", "requests"):
            gpus = resources.get(part, {}).get("nvidia.com/gpu")
            if str(gpus) != "1" and (part == "limits" or gpus is not None):
                problems.append(f"{name}: {part} nvidia.com/gpu is {gpus}, not 1")
        # The hook signals PID 1, which is the worker only while nothing wraps the command:
        # `vlmq worker` execs it in place, and the image adds no entrypoint of its own.
        stop = " ".join(c.get("lifecycle", {}).get("preStop", {}).get("exec", {})
                        .get("command", []))
        if "kill -TERM 1" not in stop:
            problems.append(f"{name}: the preStop hook does not send SIGTERM to PID 1")
        if c["command"] != ["vlmq", "worker"] or _image_entrypoint():
            problems.append(f"{name}: the worker would not be the container's PID 1")
        if "MODEL_NAME" in json.dumps(w):
            problems.append(f"{name}: the worker unit's placeholder model is left in it")
        volumes = {v["name"]: v for v in spec.get("volumes", [])}
        held = [m for m in c.get("volumeMounts", [])
                if settings.model_path.startswith(m["mountPath"].rstrip("/") + "/")
                and "persistentVolumeClaim" in volumes.get(m["name"], {})]
        if not held:
            problems.append(f"{name}: VLMQ_MODEL_PATH {settings.model_path} is on no mounted "
                            "PersistentVolumeClaim")
    return problems


def scaling_problems(objects: list[Obj]) -> list[str]:
    problems = []
    deployments, auths = named(objects, "Deployment"), named(objects, "TriggerAuthentication")
    targeted: list[str] = []
    for so in named(objects, "ScaledObject").values():
        name, spec = so["metadata"]["name"], so["spec"]
        ref = spec["scaleTargetRef"]
        target = deployments.get(ref["name"])
        if ref.get("kind", "Deployment") != "Deployment" or target is None:
            problems.append(f"{name}: scaleTargetRef names no Deployment of the render")
            continue
        targeted.append(ref["name"])
        if target not in workers(objects):
            problems.append(f"{name}: scales {ref['name']}, which is not a GPU worker")
            continue
        if spec.get("minReplicaCount") != 0:
            problems.append(f"{name}: minReplicaCount is {spec.get('minReplicaCount')}, not 0")
        if not spec.get("maxReplicaCount", 0) >= 1:
            problems.append(f"{name}: no maxReplicaCount cap")
        if "cooldownPeriod" not in spec:
            problems.append(f"{name}: no cooldownPeriod")
        settings = settings_of(objects, pod_spec(target)["containers"][0])
        triggers = spec["triggers"]
        if [t["type"] for t in triggers] != ["postgresql"]:
            problems.append(f"{name}: not one postgresql trigger")
            continue
        trigger = triggers[0]
        query = trigger["metadata"].get("query", "")
        for part in (f"model = '{settings.model}'", "'queued'", "'running'"):
            if part not in query:
                problems.append(f"{name}: the query lacks {part}")
        # One worker's share of the backlog is the jobs it holds at once.
        target = trigger["metadata"].get("targetQueryValue", "0")
        if float(target) != settings.in_flight_limit:
            problems.append(f"{name}: targetQueryValue {target} is not the worker's in-flight "
                            f"limit {settings.in_flight_limit}")
        if trigger.get("authenticationRef", {}).get("name") not in auths:
            problems.append(f"{name}: its authenticationRef names no TriggerAuthentication")
    for w in workers(objects):
        if targeted.count(w["metadata"]["name"]) != 1:
            problems.append(f"{w['metadata']['name']}: scaled by "
                            f"{targeted.count(w['metadata']['name'])} ScaledObjects, not 1")
    return problems


def accepted_model_problems(objects: list[Obj]) -> list[str]:
    """The API and the control process (batch lines) take jobs for every deployed model
    while KEDA holds its workers at zero."""
    models = {settings_of(objects, pod_spec(w)["containers"][0]).model for w in workers(objects)}
    problems = []
    for command in ("api", "control"):
        for c in container_running(objects, command):
            settings = settings_of(objects, c)
            missing = models - {settings.model, *settings.accepted_models}
            if missing:
                problems.append(f"vlmq {command} would refuse jobs for {sorted(missing)} while "
                                "they have no live worker: add them to VLMQ_ACCEPTED_MODELS")
    return problems


def inline_secret_problems(objects: list[Obj]) -> list[str]:
    secrets = [secret_data(s) for s in named(objects, "Secret").values()]
    keys = {k for s in secrets for k in s}
    values = {v for s in secrets for v in s.values() if len(v) >= 8}
    problems = []
    for w in workloads(objects):
        for c in containers(w):
            for var in c.get("env", []):
                if "value" in var and (var["name"] in keys or var["value"] in values):
                    problems.append(f"{w['metadata']['name']}/{c['name']}: {var['name']} is "
                                    "written into the manifest, not read from the Secret")
    for name, cm in named(objects, "ConfigMap").items():
        for key, value in cm.get("data", {}).items():
            if key in keys or value in values:
                problems.append(f"ConfigMap {name}: {key} belongs in the Secret")
    return problems


def network_problems(objects: list[Obj]) -> list[str]:
    """Ingress is denied by default; only the API's and Flower's HTTP ports are open to all;
    metrics ports take Prometheus's namespace alone; egress is not restricted."""
    pods = {component(w): w["spec"]["template"]["metadata"]["labels"] for w in workloads(objects)}
    policies = list(named(objects, "NetworkPolicy").values())
    problems = []
    if not any(p["spec"]["podSelector"] == {} and "ingress" not in p["spec"]
               and "Ingress" in p["spec"].get("policyTypes", []) for p in policies):
        problems.append("no default-deny ingress policy over every pod")
    open_to_all: set[str] = set()
    for p in policies:
        name, spec = p["metadata"]["name"], p["spec"]
        if "Egress" in spec.get("policyTypes", []):
            problems.append(f"{name}: restricts egress, but the stores are outside the cluster")
        chosen = {comp for comp, labels in pods.items() if selects(spec["podSelector"], labels)}
        for rule in spec.get("ingress", []):
            ports = {str(port.get("port")) for port in rule.get("ports", [])} or {"every port"}
            peers = rule.get("from", [])
            scoped = bool(peers) and all(
                peer.get("namespaceSelector", {}).get("matchLabels")
                and peer.get("podSelector", {}).get("matchLabels") for peer in peers)
            if scoped:
                if ports != {"metrics"}:
                    problems.append(f"{name}: scoped ingress to {sorted(ports)}, not metrics")
                continue
            if not chosen <= {"api", "flower"}:
                problems.append(f"{name}: opens {sorted(chosen - {'api', 'flower'})} to all")
            if ports != {"http"}:
                problems.append(f"{name}: opens {sorted(ports)} to all, not the HTTP port")
            open_to_all |= chosen
    if open_to_all != {"api", "flower"}:
        problems.append(f"open to all: {sorted(open_to_all)}, not the API and Flower")
    return problems


def disruption_problems(objects: list[Obj]) -> list[str]:
    budgets = list(named(objects, "PodDisruptionBudget").values())

    def budgets_of(workload: Obj) -> list[Obj]:
        labels = workload["spec"]["template"]["metadata"]["labels"]
        return [b for b in budgets if selects(b["spec"]["selector"], labels)]

    problems = []
    for w in (d for d in workloads(objects) if component(d) == "api"):
        if not budgets_of(w):
            problems.append(f"{w['metadata']['name']}: no PodDisruptionBudget")
    for w in workers(objects):
        if [b["spec"].get("maxUnavailable") for b in budgets_of(w)] != [1]:
            problems.append(f"{w['metadata']['name']}: not one budget of maxUnavailable 1")
    return problems


CHECKS: dict[str, Callable[[list[Obj]], list[str]]] = {
    "kubernetes schemas": builtin_problems,
    "KEDA schemas": crd_problems,
    "setting names": setting_name_problems,
    "references": reference_problems,
    "probes": probe_problems,
    "workers": worker_problems,
    "scaling": scaling_problems,
    "accepted models": accepted_model_problems,
    "inline secrets": inline_secret_problems,
    "network": network_problems,
    "disruption": disruption_problems,
}


# --- the tests ---------------------------------------------------------------------------

@pytest.mark.parametrize("check", [c for c in CHECKS if c not in
                                   ("references", "accepted models", "inline secrets")])
def test_base_and_overlay(objects: list[Obj], check: str) -> None:
    assert CHECKS[check](objects) == []


@pytest.mark.parametrize("check", ["references", "accepted models", "inline secrets"])
def test_overlay(overlay: list[Obj], check: str) -> None:
    # The base names the Secret without defining it, and deploys one model: these hold once
    # the overlay has generated the Secret and listed its models.
    assert CHECKS[check](overlay) == []


def test_the_overlay_deploys_two_models_each_scaled_by_keda(overlay: list[Obj]) -> None:
    models = sorted(settings_of(overlay, pod_spec(w)["containers"][0]).model
                    for w in workers(overlay))
    assert models == ["Qwen2-VL-2B-Instruct", "Qwen2.5-VL-7B-Instruct"]
    assert len(named(overlay, "ScaledObject")) == 2


def test_the_example_secret_holds_placeholders_only(overlay: list[Obj]) -> None:
    (secret,) = named(overlay, "Secret").values()
    data = secret_data(secret)
    assert data and all(PLACEHOLDER in value for value in data.values()), data


def test_the_api_scales_on_cpu(overlay: list[Obj]) -> None:
    (hpa,) = named(overlay, "HorizontalPodAutoscaler").values()
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"]["name"] in {
        name for name, d in named(overlay, "Deployment").items() if component(d) == "api"}
    assert [m["resource"]["name"] for m in hpa["spec"]["metrics"]] == ["cpu"]


# Each corruption is one mistake a person could make in the manifests; the check named with
# it must report it (and the untouched render passes the same check above).

def _worker(objs: list[Obj]) -> Obj:
    return pod_spec(workers(objs)[0])["containers"][0]


def _api(objs: list[Obj]) -> Obj:
    return container_running(objs, "api")[0]


def _misspell_setting(objs: list[Obj]) -> None:
    next(v for v in _worker(objs)["env"] if v["name"] == "VLMQ_MAX_IN_FLIGHT")["name"] = \
        "VLMQ_MAX_INFLIGHT"


def _unknown_container_field(objs: list[Obj]) -> None:
    _api(objs)["readinesProbe"] = _api(objs).pop("readinessProbe")


def _keda_typo(objs: list[Obj]) -> None:
    next(iter(named(objs, "ScaledObject").values()))["spec"]["minReplicas"] = 0


def _missing_secret_key(objs: list[Obj]) -> None:
    next(v for v in _api(objs)["env"] if v["name"] == "VLMQ_DATABASE_URL")[
        "valueFrom"]["secretKeyRef"]["key"] = "DATABASE_URL"


def _probe_elsewhere(objs: list[Obj]) -> None:
    _api(objs)["readinessProbe"]["httpGet"]["path"] = "/ready"


def _short_grace(objs: list[Obj]) -> None:
    pod_spec(workers(objs)[0])["terminationGracePeriodSeconds"] = 30


def _two_gpus(objs: list[Obj]) -> None:
    _worker(objs)["resources"]["limits"]["nvidia.com/gpu"] = 2


def _never_zero(objs: list[Obj]) -> None:
    next(iter(named(objs, "ScaledObject").values()))["spec"]["minReplicaCount"] = 1


def _target_gone(objs: list[Obj]) -> None:
    next(iter(named(objs, "ScaledObject").values()))["spec"]["scaleTargetRef"]["name"] = "nope"


def _unaccepted_model(objs: list[Obj]) -> None:
    data = named(objs, "ConfigMap")
    next(iter(data.values()))["data"]["VLMQ_ACCEPTED_MODELS"] = '["Qwen2-VL-2B-Instruct"]'


def _inline_secret(objs: list[Obj]) -> None:
    password = secret_data(next(iter(named(objs, "Secret").values())))["VLMQ_DATABASE_URL"]
    var = next(v for v in _api(objs)["env"] if v["name"] == "VLMQ_DATABASE_URL")
    var.pop("valueFrom")
    var["value"] = password


def _open_worker(objs: list[Obj]) -> None:
    policy = named(objs, "NetworkPolicy")["vlmq-metrics-scrape"]
    policy["spec"]["ingress"].append({"ports": [{"port": "metrics"}]})


def _no_worker_budget(objs: list[Obj]) -> None:
    for budget in list(named(objs, "PodDisruptionBudget").values()):
        if budget["spec"]["selector"]["matchLabels"].get("app.kubernetes.io/component") == "worker":
            objs.remove(budget)


CORRUPTIONS = [
    ("setting names", _misspell_setting),
    ("kubernetes schemas", _unknown_container_field),
    ("KEDA schemas", _keda_typo),
    ("references", _missing_secret_key),
    ("probes", _probe_elsewhere),
    ("workers", _short_grace),
    ("workers", _two_gpus),
    ("scaling", _never_zero),
    ("scaling", _target_gone),
    ("accepted models", _unaccepted_model),
    ("inline secrets", _inline_secret),
    ("network", _open_worker),
    ("disruption", _no_worker_budget),
]


@pytest.mark.parametrize(("check", "corrupt"), CORRUPTIONS,
                         ids=[c.__name__.strip("_") for _, c in CORRUPTIONS])
def test_each_check_catches_a_mistake(
    overlay: list[Obj], check: str, corrupt: Callable[[list[Obj]], None]
) -> None:
    objs = copy.deepcopy(overlay)
    corrupt(objs)
    assert CHECKS[check](objs), f"the {check} check missed {corrupt.__name__}"
