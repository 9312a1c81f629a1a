"""The manifests agree with the code: the environment names real settings with valid values, the
ports are the service's, the CPU limit matches the thread counts, the shutdown timing adds up, the
export containers' arguments are ones `python -m export` accepts and write where the service
reads, the autoscaler's metric is the one the adapter rule serves, and the KServe objects run the
same container and the export's Triton repository."""

from __future__ import annotations

import re
from pathlib import PurePosixPath
from typing import Any

import pytest

from app.settings import ENV_PREFIX, Settings
from export.__main__ import build_parser
from export.download import CACHE_ENV, pretrained_url
from tests.deploy.manifests import (
    EXPORT_CONTAINER,
    OVERLAYS,
    SERVICE_CONTAINER,
    adapter_rules,
    container,
    cpu_cores,
    env_of,
    one,
    pod_spec,
    port_number,
)

#: Every container that runs the service: (kustomization, kind, container name).
SERVICE_CONTAINERS = [
    ("overlays/cpu", "Deployment", SERVICE_CONTAINER),
    ("overlays/gpu", "Deployment", SERVICE_CONTAINER),
    ("kserve/custom-predictor", "InferenceService", "kserve-container"),
]
#: Every container that runs `python -m export`.
EXPORT_CONTAINERS = [
    ("overlays/cpu", "Deployment", EXPORT_CONTAINER),
    ("overlays/gpu", "Deployment", EXPORT_CONTAINER),
    ("kserve/custom-predictor", "InferenceService", EXPORT_CONTAINER),
    ("kserve/triton", "Job", "export"),
]
#: Extra seconds terminationGracePeriodSeconds must leave after preStop + grace + timeout: the
#: batch still running when the drain's timeout ends, and the batcher's stop.
SHUTDOWN_MARGIN_S = 10
#: Variables KServe itself reads from a custom predictor's container.
KSERVE_ENV = {"PROTOCOL"}
#: ONNX Runtime's switch for its telemetry, which otherwise writes a device-ID file under $HOME (on
#: the read-only root filesystem; tests/deploy/test_process.py traces the writes).
ORT_TELEMETRY = {"ORT_DISABLE_TELEMETRY": "1"}


def _service(kustomization: str, kind: str, name: str) -> tuple[dict[str, Any], dict[str, Any]]:
    spec = pod_spec(one(kustomization, kind))
    return spec, container(spec, name)


def _settings(item: dict[str, Any]) -> Settings:
    """The container's settings as the service would read them (without the model file check)."""
    fields = {k[len(ENV_PREFIX) :].lower(): v for k, v in env_of(item).items() if k.startswith(ENV_PREFIX)}
    return Settings.model_validate(fields)


def _mounts(item: dict[str, Any]) -> dict[str, dict[str, Any]]:
    return {m["mountPath"]: m for m in item.get("volumeMounts", [])}


