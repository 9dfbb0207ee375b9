"""deploy/ and the Dockerfile agree with the code: they parse, and every port, path,
environment variable, file and name they use is one the gateway really has.

Nothing here builds an image or talks to a cluster: the files are parsed and compared
with the code (the admin routes of :func:`gateway.admin.create_admin_app`, the listeners
of each shipped gateway.yaml) and each shipped gateway.yaml passes ``gateway check``
with exactly the environment its deployment gives it.

``deploy/k8s/rules.yaml`` is generated from ``rules/``; regenerate it with
``.venv/bin/python -m tests.test_deploy``.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from gateway.admin import create_admin_app
from gateway.audit.broadcast import AuditBroadcaster
from gateway.config import Config, load_config, parse_listen

ROOT = Path(__file__).parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
COMPOSE = DEPLOY / "docker-compose.yaml"
SECRET = "s" * 40
K8S_RULES_HEADER = (
    "# The rule pack as a ConfigMap (mounted at /etc/gateway/rules). GENERATED from rules/\n"
    "# by `.venv/bin/python -m tests.test_deploy`: edit rules/, never this file.\n"
    "# In production the security team's pipeline does the same:\n"
    "#   kubectl create configmap gateway-rules --from-file=rules/ --dry-run=client -o yaml\n"
)


# --- what the code has ------------------------------------------------------------------


async def _no_reload() -> tuple[int, dict[str, Any]]:
    return 200, {}


def admin_paths() -> set[str]:
    """The admin listener's paths, from the application the gateway serves."""
    app = create_admin_app(
        token=None,
        metrics_body=lambda: b"",
        ready=lambda: (True, []),
        reload=_no_reload,
        audit_broadcast=AuditBroadcaster(),
    )
    return {r.resource.canonical for r in app.router.routes() if r.resource is not None}


def ports(cfg: Config) -> tuple[int, int]:
    """(listen port, admin port) of a configuration."""
    assert cfg.admin_listen is not None, "a deployed gateway needs its admin listener"
    return parse_listen(cfg.listen)[1], parse_listen(cfg.admin_listen)[1]


def needed_env(cfg: Config) -> set[str]:
    """The secrets a configuration reads from the environment."""
    names = {cfg.hash_key_env} if cfg.rules is not None else set()
    if cfg.admin_token_env:
        names.add(cfg.admin_token_env)
    if cfg.auth is not None:
        names |= {i.hmac_secret_env for i in cfg.auth.issuers if i.hmac_secret_env}
    return names


