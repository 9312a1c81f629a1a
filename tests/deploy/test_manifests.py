"""The manifests render, validate against the Kubernetes 1.32 schemas (and the CRD schemas of
crd_schemas.py), and hold together: selectors select the pods, ports and volumes named exist,
the security posture is the one the docs promise."""

from __future__ import annotations

import copy
from typing import Any

import jsonschema
import kubernetes_validate
import pytest

from tests.deploy.crd_schemas import K8S_VERSION, SCHEMAS, validate_custom_resource
from tests.deploy.manifests import (
    EXPORT_CONTAINER,
    KUSTOMIZATIONS,
    OVERLAYS,
    SERVICE_CONTAINER,
    all_containers,
    container,
    one,
    pod_spec,
    port_number,
    render,
)

WORKLOADS = {
    "overlays/cpu": ("Deployment", SERVICE_CONTAINER),
    "overlays/gpu": ("Deployment", SERVICE_CONTAINER),
    "kserve/custom-predictor": ("InferenceService", "kserve-container"),
    "kserve/triton": ("Job", "export"),
}


def _validate(obj: dict[str, Any]) -> None:
    if (obj["apiVersion"], obj["kind"]) in SCHEMAS:
        validate_custom_resource(obj)
    else:
        kubernetes_validate.validate(obj, K8S_VERSION, strict=True)


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_kustomization_renders(kustomization: str) -> None:
    assert render(kustomization), f"{kustomization} rendered no object"


@pytest.mark.parametrize("kustomization", KUSTOMIZATIONS)
def test_every_object_validates_strictly(kustomization: str) -> None:
    for obj in render(kustomization):
        name = f"{kustomization}: {obj['kind']}/{obj['metadata']['name']}"
        try:
            _validate(obj)
        except (kubernetes_validate.ValidationError, jsonschema.ValidationError) as exc:
            pytest.fail(f"{name}: {exc.message} at {list(exc.absolute_path)}")


@pytest.mark.parametrize(
    ("kind", "path", "value"),
    [
        ("Deployment", ("spec", "template", "spec", "containers", 0, "imagePullPolicyy"), "Always"),
        ("HorizontalPodAutoscaler", ("spec", "minReplicas"), "two"),
        ("ServiceMonitor", ("spec", "endpoints", 0, "interval"), "15 seconds"),
    ],
)
def test_the_validation_catches_a_typo(kind: str, path: tuple[Any, ...], value: Any) -> None:
    # The schemas are strict: a misspelt field or a wrong type is an error, not ignored.
    obj = copy.deepcopy(one("overlays/cpu", kind))
    target = obj
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    with pytest.raises((kubernetes_validate.ValidationError, jsonschema.ValidationError)):
        _validate(obj)


def test_inference_service_schema_catches_a_misspelt_kserve_field() -> None:
    isvc = copy.deepcopy(one("kserve/triton", "InferenceService"))
    isvc["spec"]["predictor"]["model"]["storageURI"] = isvc["spec"]["predictor"]["model"].pop("storageUri")
    with pytest.raises(jsonschema.ValidationError, match="storageURI"):
        validate_custom_resource(isvc)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_overlays_render_the_same_objects_as_the_base(overlay: str) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in render("base"))
    assert sorted((o["kind"], o["metadata"]["name"]) for o in render(overlay)) == kinds
    assert {k for k, _ in kinds} >= {
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "HorizontalPodAutoscaler",
        "ServiceMonitor",
    }


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_selectors_select_the_deployments_pods(overlay: str) -> None:
    deployment = one(overlay, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]
    selectors = {
        "Deployment": deployment["spec"]["selector"]["matchLabels"],
        "Service": one(overlay, "Service")["spec"]["selector"],
        "PodDisruptionBudget": one(overlay, "PodDisruptionBudget")["spec"]["selector"]["matchLabels"],
    }
    for kind, selector in selectors.items():
        # An empty PDB selector would select every pod in the namespace.
        assert selector, f"{kind} has an empty selector"
        assert selector.items() <= labels.items(), f"{kind} selector {selector} misses the pods {labels}"
    for constraint in pod_spec(deployment)["topologySpreadConstraints"]:
        assert constraint["labelSelector"]["matchLabels"].items() <= labels.items()


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_monitor_scrapes_a_port_of_the_service(overlay: str) -> None:
    service = one(overlay, "Service")
    monitor = one(overlay, "ServiceMonitor")
    assert monitor["spec"]["selector"]["matchLabels"].items() <= service["metadata"]["labels"].items()
    ports = {port["name"]: port for port in service["spec"]["ports"]}
    (endpoint,) = monitor["spec"]["endpoints"]
    assert endpoint["port"] in ports
    assert endpoint["path"] == "/metrics"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_service_ports_reach_named_container_ports(overlay: str) -> None:
    deployment = one(overlay, "Deployment")
    serving = container(pod_spec(deployment), SERVICE_CONTAINER)
    targets = {
        p["name"]: port_number(serving, p["targetPort"]) for p in one(overlay, "Service")["spec"]["ports"]
    }
    assert targets == {"http": 8000, "grpc": 8001, "metrics": 8000}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_scales_the_deployment_on_a_pods_metric(overlay: str) -> None:
    hpa = one(overlay, "HorizontalPodAutoscaler")
    deployment = one(overlay, "Deployment")
    ref = hpa["spec"]["scaleTargetRef"]
    assert (ref["apiVersion"], ref["kind"], ref["name"]) == (
        "apps/v1",
        "Deployment",
        deployment["metadata"]["name"],
    )
    assert "replicas" not in deployment["spec"], "a fixed replica count would fight the autoscaler"
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Pods" and metric["pods"]["target"]["type"] == "AverageValue"
    assert 1 <= hpa["spec"]["minReplicas"] <= hpa["spec"]["maxReplicas"]