def _mount_of(item: dict[str, Any], path: str) -> dict[str, Any]:
    """The volume mount `path` lies on (the deepest one)."""
    hits = [m for p, m in _mounts(item).items() if PurePosixPath(path).is_relative_to(p)]
    assert hits, f"{item['name']}: {path} is on no volume (the root filesystem is read-only)"
    return max(hits, key=lambda m: len(m["mountPath"]))


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_service_environment_names_only_real_settings_with_valid_values(
    kustomization: str, kind: str, name: str
) -> None:
    _, item = _service(kustomization, kind, name)
    known = {ENV_PREFIX + field.upper() for field in Settings.model_fields}
    ours = {k for k in env_of(item) if k.startswith(ENV_PREFIX)}
    assert ours, "the container sets no setting at all"
    assert not ours - known, f"not settings (typo?): {sorted(ours - known)}"
    assert not set(env_of(item)) - ours - KSERVE_ENV - ORT_TELEMETRY.keys(), "a variable nothing reads"
    _settings(item)  # raises on an invalid value or combination
    assert env_of(item).items() >= ORT_TELEMETRY.items()


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_container_ports_are_the_services(kustomization: str, kind: str, name: str) -> None:
    _, item = _service(kustomization, kind, name)
    settings = _settings(item)
    assert port_number(item, "http") == settings.port
    # The gRPC endpoint's port is the setting's default (Triton's), and the manifests do not move it.
    assert port_number(item, "grpc") == settings.grpc_port == Settings.model_fields["grpc_port"].default
    assert settings.host == "0.0.0.0", "probes and the Service reach the pod's IP, not loopback"
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        assert port_number(item, item[probe]["httpGet"]["port"]) == settings.port, probe


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_probes_are_liveness_on_healthz_and_readiness_on_readyz(
    kustomization: str, kind: str, name: str
) -> None:
    _, item = _service(kustomization, kind, name)
    assert item["livenessProbe"]["httpGet"]["path"] == "/healthz"
    assert item["readinessProbe"]["httpGet"]["path"] == "/readyz"
    # Start-up ends when the port opens; readiness then waits for the warm-up.
    assert item["startupProbe"]["httpGet"]["path"] == "/healthz"
    for probe in ("livenessProbe", "readinessProbe"):
        assert item[probe]["timeoutSeconds"] >= 5, f"{probe}: too short to hold while batches run"


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_cpu_limit_matches_the_thread_counts(kustomization: str, kind: str, name: str) -> None:
    _, item = _service(kustomization, kind, name)
    settings = _settings(item)
    cores = cpu_cores(item["resources"]["limits"]["cpu"])
    assert cpu_cores(item["resources"]["requests"]["cpu"]) == cores, "requests = limits (Guaranteed QoS)"
    # 0 means "the node's cores", which in a container is the node's, not the limit.
    assert settings.intra_op_threads > 0 and settings.preprocess_workers > 0
    # One instance: a second instance would add an all-cores session sized from the node's cores.
    assert settings.model_instances == 1
    assert settings.intra_op_threads * settings.model_instances == cores
    assert settings.preprocess_workers <= cores


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_shutdown_timing_adds_up(kustomization: str, kind: str, name: str) -> None:
    spec, item = _service(kustomization, kind, name)
    settings = _settings(item)
    pre_stop_s = item["lifecycle"]["preStop"]["sleep"]["seconds"]
    drain_s = pre_stop_s + settings.shutdown_grace_s + settings.shutdown_timeout_s
    assert spec["terminationGracePeriodSeconds"] >= drain_s + SHUTDOWN_MARGIN_S
    # Endpoints propagate during the preStop sleep; the grace period then lets a readiness probe
    # see the 503 before the listener closes.
    assert pre_stop_s >= 3
    assert settings.shutdown_grace_s >= item["readinessProbe"]["periodSeconds"]
    # A queued request is answered (or gets its 504) within the drain's timeout.
    assert settings.request_timeout_s <= settings.shutdown_timeout_s


@pytest.mark.parametrize(("kustomization", "kind", "name"), SERVICE_CONTAINERS)
def test_the_service_writes_only_to_volumes_its_settings_point_at(
    kustomization: str, kind: str, name: str
) -> None:
    _, item = _service(kustomization, kind, name)
    settings = _settings(item)
    assert item["securityContext"]["readOnlyRootFilesystem"] is True
    writable = {path for path, mount in _mounts(item).items() if not mount.get("readOnly")}
    expected = {"/tmp"} | ({str(settings.trt_cache_dir)} if settings.trt_cache_dir else set())
    assert writable == expected
    assert _mount_of(item, str(settings.model_path)).get("readOnly") is True


@pytest.mark.parametrize(("kustomization", "kind", "name"), EXPORT_CONTAINERS)
def test_export_arguments_are_ones_the_export_accepts(kustomization: str, kind: str, name: str) -> None:
    _, item = _service(kustomization, kind, name)
    assert item["command"] == ["python", "-m", "export"]
    args = build_parser().parse_args(item["args"])  # exits (SystemExit) on an unknown option
    if args.checkpoint == "pretrained":
        pretrained_url(args.variant, args.image_size)  # raises for a variant/size with no release
    # The only setting the export reads, on a writable volume.
    variables = {k for k in env_of(item) if k.startswith(ENV_PREFIX)}
    assert variables == {CACHE_ENV}
    assert env_of(item).items() >= ORT_TELEMETRY.items(), "the export's verification runs ONNX Runtime"
    assert not _mount_of(item, env_of(item)[CACHE_ENV]).get("readOnly")
    for path in filter(None, (args.output, args.triton_repo)):
        assert not _mount_of(item, path).get("readOnly"), path