def check(config: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    """`gateway check` with exactly ``env`` (and PATH), as a deployment would run it."""
    return subprocess.run(
        [sys.executable, "-m", "gateway", "check", "-c", str(config)],
        env={"PATH": os.environ.get("PATH", ""), **env},
        capture_output=True,
        text=True,
        timeout=60,
        cwd=ROOT,
    )


def load_with(config: Path, env: dict[str, str]) -> Config:
    return load_config(config, env={**env})


# --- the Dockerfile ---------------------------------------------------------------------


def dockerfile() -> list[list[tuple[str, str]]]:
    """Stages of the Dockerfile, each a list of (INSTRUCTION, arguments)."""
    text = re.sub(r"\\\n", " ", (ROOT / "Dockerfile").read_text())
    stages: list[list[tuple[str, str]]] = []
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        op, _, rest = line.partition(" ")
        if op.upper() == "FROM":
            stages.append([])
        stages[-1].append((op.upper(), rest.strip()))
    return stages


def final_stage() -> dict[str, list[str]]:
    out: dict[str, list[str]] = {}
    for op, rest in dockerfile()[-1]:
        out.setdefault(op, []).append(rest)
    return out


def image_env() -> dict[str, str]:
    env: dict[str, str] = {}
    for rest in final_stage()["ENV"]:
        for part in shlex.split(rest):
            k, _, v = part.partition("=")
            env[k] = v
    return env


def image_copies() -> dict[str, str]:
    """Destination (absolute) -> source of the final stage's COPY from the context."""
    workdir, out = "/", {}
    for op, rest in dockerfile()[-1]:
        if op == "WORKDIR":
            workdir = rest
        if op == "COPY" and not rest.startswith("--from"):
            src, dst = rest.split()
            out[os.path.normpath(os.path.join(workdir, dst))] = src
    return out


def image_config() -> tuple[Path, str]:
    """The gateway.yaml the image serves by default: (source in the repo, path in the image)."""
    cmd = json.loads(final_stage()["CMD"][0])
    in_image = cmd[cmd.index("-c") + 1]
    return ROOT / image_copies()[in_image], in_image


def test_dockerfile_is_slim_non_root_and_checks_health() -> None:
    stage = final_stage()
    assert "slim" in stage["FROM"][0]
    uid = stage["USER"][-1].split(":")[0]
    assert uid.isdigit() and int(uid) > 0, "a numeric non-root user (runAsNonRoot can verify it)"
    assert json.loads(stage["ENTRYPOINT"][0]) == ["gateway"]
    config, _ = image_config()
    cfg = load_with(config, {"GATEWAY_RULES": str(ROOT / "rules")})
    listen, admin = ports(cfg)
    assert {str(listen), str(admin)} <= set(stage["EXPOSE"][0].split())
    health = stage["HEALTHCHECK"][0]
    url = re.search(r"http://127\.0\.0\.1:(\d+)(/\w+)", health)
    assert url is not None, health
    assert int(url.group(1)) == admin and url.group(2) == "/healthz"
    assert url.group(2) in admin_paths()
    # Single process or supervisor: the admin listener answers on the container's loopback.
    assert parse_listen(cfg.admin_listen or "")[0] in ("127.0.0.1", "0.0.0.0")


def test_dockerfile_copies_what_exists_and_the_rules_it_points_at() -> None:
    for src in image_copies().values():
        assert (ROOT / src).exists(), src
    rules_in_image = image_env()["GATEWAY_RULES"]
    assert image_copies()[rules_in_image] == "rules"
    ignored = (ROOT / ".dockerignore").read_text().split()
    assert {".git", ".venv"} <= set(ignored)
    assert not {"gateway", "rules", "deploy", "pyproject.toml", "README.md"} & set(ignored)


def test_image_default_config_checks() -> None:
    config, _ = image_config()
    env = {"GATEWAY_RULES": str(ROOT / "rules")}
    env |= {name: SECRET for name in needed_env(load_with(config, env))}
    result = check(config, env)
    assert result.returncode == 0, result.stderr
    # The documented reference also checks as `make check` runs it (rules relative to it).
    result = check(DEPLOY / "gateway.yaml", {"GATEWAY_HASH_KEY": SECRET})
    assert result.returncode == 0, result.stderr


# --- docker compose ---------------------------------------------------------------------

_COMPOSE_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?:(:-|:\?)([^}]*))?\}")


def compose_value(value: str) -> str:
    """Compose's interpolation with nothing set: defaults apply, required ones get a secret."""

    def sub(m: re.Match[str]) -> str:
        if m.group(2) == ":-":
            return m.group(3)
        return SECRET

    return _COMPOSE_VAR.sub(sub, value)


def compose() -> dict[str, Any]:
    doc: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return doc


def compose_gateways() -> dict[str, dict[str, Any]]:
    """The gateway services: those running the image's default command."""
    return {
        name: svc
        for name, svc in compose()["services"].items()
        if svc.get("image") == "clearance-gateway:local" and "entrypoint" not in svc
    }


def mounts(svc: dict[str, Any]) -> dict[str, Path]:
    """Container path -> path in the repository, for the service's bind mounts."""
    out = {}
    for volume in svc.get("volumes", []):
        src, dst = volume.split(":")[:2]
        out[dst] = (DEPLOY / src).resolve()
    return out


def compose_gateway_config(svc: dict[str, Any]) -> tuple[Path, dict[str, str]]:
    """The service's gateway.yaml (what the image's CMD reads) and its environment."""
    _, in_image = image_config()
    config = mounts(svc)[in_image]
    env = {k: compose_value(str(v)) for k, v in svc["environment"].items()}
    env["GATEWAY_RULES"] = str(ROOT / "rules")  # the image's /etc/gateway/rules
    return config, env