@pytest.mark.parametrize("kustomization", list(WORKLOADS))
def test_every_long_running_container_is_locked_down(kustomization: str) -> None:
    kind, _ = WORKLOADS[kustomization]
    spec = pod_spec(one(kustomization, kind))
    assert spec["securityContext"]["runAsNonRoot"] is True
    assert spec["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert spec["automountServiceAccountToken"] is False
    for item in all_containers(spec):
        context = item["securityContext"]
        if item["name"] == "trt-cache-owner":
            continue  # checked below: the one root step, and why
        assert context["allowPrivilegeEscalation"] is False, item["name"]
        assert context["readOnlyRootFilesystem"] is True, item["name"]
        assert context["capabilities"] == {"drop": ["ALL"]}, item["name"]
        assert context.get("runAsNonRoot", True) is True, item["name"]


def test_the_gpu_overlays_only_root_step_chowns_the_cache_and_nothing_else() -> None:
    spec = pod_spec(one("overlays/gpu", "Deployment"))
    owner = container(spec, "trt-cache-owner")
    context = owner["securityContext"]
    assert context["capabilities"] == {"drop": ["ALL"], "add": ["CHOWN"]}
    assert context["allowPrivilegeEscalation"] is False and context["readOnlyRootFilesystem"] is True
    uid, gid = spec["securityContext"]["runAsUser"], spec["securityContext"]["runAsGroup"]
    (mount,) = owner["volumeMounts"]
    assert owner["command"] == ["chown", f"{uid}:{gid}", mount["mountPath"]]
    assert "trt-cache-owner" not in {c["name"] for c in spec["containers"]}


@pytest.mark.parametrize("kustomization", list(WORKLOADS))
def test_every_container_has_cpu_and_memory_limits(kustomization: str) -> None:
    kind, _ = WORKLOADS[kustomization]
    for item in all_containers(pod_spec(one(kustomization, kind))):
        limits = item["resources"]["limits"]
        assert {"cpu", "memory"} <= limits.keys(), item["name"]


@pytest.mark.parametrize("kustomization", ["overlays/cpu", "overlays/gpu", "kserve/custom-predictor"])
def test_mounts_name_volumes_of_the_pod(kustomization: str) -> None:
    kind, _ = WORKLOADS[kustomization]
    spec = pod_spec(one(kustomization, kind))
    volumes = {v["name"] for v in spec["volumes"]}
    for item in all_containers(spec):
        for mount in item.get("volumeMounts", []):
            assert mount["name"] in volumes, f"{item['name']}: no volume {mount['name']}"


def test_gpu_overlay_asks_for_one_gpu_and_keeps_the_engine_cache_on_the_node() -> None:
    spec = pod_spec(one("overlays/gpu", "Deployment"))
    serving = container(spec, SERVICE_CONTAINER)
    assert serving["resources"]["limits"]["nvidia.com/gpu"] == "1"
    assert serving["image"].endswith(":gpu")
    cache = next(m for m in serving["volumeMounts"] if m["mountPath"] == "/cache/trt")
    volume = next(v for v in spec["volumes"] if v["name"] == cache["name"])
    assert volume["hostPath"]["type"] == "DirectoryOrCreate"


def test_gpu_overlay_gives_start_up_longer_than_the_cpu_one() -> None:
    def startup_budget_s(overlay: str) -> int:
        probe = container(pod_spec(one(overlay, "Deployment")), SERVICE_CONTAINER)["startupProbe"]
        return probe["periodSeconds"] * probe["failureThreshold"]

    # A first TensorRT engine build takes minutes: the GPU budget must cover ten of them at least.
    assert startup_budget_s("overlays/gpu") >= 600 > startup_budget_s("overlays/cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_one_export_image_serves_every_variant(overlay: str) -> None:
    spec = pod_spec(one(overlay, "Deployment"))
    export = container(spec, EXPORT_CONTAINER)
    assert export["image"].split(":")[0] == "transxnet-export"
    assert "--variant" in export["args"], "the variant is an argument, not baked into an image"
