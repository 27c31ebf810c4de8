"""deploy/kubernetes as the tests see it: each overlay rendered (tests/support/kustomize.py),
looked up by kind and name, and the ServiceMonitor's schema taken from the vendored CRD."""

from __future__ import annotations

import re
from functools import cache
from pathlib import Path
from typing import Any

import jsonschema
import yaml

from tests.support import kustomize
from tests.support.procs import REPO

K8S = REPO / "deploy" / "kubernetes"
OVERLAYS = ("external-redis", "in-cluster-redis")
CRDS = Path(__file__).parent / "crds"
Obj = dict[str, Any]


@cache
def _rendered(overlay: str) -> tuple[Obj, ...]:
    return tuple(kustomize.render(K8S / "overlays" / overlay))


def render(overlay: str) -> list[Obj]:
    """A fresh copy each time: tests may not change each other's objects."""
    return yaml.safe_load(yaml.safe_dump(list(_rendered(overlay))))  # type: ignore[no-any-return]


def one(objs: list[Obj], kind: str, name: str) -> Obj:
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def pod_templates(objs: list[Obj]) -> list[Obj]:
    return [o["spec"]["template"] for o in objs if o["kind"] in {"Deployment", "StatefulSet"}]


def container(obj: Obj, name: str) -> Obj:
    return next(c for c in obj["spec"]["template"]["spec"]["containers"] if c["name"] == name)


def selects(selector: Obj, labels: dict[str, str]) -> bool:
    """A label selector of matchLabels only (the manifests use no expressions)."""
    assert set(selector) <= {"matchLabels"}, selector
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def container_env(spec: Obj, secret_value: dict[tuple[str, str], str]) -> dict[str, str]:
    """The environment the kubelet gives a container: Secret keys from `secret_value`
    (missing optional ones left unset) and `$(VAR)` in values expanded from the variables
    defined before them, as Kubernetes does."""
    env: dict[str, str] = {}
    for var in spec.get("env", []):
        if "value" in var:
            env[var["name"]] = re.sub(r"\$\((\w+)\)",
                                      lambda m: env.get(m.group(1), m.group(0)), var["value"])
            continue
        ref = var["valueFrom"]["secretKeyRef"]
        value = secret_value.get((ref["name"], ref["key"]))
        if value is not None:
            env[var["name"]] = value
        else:
            assert ref.get("optional"), f"no value for the required {ref}"
    return env


@cache
def servicemonitor_schema() -> Obj:
    """The CRD's openAPIV3Schema made strict as `kubectl apply` is by default (field
    validation Strict: an unknown field is an error, not silently pruned)."""
    crd = yaml.safe_load((CRDS / "monitoring.coreos.com_servicemonitors.yaml").read_text())
    (version,) = [v for v in crd["spec"]["versions"] if v["name"] == "v1"]
    schema: Obj = version["schema"]["openAPIV3Schema"]
    _strict(schema)
    jsonschema.Draft7Validator.check_schema(schema)
    return schema


def _strict(node: Any) -> None:
    if isinstance(node, dict):
        if ("properties" in node and "additionalProperties" not in node
                and not node.get("x-kubernetes-preserve-unknown-fields")):
            node["additionalProperties"] = False
        for value in node.values():
            _strict(value)
    elif isinstance(node, list):
        for value in node:
            _strict(value)