@pytest.mark.parametrize(("kustomization", "kind"), [(k, kd) for k, kd, _ in SERVICE_CONTAINERS])
def test_the_export_writes_the_file_the_service_reads(kustomization: str, kind: str) -> None:
    spec = pod_spec(one(kustomization, kind))
    export = container(spec, EXPORT_CONTAINER)
    service = next(c for c in spec["containers"] if c["name"] in (SERVICE_CONTAINER, "kserve-container"))
    output = build_parser().parse_args(export["args"]).output
    assert output == str(_settings(service).model_path)
    assert _mount_of(export, output)["name"] == _mount_of(service, output)["name"]
    assert export in spec["initContainers"], "the model must exist before the service starts"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_the_adapter_rule_serves_the_metric_the_autoscaler_asks_for(overlay: str) -> None:
    (metric,) = one(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    wanted = metric["pods"]["metric"]["name"]
    served = {}
    for rule in adapter_rules():
        series = re.match(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)\{", rule["seriesQuery"])
        assert series, f"cannot read the series of {rule['seriesQuery']!r}"
        # The adapter's naming: Go's regexp replace, ${1} -> \1.
        as_name = re.sub(r"\$\{(\d+)\}", r"\\\1", rule["name"]["as"])
        served[re.sub(rule["name"]["matches"], as_name, series[1])] = rule
    assert wanted in served, f"the HPA asks for {wanted}; the adapter serves {sorted(served)}"
    rule = served[wanted]
    assert rule["resources"]["overrides"] == {
        "namespace": {"resource": "namespace"},
        "pod": {"resource": "pod"},
    }
    for placeholder in ("<<.Series>>", "<<.LabelMatchers>>", "<<.GroupBy>>"):
        assert placeholder in rule["metricsQuery"], placeholder


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_autoscaler_target_is_at_most_one_batch_queued_per_pod(overlay: str) -> None:
    (metric,) = one(overlay, "HorizontalPodAutoscaler")["spec"]["metrics"]
    settings = _settings(container(pod_spec(one(overlay, "Deployment")), SERVICE_CONTAINER))
    target = float(metric["pods"]["target"]["averageValue"])
    assert 1 <= target <= settings.max_batch_size


def test_custom_predictor_runs_the_cpu_deployments_container() -> None:
    deployment = pod_spec(one("overlays/cpu", "Deployment"))
    predictor = pod_spec(one("kserve/custom-predictor", "InferenceService"))
    ours, theirs = container(deployment, SERVICE_CONTAINER), container(predictor, "kserve-container")
    assert env_of(theirs) == {**env_of(ours), "PROTOCOL": "v2"}
    same = ("image", "command", "ports", "resources", "lifecycle", "securityContext", "volumeMounts")
    for field in (*same, "startupProbe", "livenessProbe", "readinessProbe"):
        assert theirs[field] == ours[field], field
    assert container(predictor, EXPORT_CONTAINER) == container(deployment, EXPORT_CONTAINER)
    for field in ("terminationGracePeriodSeconds", "securityContext", "volumes"):
        assert predictor[field] == deployment[field], field
    # HTTP first: KServe routes the InferenceService's port 80 to the first container port.
    assert theirs["ports"][0]["name"] == "http"


def test_custom_predictor_speaks_v2_on_both_ports_in_raw_deployment_mode() -> None:
    isvc = one("kserve/custom-predictor", "InferenceService")
    # Knative (Serverless) mode allows one port per container.
    assert isvc["metadata"]["annotations"]["serving.kserve.io/deploymentMode"] == "RawDeployment"
    item = container(pod_spec(isvc), "kserve-container")
    assert env_of(item)["PROTOCOL"] == "v2"
    assert [p["name"] for p in item["ports"]] == ["http", "grpc"]
    assert pod_spec(isvc)["timeout"] >= _settings(item).request_timeout_s


def test_triton_serves_the_repository_the_export_job_writes() -> None:
    job = container(pod_spec(one("kserve/triton", "Job")), "export")
    args = build_parser().parse_args(job["args"])
    assert args.triton_repo, "the Job must write a Triton repository"
    mount = _mount_of(job, args.triton_repo)
    volume = next(v for v in pod_spec(one("kserve/triton", "Job"))["volumes"] if v["name"] == mount["name"])
    claim = volume["persistentVolumeClaim"]["claimName"]
    assert claim == one("kserve/triton", "PersistentVolumeClaim")["metadata"]["name"]
    inside = PurePosixPath(args.triton_repo).relative_to(mount["mountPath"])
    model = pod_spec(one("kserve/triton", "InferenceService"))["model"]
    assert model["storageUri"] == f"pvc://{claim}/{inside}"
    assert model["modelFormat"]["name"] == "triton" and model["protocolVersion"] == "v2"
    # The repository's config.pbtxt asks for a GPU instance (export/triton.py's default).
    assert model["resources"]["limits"]["nvidia.com/gpu"] == "1"