def test_compose_runs_two_gateways_redis_the_demo_upstream_prometheus_and_grafana() -> None:
    services = compose()["services"]
    gateways = compose_gateways()
    assert len(gateways) == 2
    assert set(services) == {*gateways, "legacy", "redis", "prometheus", "grafana"}
    entry = services["legacy"]["entrypoint"]
    assert entry[:3] == ["python", "-m", "gateway.demo.upstream"]
    published = set()
    for svc in gateways.values():
        config, env = compose_gateway_config(svc)
        cfg = load_with(config, env)
        listen, _ = ports(cfg)
        for mapping in svc["ports"]:
            host, container = mapping.split(":")
            assert int(container) == listen
            published.add(host)
        # The upstream and the state backend are services of this file.
        upstream = next(iter(cfg.upstreams.values())).url
        assert upstream == f"http://legacy:{entry[entry.index('--port') + 1]}"
        assert cfg.state.redis is not None and cfg.state.redis.startswith("redis://redis:")
        assert {"legacy", "redis"} <= set(svc["depends_on"])
        if cfg.workers > 1 and svc.get("read_only"):
            assert "/tmp" in svc["tmpfs"], "workers keep metrics files and sockets in /tmp"
    assert len(published) == 2


def test_compose_gateway_config_checks() -> None:
    for svc in compose_gateways().values():
        config, env = compose_gateway_config(svc)
        assert needed_env(load_with(config, env)) <= set(svc["environment"])
        result = check(config, env)
        assert result.returncode == 0, result.stderr


def test_prometheus_scrapes_every_compose_gateway_on_its_admin_listener() -> None:
    prom = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text())
    (job,) = [j for j in prom["scrape_configs"] if j["job_name"] == "gateway"]
    assert job["metrics_path"] == "/metrics" and "/metrics" in admin_paths()
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    expected = set()
    for name, svc in compose_gateways().items():
        config, env = compose_gateway_config(svc)
        expected.add(f"{name}:{ports(load_with(config, env))[1]}")
    assert targets == expected
    # The compose file mounts the rule files next to prometheus.yml, as rule_files says.
    prom_mounts = mounts(compose()["services"]["prometheus"])
    assert prom_mounts["/etc/prometheus/prometheus.yml"] == DEPLOY / "prometheus/prometheus.yml"
    for rule_file in prom["rule_files"]:
        assert (DEPLOY / "prometheus" / rule_file).is_file()
        assert f"/etc/prometheus/{rule_file}" in prom_mounts


def test_grafana_is_provisioned_with_prometheus_and_the_dashboard() -> None:
    services = compose()["services"]
    grafana = mounts(services["grafana"])
    prov = grafana["/etc/grafana/provisioning"]
    (ds,) = yaml.safe_load((prov / "datasources" / "prometheus.yaml").read_text())["datasources"]
    # Prometheus listens on 9090 inside its container (published elsewhere on the host).
    assert ds["url"] == "http://prometheus:9090"
    assert any(p.endswith(":9090") for p in services["prometheus"]["ports"])
    (provider,) = yaml.safe_load((prov / "dashboards" / "gateway.yaml").read_text())["providers"]
    dashboards = [dst for dst, src in grafana.items() if src.suffix == ".json"]
    assert dashboards and all(
        Path(d).parent == Path(provider["options"]["path"]) for d in dashboards
    )
    assert json.loads((DEPLOY / "grafana" / "dashboard.json").read_text())["panels"]


# --- Kubernetes -------------------------------------------------------------------------


def k8s() -> dict[str, dict[str, Any]]:
    """Every manifest kustomization.yaml lists, by kind (one of each, ConfigMaps by name)."""
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text())
    out: dict[str, dict[str, Any]] = {}
    for name in kustomization["resources"]:
        for doc in yaml.safe_load_all((K8S / name).read_text()):
            key = doc["kind"] if doc["kind"] != "ConfigMap" else doc["metadata"]["name"]
            assert key not in out, key
            out[key] = doc
    return out


