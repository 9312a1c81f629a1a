"""Validation of the objects whose kinds are not Kubernetes' own: KServe's InferenceService and the
Prometheus Operator's ServiceMonitor.

kubernetes-validate bundles only the built-in kinds, and the CRDs' own schemas are large generated
files of other projects. So the schemas here are written from those projects' API types and
validate strictly (no unknown field) at every level this project sets:

- InferenceService (serving.kserve.io/v1beta1, KServe's `PredictorSpec`): the predictor inlines a
  Kubernetes PodSpec and KServe's `ComponentExtensionSpec`; `model` is a Kubernetes Container plus
  `modelFormat`, `runtime`, `protocolVersion`, `storageUri`. Every PodSpec and Container field is
  checked against kubernetes-validate's Kubernetes 1.32 definitions, the KServe fields against the
  types and enums of KServe's `pkg/apis/serving/v1beta1` (component.go, predictor.go, model.go).
- ServiceMonitor (monitoring.coreos.com/v1): the fields of the operator's `ServiceMonitorSpec` and
  `Endpoint`, with the CRD's duration pattern and scheme enum; the selector is a Kubernetes
  LabelSelector.
"""

from __future__ import annotations

import copy
import functools
import json
from importlib import resources
from typing import Any

import jsonschema
import referencing
import referencing.jsonschema

K8S_VERSION = "1.32"
_DEFS_URI = "https://kubernetes.io/api/_definitions.json"
_DEFS_FILE = "/api/_definitions.json"
_DEFS = _DEFS_FILE + "#/$defs/"


@functools.cache
def _k8s_definitions() -> dict[str, Any]:
    folder = f"kubernetes-json-schema/v{K8S_VERSION}.0-local-strict"
    ref = resources.files("kubernetes_validate").joinpath(folder, "_definitions.json")
    return json.loads(ref.read_text())


def _k8s(name: str) -> dict[str, Any]:
    return {"$ref": f"{_DEFS}io.k8s.{name}"}


def _rebased(schema: Any) -> Any:
    """`schema` with the definitions file's local `#/$defs/...` references made absolute, so they
    resolve from inside another schema."""
    if isinstance(schema, dict):
        return {
            key: (_DEFS_FILE + value if key == "$ref" and value.startswith("#/") else _rebased(value))
            for key, value in schema.items()
        }
    if isinstance(schema, list):
        return [_rebased(item) for item in schema]
    return schema


def _properties_of(name: str) -> dict[str, Any]:
    """The property schemas of a Kubernetes definition, references rebased."""
    return _rebased(copy.deepcopy(_k8s_definitions()["$defs"][f"io.k8s.{name}"]["properties"]))


