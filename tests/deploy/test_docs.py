"""docs/deploy.md's Kubernetes commands name what the manifests define: the kustomizations and files
exist, and every namespace, Deployment, Job, InferenceService and Service (with its port) that a
command names is one the rendered manifests create (KServe names a predictor's Service
`<name>-predictor`, with port 80 to the first container port)."""

from __future__ import annotations

import re

import pytest

from tests.deploy.manifests import KUSTOMIZATIONS, ROOT, objects, render

DOC = ROOT / "docs" / "deploy.md"
#: The kustomization the doc itself writes (pointing an overlay at a registry).
DOC_MADE = {"transxnet-prod"}


def _section() -> str:
    text = DOC.read_text()
    start = text.index("### Kubernetes\n")
    end = text.index("\n### ", start + 1)
    return text[start:end]


def _commands() -> list[str]:
    blocks = re.findall(r"^```bash\n(.*?)^```", _section(), re.M | re.S)
    lines = "\n".join(blocks).replace("\\\n", " ").splitlines()
    return [line.split("#", 1)[0].strip() for line in lines if line.strip().startswith(("kubectl", "helm"))]


def _created() -> dict[tuple[str, str], set[str]]:
    """(namespace, kind) -> names, over every kustomization, with KServe's predictor Services."""
    made: dict[tuple[str, str], set[str]] = {}
    for kustomization in KUSTOMIZATIONS:
        for obj in render(kustomization):
            key = (obj["metadata"].get("namespace", ""), obj["kind"])
            made.setdefault(key, set()).add(obj["metadata"]["name"])
            if obj["kind"] == "InferenceService":
                service = (obj["metadata"]["namespace"], "Service")
                made.setdefault(service, set()).add(f"{obj['metadata']['name']}-predictor")
    return made


def _service_ports(namespace: str, name: str) -> set[int]:
    for kustomization in KUSTOMIZATIONS:
        for service in objects(kustomization, "Service"):
            if (service["metadata"]["namespace"], service["metadata"]["name"]) == (namespace, name):
                return {port["port"] for port in service["spec"]["ports"]}
    return {80}  # a KServe predictor Service (RawDeployment): port 80 to the first container port


def test_the_section_has_the_commands_this_test_checks() -> None:
    commands = _commands()
    assert sum("apply -k" in c for c in commands) >= 3 and any("port-forward" in c for c in commands)


@pytest.mark.parametrize("command", [c for c in _commands() if " -k " in c or " -f " in c])
def test_applied_paths_exist(command: str) -> None:
    for flag, path in re.findall(r"\s(-k|-f)\s+(\S+)", command):
        if path in DOC_MADE:
            continue
        target = ROOT / path
        assert (target / "kustomization.yaml").is_file() if flag == "-k" else target.is_file(), command


@pytest.mark.parametrize("command", [c for c in _commands() if c.startswith("kubectl -n ")])
def test_named_objects_exist(command: str) -> None:
    made = _created()
    namespace = command.split()[2]
    assert (namespace, "Namespace") in {
        (n, "Namespace") for (_, k), ns in made.items() if k == "Namespace" for n in ns
    }
    kinds = {
        "deployment": "Deployment",
        "job": "Job",
        "svc": "Service",
        "inferenceservice": "InferenceService",
    }
    for word, name in re.findall(r"\b(deployment|job|svc)/([\w-]+)", command) + re.findall(
        r"\b(inferenceservice) ([\w-]+)", command
    ):
        assert name in made.get((namespace, kinds[word]), set()), (
            f"{command}: no {word} {name} in {namespace}"
        )
    forward = re.search(r"port-forward svc/([\w-]+) \d+:(\d+)", command)
    if forward:
        assert int(forward[2]) in _service_ports(namespace, forward[1]), command