def pod() -> dict[str, Any]:
    spec: dict[str, Any] = k8s()["Deployment"]["spec"]["template"]
    return spec


def container() -> dict[str, Any]:
    (c,) = pod()["spec"]["containers"]
    return dict(c)


def k8s_env() -> dict[str, str]:
    """The container's environment: every value comes from a Secret; the image adds ENV."""
    env = {}
    for e in container()["env"]:
        assert "value" not in e, f"{e['name']}: secrets come from secretKeyRef"
        assert e["valueFrom"]["secretKeyRef"]["name"] == "gateway-secrets"
        env[e["name"]] = SECRET
    return env


def k8s_config(tmp_path: Path) -> tuple[Path, Config]:
    """The ConfigMaps written out as the pod sees them: gateway.yaml and its rules."""
    manifests = k8s()
    mount = {m["name"]: m["mountPath"] for m in container()["volumeMounts"]}
    volumes = {v["name"]: v for v in pod()["spec"]["volumes"]}
    args = container()["args"]
    config_in_pod = Path(args[args.index("-c") + 1])
    (config_vol,) = [n for n, p in mount.items() if Path(p) == config_in_pod.parent]
    config_map = manifests[volumes[config_vol]["configMap"]["name"]]
    config = tmp_path / "config" / config_in_pod.name
    config.parent.mkdir()
    config.write_text(config_map["data"][config_in_pod.name], encoding="utf-8")
    rules_in_pod = image_env()["GATEWAY_RULES"]
    (rules_vol,) = [n for n, p in mount.items() if p == rules_in_pod]
    rules = tmp_path / "rules"
    rules.mkdir()
    for name, text in manifests[volumes[rules_vol]["configMap"]["name"]]["data"].items():
        (rules / name).write_text(text, encoding="utf-8")
    return config, load_with(config, {"GATEWAY_RULES": str(rules), **k8s_env()})


def test_kustomization_lists_every_manifest() -> None:
    listed = set(yaml.safe_load((K8S / "kustomization.yaml").read_text())["resources"])
    assert listed == {p.name for p in K8S.glob("*.yaml")} - {"kustomization.yaml"}
    kinds = {d["kind"] for d in k8s().values()}
    assert kinds == {
        "ConfigMap",
        "Deployment",
        "Service",
        "HorizontalPodAutoscaler",
        "PodDisruptionBudget",
        "NetworkPolicy",
    }
    assert not [d for d in k8s().values() if d["kind"] == "Secret"], "never ship secret values"


def test_kubernetes_config_checks_with_exactly_the_deployment_environment(
    tmp_path: Path,
) -> None:
    config, cfg = k8s_config(tmp_path)
    env = {"GATEWAY_RULES": str(tmp_path / "rules"), **k8s_env()}
    assert needed_env(cfg) == set(k8s_env())
    result = check(config, env)
    assert result.returncode == 0, result.stderr


def test_kubernetes_rules_configmap_is_the_rule_pack() -> None:
    assert k8s()["gateway-rules"]["data"] == rule_files(), (
        "deploy/k8s/rules.yaml is stale: run `.venv/bin/python -m tests.test_deploy`"
    )