def _strict(properties: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    return {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
        "required": list(required),
    }


_STRING_MAP = {"type": "object", "additionalProperties": {"type": "string"}}
_INT = {"type": "integer"}
_DURATION = {
    "type": "string",
    "pattern": r"^(0|(([0-9]+)y)?(([0-9]+)w)?(([0-9]+)d)?(([0-9]+)h)?(([0-9]+)m)?(([0-9]+)s)?(([0-9]+)ms)?)$",
}


def _component_extension() -> dict[str, Any]:
    """KServe's ComponentExtensionSpec (component.go)."""
    return {
        "minReplicas": {"type": "integer", "minimum": 0},
        "maxReplicas": {"type": "integer", "minimum": 0},
        "scaleTarget": _INT,
        "scaleMetric": {"enum": ["cpu", "memory", "concurrency", "rps"]},
        "containerConcurrency": {"type": "integer", "minimum": 0},
        "timeout": _INT,
        "canaryTrafficPercent": _INT,
        "logger": {"type": "object"},
        "batcher": {"type": "object"},
        "labels": _STRING_MAP,
        "annotations": _STRING_MAP,
        "deploymentStrategy": _k8s("api.apps.v1.DeploymentStrategy"),
    }


def _model_spec() -> dict[str, Any]:
    """KServe's ModelSpec: a Container (its name optional) plus the model's location and format."""
    properties = _properties_of("api.core.v1.Container")
    properties |= {
        "modelFormat": _strict({"name": {"type": "string"}, "version": {"type": "string"}}, ("name",)),
        "runtime": {"type": "string"},
        "runtimeVersion": {"type": "string"},
        "protocolVersion": {"enum": ["v1", "v2", "grpc-v1", "grpc-v2"]},
        "storageUri": {"type": "string", "pattern": r"^(gs|s3|pvc|hdfs|webhdfs|oci|hf|https?)://\S+$"},
        "storage": {"type": "object"},
    }
    return _strict(properties)


def inference_service_schema() -> dict[str, Any]:
    predictor = _properties_of("api.core.v1.PodSpec")
    predictor |= _component_extension()
    predictor["model"] = _model_spec()
    predictor["workerSpec"] = {"type": "object"}
    # PodSpec requires `containers`; a predictor with a `model` has none.
    spec = _strict({"predictor": _strict(predictor), "transformer": {"type": "object"}}, ("predictor",))
    return {
        "$id": "https://kubernetes.io/api/kserve-inferenceservice.json",
        **_strict(
            {
                "apiVersion": {"const": "serving.kserve.io/v1beta1"},
                "kind": {"const": "InferenceService"},
                "metadata": _k8s("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": spec,
            },
            ("apiVersion", "kind", "metadata", "spec"),
        ),
    }


def _endpoint() -> dict[str, Any]:
    """The Prometheus Operator's Endpoint (the scrape of one Service port)."""
    return _strict(
        {
            "port": {"type": "string"},
            "targetPort": {"type": ["string", "integer"]},
            "path": {"type": "string"},
            "scheme": {"enum": ["http", "https", "HTTP", "HTTPS"]},
            "params": {"type": "object"},
            "interval": _DURATION,
            "scrapeTimeout": _DURATION,
            "honorLabels": {"type": "boolean"},
            "honorTimestamps": {"type": "boolean"},
            "trackTimestampsStaleness": {"type": "boolean"},
            "filterRunning": {"type": "boolean"},
            "followRedirects": {"type": "boolean"},
            "enableHttp2": {"type": "boolean"},
            "proxyUrl": {"type": "string"},
            "relabelings": {"type": "array", "items": {"type": "object"}},
            "metricRelabelings": {"type": "array", "items": {"type": "object"}},
            "tlsConfig": {"type": "object"},
            "authorization": {"type": "object"},
            "basicAuth": {"type": "object"},
            "oauth2": {"type": "object"},
            "bearerTokenSecret": {"type": "object"},
        }
    )


def service_monitor_schema() -> dict[str, Any]:
    spec = _strict(
        {
            "selector": _k8s("apimachinery.pkg.apis.meta.v1.LabelSelector"),
            "endpoints": {"type": "array", "items": _endpoint(), "minItems": 1},
            "namespaceSelector": _strict(
                {"any": {"type": "boolean"}, "matchNames": {"type": "array", "items": {"type": "string"}}}
            ),
            "jobLabel": {"type": "string"},
            "targetLabels": {"type": "array", "items": {"type": "string"}},
            "podTargetLabels": {"type": "array", "items": {"type": "string"}},
            "sampleLimit": _INT,
            "targetLimit": _INT,
            "scrapeClass": {"type": "string"},
            "attachMetadata": {"type": "object"},
        },
        ("selector", "endpoints"),
    )
    return {
        "$id": "https://kubernetes.io/api/monitoring-servicemonitor.json",
        **_strict(
            {
                "apiVersion": {"const": "monitoring.coreos.com/v1"},
                "kind": {"const": "ServiceMonitor"},
                "metadata": _k8s("apimachinery.pkg.apis.meta.v1.ObjectMeta"),
                "spec": spec,
            },
            ("apiVersion", "kind", "metadata", "spec"),
        ),
    }


SCHEMAS = {
    ("serving.kserve.io/v1beta1", "InferenceService"): inference_service_schema,
    ("monitoring.coreos.com/v1", "ServiceMonitor"): service_monitor_schema,
}


def validate_custom_resource(obj: dict[str, Any]) -> None:
    """Raise jsonschema.ValidationError if `obj` does not fit its kind's schema; KeyError for a
    kind without one."""
    schema = SCHEMAS[(obj["apiVersion"], obj["kind"])]()
    definitions = referencing.Resource.from_contents(_k8s_definitions())
    registry = referencing.Registry().with_resource(_DEFS_URI, definitions)
    jsonschema.Draft202012Validator(schema, registry=registry).validate(obj)
