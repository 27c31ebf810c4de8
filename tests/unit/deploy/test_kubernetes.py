"""deploy/kubernetes: each overlay rendered, every object valid against the Kubernetes API
schemas (kubernetes-validate, strict: unknown fields are errors), the ServiceMonitor against
its CRD, the ConfigMap's turnout.yaml accepted by `turnout check-config` with the
environment the Deployment gives it, and the pieces wired to each other (selectors, ports,
probes, drain, DNS discovery, Redis)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from urllib.parse import urlsplit

import jsonschema
import kubernetes_validate
import pytest
import yaml

from gateway.config import load_config
from tests.support import kustomize
from tests.support.image import stages
from tests.support.manifests import (
    K8S,
    OVERLAYS,
    Obj,
    container,
    container_env,
    one,
    pod_templates,
    render,
    selects,
    servicemonitor_schema,
)

# The oldest Kubernetes the manifests support (the preStop `sleep` action is on by
# default from 1.30) and the newest whose schemas kubernetes-validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())
SECRETS_EXAMPLE = K8S / "secrets.example.yaml"
TURNOUT = str(Path(sys.executable).with_name("turnout"))
# Stand-ins for the Secrets' values: long enough for keys, a valid URL where one is read.
DUMMY_URL = "rediss://:dummy-password@redis.example.internal:6380/0"


def _secret_values() -> dict[tuple[str, str], str]:
    values = {}
    for secret in yaml.safe_load_all(SECRETS_EXAMPLE.read_text()):
        for key in secret["stringData"]:
            name = secret["metadata"]["name"]
            values[name, key] = DUMMY_URL if key == "url" else f"dummy-{name}-{key}-0123456789"
    return values


def _gateway_env(objs: list[Obj]) -> dict[str, str]:
    return container_env(container(one(objs, "Deployment", "turnout"), "turnout"),
                         _secret_values())


def _config(objs: list[Obj], tmp_path: Path) -> Path:
    volumes = one(objs, "Deployment", "turnout")["spec"]["template"]["spec"]["volumes"]
    name = next(v["configMap"]["name"] for v in volumes if "configMap" in v)
    path = tmp_path / "turnout.yaml"
    path.write_text(one(objs, "ConfigMap", name)["data"]["turnout.yaml"])
    return path


def _check_config(path: Path, env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    # Only the Deployment's variables: none of the developer's keys leak in.
    return subprocess.run([TURNOUT, "check-config", str(path)],
                          env={"PATH": "/usr/bin:/bin", **env}, capture_output=True, text=True,
                          timeout=60, check=False)


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("overlay", OVERLAYS)
def test_objects_are_valid_kubernetes(overlay: str, version: str) -> None:
    checked, problems = 0, []
    for obj in render(overlay):
        if obj["apiVersion"].startswith("monitoring.coreos.com/"):
            continue  # not a core API: test_servicemonitor_matches_its_crd
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as err:
            problems.append(f"{obj['kind']}/{obj['metadata']['name']}: "
                            f"{'.'.join(map(str, err.path))}: {err.message}")
        checked += 1
    assert not problems, f"Kubernetes {version}:\n" + "\n".join(problems)
    assert checked >= 10


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_servicemonitor_matches_its_crd(overlay: str) -> None:
    monitor = one(render(overlay), "ServiceMonitor", "turnout")
    jsonschema.Draft7Validator(servicemonitor_schema()).validate(monitor)
    # The strict schema does refuse what the API server would: a misspelt field.
    monitor["spec"]["endpoints"][0]["intervall"] = "15s"
    with pytest.raises(jsonschema.ValidationError, match="intervall"):
        jsonschema.Draft7Validator(servicemonitor_schema()).validate(monitor)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlay_holds_the_whole_deployment(overlay: str) -> None:
    kinds = {(o["kind"], o["metadata"]["name"]) for o in render(overlay)}
    assert {("Deployment", "turnout"), ("Service", "turnout"), ("ServiceAccount", "turnout"),
            ("HorizontalPodAutoscaler", "turnout"), ("PodDisruptionBudget", "turnout"),
            ("NetworkPolicy", "turnout"), ("ServiceMonitor", "turnout"),
            ("Deployment", "vllm"), ("Service", "vllm")} <= kinds
    assert {o["metadata"]["namespace"] for o in render(overlay)} == {"turnout"}
    # Secrets are referenced, never rendered: their values live outside the repository.
    assert "Secret" not in {kind for kind, _ in kinds}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_configmap_config_passes_check_config(overlay: str, tmp_path: Path) -> None:
    objs = render(overlay)
    path = _config(objs, tmp_path)
    env = _gateway_env(objs)
    done = _check_config(path, env)
    assert done.returncode == 0, done.stderr
    assert ": ok (" in done.stdout
    # Every ${VAR} without a default is set by the Deployment (an unset one reads as "").
    wanted = set(re.findall(r"\$\{(\w+)\}", json.dumps(yaml.safe_load(path.read_text()))))
    assert wanted, "the config reads its secrets from the environment"
    assert wanted <= env.keys(), wanted - env.keys()
    # ... and check-config does read them: without the team key the config is refused.
    done = _check_config(path, {k: v for k, v in env.items() if k != "TURNOUT_PLATFORM_KEY"})
    assert done.returncode == 1 and "teams.0.keys.0.key" in done.stderr, done.stderr


def test_configmap_is_the_base_file_with_a_content_hash(tmp_path: Path) -> None:
    for overlay in OVERLAYS:
        objs = render(overlay)
        (cm,) = [o for o in objs if o["kind"] == "ConfigMap"]
        assert re.fullmatch(r"turnout-config-[a-z0-9]{10}", cm["metadata"]["name"])
        assert _config(objs, tmp_path).read_text() == (K8S / "base/turnout.yaml").read_text()


def test_secrets_example_names_every_referenced_key_and_holds_no_value() -> None:
    example = list(yaml.safe_load_all(SECRETS_EXAMPLE.read_text()))
    listed = set()
    for secret in example:
        kubernetes_validate.validate(secret, K8S_VERSIONS[-1], strict=True)
        assert set(secret["stringData"].values()) == {""}, secret["metadata"]["name"]
        listed |= {(secret["metadata"]["name"], key) for key in secret["stringData"]}
    referenced = set()
    for overlay in OVERLAYS:
        for template in pod_templates(render(overlay)):
            for c in template["spec"]["containers"]:
                for var in c.get("env", []):
                    ref = var.get("valueFrom", {}).get("secretKeyRef")
                    if ref:
                        referenced.add((ref["name"], ref["key"]))
    assert referenced == listed


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_probes_and_drain(overlay: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                          ) -> None:
    objs = render(overlay)
    for key, value in _gateway_env(objs).items():
        monkeypatch.setenv(key, value)
    server = load_config(_config(objs, tmp_path)).server
    drain = server.drain_timeout_s
    pod = one(objs, "Deployment", "turnout")["spec"]["template"]["spec"]
    gw = container(one(objs, "Deployment", "turnout"), "turnout")
    assert gw["ports"] == [{"name": "http", "containerPort": server.port},
                           {"name": "ops", "containerPort": server.ops_port}]
    assert gw["args"] == ["--config", "/etc/turnout/turnout.yaml", "--host", "0.0.0.0",
                          "--port", str(server.port)]
    # On the ops port: it stays open through a drain (the public one refuses new
    # connections from SIGTERM on), and its /readyz says 503 from the drain's start.
    probes = {kind: gw[kind]["httpGet"] for kind in
              ("startupProbe", "livenessProbe", "readinessProbe")}
    assert probes == {"startupProbe": {"path": "/healthz", "port": "ops"},
                      "livenessProbe": {"path": "/healthz", "port": "ops"},
                      "readinessProbe": {"path": "/readyz", "port": "ops"}}
    # SIGTERM comes after preStop; the drain then has drain_timeout_s, and the margin
    # covers giving leases back, flushing settlement and exiting before SIGKILL.
    pre_stop = gw["lifecycle"]["preStop"]["sleep"]["seconds"]
    margin = pod["terminationGracePeriodSeconds"] - pre_stop - drain
    assert 5 <= margin <= 15, margin
    # A draining pod is not restarted by its liveness probe before its drain ends.
    live = gw["livenessProbe"]
    assert live["periodSeconds"] * live["failureThreshold"] >= drain


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_cpu_request_is_one_per_worker(overlay: str, tmp_path: Path,
                                       monkeypatch: pytest.MonkeyPatch) -> None:
    objs = render(overlay)
    for key, value in _gateway_env(objs).items():
        monkeypatch.setenv(key, value)
    workers = load_config(_config(objs, tmp_path)).server.workers
    resources = container(one(objs, "Deployment", "turnout"), "turnout")["resources"]
    assert resources["requests"]["cpu"] == str(workers)
    assert "cpu" not in resources.get("limits", {})  # throttling would land on latency
    hpa = one(objs, "HorizontalPodAutoscaler", "turnout")
    assert hpa["spec"]["metrics"][0]["resource"]["name"] == "cpu"


def test_gateway_runs_as_the_image_user_on_a_read_only_root() -> None:
    _, found = stages()
    user = found[-1].last("USER")
    assert user is not None
    uid = int(user.value[0].split(":")[0])
    objs = render(OVERLAYS[0])
    deploy = one(objs, "Deployment", "turnout")
    pod = deploy["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == uid
    gw = container(deploy, "turnout")
    assert gw["securityContext"]["readOnlyRootFilesystem"] is True
    assert gw["securityContext"]["capabilities"]["drop"] == ["ALL"]
    # Where the workers' metric files go (tempfile's default folder).
    mounts = {m["mountPath"]: m["name"] for m in gw["volumeMounts"]}
    assert mounts["/etc/turnout"] == "config"
    tmp = next(v for v in pod["volumes"] if v["name"] == mounts["/tmp"])
    assert "emptyDir" in tmp


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_and_ports_wire_up(overlay: str) -> None:
    objs = render(overlay)
    templates = pod_templates(objs)

    def pods(selector: Obj) -> list[Obj]:
        return [t for t in templates if selects(selector, t["metadata"]["labels"])]

    for svc in (o for o in objs if o["kind"] == "Service"):
        (selected,) = pods({"matchLabels": svc["spec"]["selector"]})
        names = {p["name"] for c in selected["spec"]["containers"] for p in c.get("ports", [])}
        for port in svc["spec"]["ports"]:
            assert port["targetPort"] in names, (svc["metadata"]["name"], port)
    for policy in (o for o in objs if o["kind"] == "NetworkPolicy"):
        assert pods(policy["spec"]["podSelector"]), policy["metadata"]["name"]
        rules = policy["spec"].get("ingress", []) + policy["spec"].get("egress", [])
        for peer in (p for r in rules for p in r.get("from", []) + r.get("to", [])):
            if "podSelector" in peer and "namespaceSelector" not in peer:
                assert pods(peer["podSelector"]), peer

    deploy = one(objs, "Deployment", "turnout")
    hpa = one(objs, "HorizontalPodAutoscaler", "turnout")["spec"]
    assert hpa["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment",
                                     "name": "turnout"}
    assert "replicas" not in deploy["spec"]  # the autoscaler's, or apply would reset it
    pdb = one(objs, "PodDisruptionBudget", "turnout")["spec"]
    assert pods(pdb["selector"]) == [deploy["spec"]["template"]]
    assert pdb["maxUnavailable"] < hpa["minReplicas"]
    # The ops port (/metrics, /debug) is kept off the clients' Service: Prometheus finds it
    # through a Service of its own, and only the monitoring namespace may reach it.
    assert [p["targetPort"] for p in one(objs, "Service", "turnout")["spec"]["ports"]] == [
        "http"]
    monitor = one(objs, "ServiceMonitor", "turnout")["spec"]
    gateway_services = [o for o in objs if o["kind"] == "Service" and selects(
        {"matchLabels": o["spec"]["selector"]}, deploy["spec"]["template"]["metadata"]["labels"])]
    (scraped,) = [s for s in gateway_services if selects(monitor["selector"],
                                                        s["metadata"]["labels"])]
    assert scraped["metadata"]["name"] != "turnout"
    assert [(p["name"], p["targetPort"]) for p in scraped["spec"]["ports"]] == [("ops", "ops")]
    assert [(e["port"], e["path"]) for e in monitor["endpoints"]] == [("ops", "/metrics")]
    ingress = one(objs, "NetworkPolicy", "turnout")["spec"]["ingress"]
    by_port = {p["port"]: rule.get("from") for rule in ingress for p in rule["ports"]}
    assert by_port == {"http": None, "ops": [{"namespaceSelector": {"matchLabels": {
        "kubernetes.io/metadata.name": "monitoring"}}}]}


def _egress_allows(objs: list[Obj], labels: dict[str, str], port: int) -> bool:
    policy = one(objs, "NetworkPolicy", "turnout")["spec"]
    for rule in policy["egress"]:
        if port not in {p["port"] for p in rule["ports"]}:
            continue
        for peer in rule["to"]:
            if "ipBlock" in peer or selects(peer.get("podSelector", {}), labels):
                return True
    return False


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_vllm_pool_is_found_through_its_headless_service(overlay: str, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch
                                                         ) -> None:
    objs = render(overlay)
    for key, value in _gateway_env(objs).items():
        monkeypatch.setenv(key, value)
    cfg = load_config(_config(objs, tmp_path))
    (pool,) = cfg.pools
    (endpoint,) = pool.endpoints
    url = urlsplit(endpoint)
    assert url.scheme == "dns"
    service, namespace, *suffix = (url.hostname or "").split(".")
    assert suffix == ["svc", "cluster", "local"]
    svc = one(objs, "Service", service)
    assert svc["metadata"]["namespace"] == namespace
    assert svc["spec"]["clusterIP"] == "None"  # A records are the replicas themselves
    vllm = one(objs, "Deployment", service)
    assert selects({"matchLabels": svc["spec"]["selector"]},
                   vllm["spec"]["template"]["metadata"]["labels"])
    server = container(vllm, "vllm")
    # Headless: the gateway connects to the pods' own port, not the Service's.
    assert url.port in {p["containerPort"] for p in server["ports"]}
    args = server["args"]
    served = args[args.index("--served-model-name") + 1]
    models = {d.model for m in cfg.models.values() for d in m.deployments
              if d.target == pool.name}
    assert models == {served}
    assert _egress_allows(objs, vllm["spec"]["template"]["metadata"]["labels"], url.port)


def test_external_redis_url_comes_from_a_secret() -> None:
    objs = render("external-redis")
    env = container(one(objs, "Deployment", "turnout"), "turnout")["env"]
    (redis_url,) = [v for v in env if v["name"] == "REDIS_URL"]
    assert redis_url["valueFrom"]["secretKeyRef"] == {"name": "turnout-redis", "key": "url"}
    assert not [o for o in objs if o["kind"] == "StatefulSet"]
    assert _egress_allows(objs, {}, 6379) and _egress_allows(objs, {}, 6380)


def test_in_cluster_redis_is_a_statefulset_behind_a_headless_service() -> None:
    objs = render("in-cluster-redis")
    sts = one(objs, "StatefulSet", "redis")
    svc = one(objs, "Service", sts["spec"]["serviceName"])
    assert svc["spec"]["clusterIP"] == "None"
    assert sts["spec"]["replicas"] == 1
    url = urlsplit(_gateway_env(objs)["REDIS_URL"])
    # The first pod's stable name: <statefulset>-0.<service>.<namespace>.svc.cluster.local
    ns = sts["metadata"]["namespace"]
    assert url.hostname == f"{sts['metadata']['name']}-0.{svc['metadata']['name']}.{ns}" \
                           ".svc.cluster.local"
    assert url.port in {p["containerPort"] for p in container(sts, "redis")["ports"]}
    # Gateway and Redis share one password, from the same Secret key.
    redis_env = container_env(container(sts, "redis"), _secret_values())
    assert url.password == redis_env["REDIS_PASSWORD"]
    assert "$(REDIS_PASSWORD)" in container(sts, "redis")["args"]
    labels = sts["spec"]["template"]["metadata"]["labels"]
    assert _egress_allows(objs, labels, 6379)
    ingress = one(objs, "NetworkPolicy", "redis")["spec"]["ingress"]
    gateway_labels = one(objs, "Deployment", "turnout")["spec"]["template"]["metadata"]["labels"]
    assert [selects(p["podSelector"], gateway_labels) for r in ingress for p in r["from"]] == [True]


def test_kustomize_hash_suffix_matches_kustomizes_own_test_vector() -> None:
    # kustomize api/hasher/hasher_test.go, TestConfigMapHash "one key".
    assert kustomize._hash_suffix("", {"one": ""}) == "9g67k2htb6"


def test_renderer_refuses_what_it_does_not_render(tmp_path: Path) -> None:
    (tmp_path / "kustomization.yaml").write_text(
        "resources: []\nimages: [{name: turnout, newTag: '1'}]\n")
    with pytest.raises(ValueError, match="images"):
        kustomize.render(tmp_path)
