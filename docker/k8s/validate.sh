#!/usr/bin/env bash
# Validates the Kubernetes manifests in this directory offline, in strict mode (unknown fields
# are errors), against the schemas that PyPI's kubernetes-validate ships:
#
#   bash docker/k8s/validate.sh
#
# - every resource in every manifest against each Kubernetes version in LINKBRIDGE_K8S_VERSIONS
#   (default: the oldest and newest this kit is meant for); a kind or apiVersion with no schema
#   is an error, not the tool's warning;
# - kustomization.yaml lists exactly the manifests here;
# - the Deployment's references resolve: ConfigMap, Secrets and their keys, probe ports, the
#   Service's selector and target port, the PodDisruptionBudget's selector.
#
# The tools live in a virtualenv under $HOME/.cache/linkbridge-k8s-venv, made on the first run
# from requirements.txt (PyPI) and remade when that file changes. After that, no network.
set -euo pipefail

here="$(cd "$(dirname "$0")" && pwd)"
venv="${LINKBRIDGE_K8S_VENV:-$HOME/.cache/linkbridge-k8s-venv}"
read -r -a versions <<< "${LINKBRIDGE_K8S_VERSIONS:-1.30.0 1.37.0}"
python="${PYTHON:-python3}"

stamp="$venv/.requirements.sha256"
wanted="$(sha256sum "$here/requirements.txt" | cut -d' ' -f1)"
if [ ! -x "$venv/bin/python" ] || [ "$(cat "$stamp" 2>/dev/null)" != "$wanted" ]; then
    echo "validate.sh: installing the validator into $venv" >&2
    rm -rf "$venv"
    "$python" -m venv "$venv"
    "$venv/bin/python" -m pip install --quiet --disable-pip-version-check --no-input \
        --requirement "$here/requirements.txt"
    echo "$wanted" > "$stamp"
fi

exec "$venv/bin/python" - "$here" "${versions[@]}" <<'PY'
import os
import sys

import yaml
import kubernetes_validate
from kubernetes_validate.utils import SchemaNotFoundError, ValidationError, VersionNotSupportedError

here, versions = sys.argv[1], sys.argv[2:]
failures = []


def fail(message):
    failures.append(message)
    print(f"FAIL {message}")


def load(name):
    with open(os.path.join(here, name)) as f:
        return [doc for doc in yaml.safe_load_all(f) if doc is not None]


manifests = sorted(n for n in os.listdir(here) if n.endswith((".yaml", ".yml")) and n != "kustomization.yaml")
resources = {}  # (kind, name) -> resource
for name in manifests:
    docs = load(name)
    if not docs:
        fail(f"{name}: no resource")
    for doc in docs:
        if not isinstance(doc, dict) or "kind" not in doc or "apiVersion" not in doc:
            fail(f"{name}: a document without kind and apiVersion")
            continue
        label = f"{name}: {doc['kind']}/{doc.get('metadata', {}).get('name', '?')}"
        before = len(failures)
        for version in versions:
            try:
                kubernetes_validate.validate(doc, version, strict=True)
            except ValidationError as e:
                path = ".".join(str(p) for p in e.path) or "(top)"
                fail(f"{label} (Kubernetes {version}): {path}: {e.message}")
            except SchemaNotFoundError as e:
                fail(f"{label}: {e.message}")
            except VersionNotSupportedError:
                fail(f"kubernetes-validate {kubernetes_validate.__version__} has no schemas for Kubernetes {version}")
        resources[(doc["kind"], doc["metadata"]["name"])] = doc
        if len(failures) == before:
            print(f"ok   {label} (Kubernetes {', '.join(versions)}, strict)")

# kustomization.yaml: not a Kubernetes resource (no schema), so checked here.
kustomization = load("kustomization.yaml")[0]
if kustomization.get("kind") != "Kustomization" or not str(kustomization.get("apiVersion", "")).startswith(
    "kustomize.config.k8s.io/"
):
    fail("kustomization.yaml: not a kustomize.config.k8s.io Kustomization")
listed = kustomization.get("resources", [])
if sorted(listed) != manifests:
    fail(f"kustomization.yaml: resources {sorted(listed)} but the directory holds {manifests}")
else:
    print(f"ok   kustomization.yaml lists every manifest ({len(listed)})")


def need(kind, name, why):
    found = resources.get((kind, name))
    if found is None:
        fail(f"{why}: no {kind} named {name}")
    return found


# References from the Deployment.
for (kind, name), deployment in resources.items():
    if kind != "Deployment":
        continue
    pod = deployment["spec"]["template"]
    labels = pod["metadata"].get("labels", {})
    selector = deployment["spec"]["selector"].get("matchLabels", {})
    if any(labels.get(k) != v for k, v in selector.items()):
        fail(f"Deployment/{name}: selector {selector} does not match the pod labels {labels}")
    volumes = {v["name"]: v for v in pod["spec"].get("volumes", [])}
    for container in pod["spec"]["containers"]:
        where = f"Deployment/{name} container {container['name']}"
        ports = {p.get("name"): p["containerPort"] for p in container.get("ports", [])}
        for source in container.get("envFrom", []):
            if "configMapRef" in source:
                need("ConfigMap", source["configMapRef"]["name"], where)
            if "secretRef" in source:
                need("Secret", source["secretRef"]["name"], where)
        for env in container.get("env", []):
            ref = env.get("valueFrom", {})
            for ref_kind, key in (("Secret", "secretKeyRef"), ("ConfigMap", "configMapKeyRef")):
                if key in ref:
                    target = need(ref_kind, ref[key]["name"], f"{where} env {env['name']}")
                    data = {**(target or {}).get("data", {}), **(target or {}).get("stringData", {})}
                    if target is not None and ref[key]["key"] not in data:
                        fail(f"{where} env {env['name']}: {ref_kind}/{ref[key]['name']} has no key {ref[key]['key']}")
        for probe_name in ("startupProbe", "livenessProbe", "readinessProbe"):
            port = container.get(probe_name, {}).get("httpGet", {}).get("port")
            if isinstance(port, str) and port not in ports:
                fail(f"{where} {probe_name}: no container port named {port}")
        for mount in container.get("volumeMounts", []):
            if mount["name"] not in volumes:
                fail(f"{where}: volumeMount {mount['name']} has no volume")
    for volume in volumes.values():
        if "secret" in volume:
            need("Secret", volume["secret"]["secretName"], f"Deployment/{name} volume {volume['name']}")
        if "configMap" in volume:
            need("ConfigMap", volume["configMap"]["name"], f"Deployment/{name} volume {volume['name']}")

    # The Service and the PodDisruptionBudget select these pods.
    for (other_kind, other_name), other in resources.items():
        if other_kind == "Service":
            sel = other["spec"].get("selector", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                fail(f"Service/{other_name}: selector {sel} does not select Deployment/{name}'s pods")
            container_ports = {p.get("name") for c in pod["spec"]["containers"] for p in c.get("ports", [])}
            for port in other["spec"]["ports"]:
                target = port.get("targetPort")
                if isinstance(target, str) and target not in container_ports:
                    fail(f"Service/{other_name}: targetPort {target} is no container port of Deployment/{name}")
        if other_kind == "PodDisruptionBudget":
            sel = other["spec"]["selector"].get("matchLabels", {})
            if not sel or any(labels.get(k) != v for k, v in sel.items()):
                fail(f"PodDisruptionBudget/{other_name}: selector {sel} does not select Deployment/{name}'s pods")

if failures:
    print(f"\n{len(failures)} problem(s) in docker/k8s")
    sys.exit(1)
print("docker/k8s: every manifest is valid")
PY
