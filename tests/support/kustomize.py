"""A small kustomize: renders deploy/kubernetes's overlays for the tests, since no kustomize
binary can be installed here.

Only what the manifests use, following kustomize's documented behaviour, and any other
kustomization field is refused rather than ignored:
- `resources`: files (multi-document YAML) and folders holding a kustomization.yaml;
- `configMapGenerator` with `files`: the name gets kustomize's content-hash suffix (same
  algorithm as its hasher) and pod templates' `configMap` volumes follow the new name;
- `patches` with an inline JSON 6902 `patch` (add, replace, remove) and a `target` of
  kind and name;
- `namespace`.
"""

from __future__ import annotations

import copy
import hashlib
import json
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]
SUPPORTED = {"apiVersion", "kind", "resources", "configMapGenerator", "patches", "namespace"}


def render(folder: Path) -> list[Obj]:
    spec = yaml.safe_load((folder / "kustomization.yaml").read_text())
    unknown = set(spec) - SUPPORTED
    if unknown:
        raise ValueError(f"{folder}: kustomization fields not rendered here: {sorted(unknown)}")
    objs: list[Obj] = []
    for res in spec.get("resources", []):
        path = (folder / res).resolve()
        if path.is_dir():
            objs.extend(render(path))
        else:
            objs.extend(d for d in yaml.safe_load_all(path.read_text()) if d)
    for gen in spec.get("configMapGenerator", []):
        objs.append(_configmap(folder, gen, objs))
    for patch in spec.get("patches", []):
        _patch(objs, patch)
    if "namespace" in spec:
        for obj in objs:
            obj["metadata"]["namespace"] = spec["namespace"]
    return objs


def _configmap(folder: Path, gen: Obj, objs: list[Obj]) -> Obj:
    if set(gen) - {"name", "files"}:
        raise ValueError(f"configMapGenerator fields not rendered here: {sorted(gen)}")
    data = {Path(f).name: (folder / f).read_text() for f in gen["files"]}
    name = f"{gen['name']}-{_hash_suffix(gen['name'], data)}"
    for obj in objs:
        pod = _pod_spec(obj)
        for vol in (pod or {}).get("volumes", []):
            if vol.get("configMap", {}).get("name") == gen["name"]:
                vol["configMap"]["name"] = name
    return {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": name}, "data": data}


def _hash_suffix(name: str, data: dict[str, str]) -> str:
    # kustomize: sha256 of Go's json.Marshal of {kind, name, data} (keys sorted, <>&
    # escaped), first 10 hex digits with 0 1 3 a e swapped for g h k m t (no vowels).
    encoded = json.dumps({"data": data, "kind": "ConfigMap", "name": name},
                         separators=(",", ":"), sort_keys=True, ensure_ascii=False)
    for char, escape in (("&", "\\u0026"), ("<", "\\u003c"), (">", "\\u003e"),
                         ("\u2028", "\\u2028"), ("\u2029", "\\u2029")):
        encoded = encoded.replace(char, escape)
    digest = hashlib.sha256(encoded.encode()).hexdigest()[:10]
    return digest.translate(str.maketrans("013ae", "ghkmt"))


def _pod_spec(obj: Obj) -> Obj | None:
    if obj["kind"] in {"Deployment", "StatefulSet", "DaemonSet", "ReplicaSet", "Job"}:
        spec: Obj = obj["spec"]["template"]["spec"]
        return spec
    return None


def _patch(objs: list[Obj], patch: Obj) -> None:
    target = patch["target"]
    if set(target) - {"kind", "name"} or set(patch) - {"target", "patch"}:
        raise ValueError(f"patch form not rendered here: {patch}")
    ops = yaml.safe_load(patch["patch"])
    if not isinstance(ops, list):
        raise ValueError("only JSON 6902 patches (a list of operations) are rendered here")
    matched = [o for o in objs if o["kind"] == target["kind"]
               and o["metadata"]["name"] == target["name"]]
    if not matched:
        raise ValueError(f"patch target not found: {target}")
    for obj in matched:
        for op in ops:
            _apply_op(obj, op)


def _apply_op(obj: Obj, op: Obj) -> None:
    keys = [k.replace("~1", "/").replace("~0", "~") for k in op["path"].split("/")[1:]]
    parent: Any = obj
    for key in keys[:-1]:
        parent = parent[int(key)] if isinstance(parent, list) else parent[key]
    last = keys[-1]
    if op["op"] == "add":
        value = copy.deepcopy(op["value"])
        if isinstance(parent, list):
            parent.insert(len(parent) if last == "-" else int(last), value)
        else:
            parent[last] = value
    elif op["op"] == "replace":
        index = int(last) if isinstance(parent, list) else last
        parent[index]
        parent[index] = copy.deepcopy(op["value"])
    elif op["op"] == "remove":
        del parent[int(last) if isinstance(parent, list) else last]
    else:
        raise ValueError(f"JSON 6902 op not rendered here: {op['op']}")

