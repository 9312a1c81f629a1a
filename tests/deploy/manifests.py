"""The Kubernetes manifests as the cluster would receive them: each kustomization rendered by
`kubectl kustomize`, and small accessors for the parts the tests compare with the code."""

from __future__ import annotations

import functools
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).resolve().parents[2]
KUBERNETES = ROOT / "deploy" / "kubernetes"
#: Every kustomization a user applies, and the base they share.
KUSTOMIZATIONS = (
    "base",
    "overlays/cpu",
    "overlays/gpu",
    "kserve/custom-predictor",
    "kserve/triton",
)
#: The overlays that run this project's Deployment.
OVERLAYS = ("overlays/cpu", "overlays/gpu")
ADAPTER_VALUES = KUBERNETES / "prometheus-adapter" / "values.yaml"
SERVICE_CONTAINER = "transxnet"
EXPORT_CONTAINER = "export-model"

Manifest = dict[str, Any]


class RenderError(RuntimeError):
    """`kubectl kustomize` refused a kustomization; the message carries its stderr."""


def kubectl() -> str | None:
    return shutil.which("kubectl")


@functools.cache
def render(kustomization: str) -> tuple[Manifest, ...]:
    """The objects `kubectl kustomize deploy/kubernetes/<kustomization>` prints, in order."""
    binary = kubectl()
    if binary is None:
        raise RenderError("kubectl is not installed")
    done = subprocess.run(
        [binary, "kustomize", str(KUBERNETES / kustomization)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    if done.returncode != 0:
        raise RenderError(f"kubectl kustomize {kustomization} failed:\n{done.stderr}")
    return tuple(doc for doc in yaml.safe_load_all(done.stdout) if doc)


def objects(kustomization: str, kind: str) -> list[Manifest]:
    return [obj for obj in render(kustomization) if obj["kind"] == kind]


def one(kustomization: str, kind: str) -> Manifest:
    found = objects(kustomization, kind)
    assert len(found) == 1, f"{kustomization}: expected one {kind}, found {len(found)}"
    return found[0]


def pod_spec(obj: Manifest) -> dict[str, Any]:
    """The pod template's spec of a Deployment or Job, or an InferenceService's predictor (which
    inlines a PodSpec)."""
    if obj["kind"] == "InferenceService":
        return obj["spec"]["predictor"]
    return obj["spec"]["template"]["spec"]


def container(spec: dict[str, Any], name: str) -> dict[str, Any]:
    for item in [*spec.get("containers", []), *spec.get("initContainers", [])]:
        if item["name"] == name:
            return item
    raise KeyError(f"no container {name!r}")


def all_containers(spec: dict[str, Any]) -> Iterator[dict[str, Any]]:
    yield from spec.get("initContainers", [])
    yield from spec.get("containers", [])


def env_of(item: dict[str, Any]) -> dict[str, str]:
    """A container's literal environment (every value here is literal; `valueFrom` would fail)."""
    values = {}
    for var in item.get("env", []):
        assert "value" in var, f"{item['name']}: {var['name']} is not a literal value"
        values[var["name"]] = var["value"]
    return values


def port_number(item: dict[str, Any], port: int | str) -> int:
    """A probe's or Service's port (a number or a container port's name) as a number."""
    if isinstance(port, int):
        return port
    for entry in item.get("ports", []):
        if entry.get("name") == port:
            return int(entry["containerPort"])
    raise KeyError(f"{item['name']}: no container port named {port!r}")


_CPU = re.compile(r"^(\d+(?:\.\d+)?)(m?)$")


def cpu_cores(quantity: str | int) -> float:
    """A CPU quantity ("2", "500m", 4) in cores."""
    match = _CPU.match(str(quantity))
    assert match, f"cannot read CPU quantity {quantity!r}"
    return float(match[1]) / (1000 if match[2] else 1)


def adapter_rules() -> list[dict[str, Any]]:
    return yaml.safe_load(ADAPTER_VALUES.read_text())["rules"]["custom"]