def test_deployment_ports_probes_and_prometheus_match_the_code(tmp_path: Path) -> None:
    _, cfg = k8s_config(tmp_path)
    listen, admin = ports(cfg)
    c = container()
    named = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert named == {"http": listen, "admin": admin}
    paths = admin_paths()
    assert c["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "admin"}
    assert c["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "admin"}
    assert c["startupProbe"]["httpGet"]["path"] in paths
    annotations = pod()["metadata"]["annotations"]
    assert annotations["prometheus.io/port"] == str(admin)
    assert annotations["prometheus.io/path"] == "/metrics" and "/metrics" in paths
    assert parse_listen(cfg.admin_listen or "")[0] == "0.0.0.0"  # kubelet probes the pod IP


def test_deployment_resources_workers_security_and_drain(tmp_path: Path) -> None:
    _, cfg = k8s_config(tmp_path)
    c = container()
    res = c["resources"]
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(res[kind])
    assert cfg.workers == int(res["limits"]["cpu"]), "one worker per core the pod may use"
    spec = pod()["spec"]
    uid = int(final_stage()["USER"][-1].split(":")[0])
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["runAsUser"] == uid
    assert c["securityContext"]["readOnlyRootFilesystem"] is True
    if cfg.workers > 1:  # the supervisor's run directory (metrics, control sockets)
        assert "/tmp" in {m["mountPath"] for m in c["volumeMounts"]}
    pre_stop = c["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[0] == "sleep"
    assert spec["terminationGracePeriodSeconds"] > int(pre_stop[1]) + cfg.limits.shutdown_timeout


def test_service_hpa_pdb_and_network_policy_select_the_gateway_pods() -> None:
    m = k8s()
    labels = pod()["metadata"]["labels"]
    deployment = m["Deployment"]
    assert deployment["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert "replicas" not in deployment["spec"], "the HorizontalPodAutoscaler owns replicas"
    port_names = {p["name"] for p in container()["ports"]}

    service = m["Service"]["spec"]
    assert service["selector"].items() <= labels.items()
    assert {p["targetPort"] for p in service["ports"]} == {"http"}  # never the admin port

    hpa = m["HorizontalPodAutoscaler"]["spec"]
    target = hpa["scaleTargetRef"]
    assert (target["kind"], target["name"]) == ("Deployment", deployment["metadata"]["name"])
    assert hpa["minReplicas"] >= 2
    assert {x["resource"]["name"] for x in hpa["metrics"]} == {"cpu"}
    assert "cpu" in container()["resources"]["requests"]  # utilisation needs a request

    pdb = m["PodDisruptionBudget"]["spec"]
    assert pdb["selector"]["matchLabels"].items() <= labels.items()
    assert pdb["maxUnavailable"] < hpa["minReplicas"]

    netpol = m["NetworkPolicy"]["spec"]
    assert netpol["podSelector"]["matchLabels"].items() <= labels.items()
    rules = {p["port"]: r.get("from") for r in netpol["ingress"] for p in r["ports"]}
    assert set(rules) == port_names
    assert rules["http"] is None and rules["admin"], "the admin port is not open to all"


def test_kustomize_builds() -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl is not installed")
    out = subprocess.run(
        [kubectl, "kustomize", str(K8S)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    kinds = {d["kind"] for d in yaml.safe_load_all(out.stdout)}
    assert {"Deployment", "HorizontalPodAutoscaler", "PodDisruptionBudget"} <= kinds


# --- the rules ConfigMap ------------------------------------------------------------------


def rule_files() -> dict[str, str]:
    """What the gateway reads of rules/: the top-level YAML files (tests/ is not served)."""
    return {
        p.name: p.read_text(encoding="utf-8")
        for p in sorted((ROOT / "rules").iterdir())
        if p.is_file() and p.suffix in (".yaml", ".yml")
    }


def render_rules_configmap() -> str:
    lines = [
        K8S_RULES_HEADER.rstrip("\n"),
        "apiVersion: v1",
        "kind: ConfigMap",
        "metadata:",
        "  name: gateway-rules",
        "  labels: {app.kubernetes.io/name: clearance-gateway}",
        "data:",
    ]
    for name, text in rule_files().items():
        chomp = "" if text.endswith("\n") and not text.endswith("\n\n") else "+"
        if not text.endswith("\n"):
            chomp = "-"
        lines.append(f"  {name}: |2{chomp}")
        lines += [f"    {line}" if line else "" for line in text.splitlines()]
    out = "\n".join(lines) + "\n"
    assert yaml.safe_load(out)["data"] == rule_files(), "the rules do not round-trip"
    return out


if __name__ == "__main__":
    (K8S / "rules.yaml").write_text(render_rules_configmap(), encoding="utf-8")
    print(f"wrote {K8S / 'rules.yaml'}")
