"""compose.yaml and docker/nginx.conf: services point at real Dockerfile stages, settings are real
settings, and the load balancer's limits agree with the service's."""

from __future__ import annotations

import re
from typing import Any

import pytest

from app.http.middleware import REQUEST_ID_HEADER
from app.pipeline import Limits
from app.settings import ENV_PREFIX, Settings
from tests.docker.conftest import ROOT
from tests.docker.dockerfile import Stage

SERVICE_PORT = 8000


def _env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) for item in env)
    return {k: str(v) for k, v in env.items()}


def _interpolate(value: str) -> str:
    """Compose's `${VAR:-default}` with nothing set in the environment: the default."""
    return re.sub(r"\$\{[A-Z_]+:-([^}]*)\}", r"\1", value)


def _settings_for(service: dict[str, Any]) -> Settings:
    """The service's settings as the container would read them (model file checks not included)."""
    fields = {k[len(ENV_PREFIX) :].lower(): _interpolate(v) for k, v in _env(service).items()}
    return Settings.model_validate(fields)


def _seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+(?:\.\d+)?)(ms|s|m)?", value)
    assert match, f"cannot read duration {value!r}"
    return float(match[1]) * {"ms": 0.001, "s": 1, "m": 60, None: 1}[match[2]]


def _nginx_size(value: str) -> int:
    match = re.fullmatch(r"(\d+)([kmg]?)", value.lower())
    assert match, value
    return int(match[1]) * {"": 1, "k": 1024, "m": 1024**2, "g": 1024**3}[match[2]]


def _directive(conf: str, name: str) -> str:
    values = re.findall(rf"^\s*{name}\s+([^;]+);", conf, re.MULTILINE)
    assert len(values) == 1, f"nginx.conf: expected one {name}, found {values}"
    return values[0].strip()


def test_every_service_builds_a_stage_that_exists_in_the_dockerfile(
    compose: dict[str, Any], stages: list[Stage]
) -> None:
    built = {name: svc["build"] for name, svc in compose["services"].items() if "build" in svc}
    assert set(built) == {"transxnet", "transxnet-gpu", "transxnet-replica"}
    for name, build in built.items():
        assert (ROOT / build["context"] / build["dockerfile"]).is_file(), name
        assert build["target"] in {s.name for s in stages}, f"{name}: no stage {build['target']}"


def test_default_service_is_the_cpu_image_on_port_8000_without_a_profile(compose: dict[str, Any]) -> None:
    service = compose["services"]["transxnet"]
    assert "profiles" not in service, "plain `docker compose up` must start it"
    assert service["build"]["target"] == "runtime"
    # HTTP on 8000; gRPC (8001 in the container) on 9000: the GPU service's HTTP has the host's 8001.
    assert [_interpolate(p) for p in service["ports"]] == [f"{SERVICE_PORT}:{SERVICE_PORT}", "9000:8001"]
    assert service["restart"] in ("unless-stopped", "always")
    limits = service["deploy"]["resources"]["limits"]
    assert float(_interpolate(limits["cpus"])) > 0 and limits["memory"]


def test_only_the_default_service_runs_without_a_profile(compose: dict[str, Any]) -> None:
    unprofiled = [name for name, svc in compose["services"].items() if not svc.get("profiles")]
    assert unprofiled == ["transxnet"]


def test_cpu_service_threads_match_its_cpu_limit(compose: dict[str, Any]) -> None:
    # ONNX Runtime would otherwise size its pool from the host's cores and oversubscribe the quota.
    for name in ("transxnet", "transxnet-replica"):
        service = compose["services"][name]
        cpus = _interpolate(service["deploy"]["resources"]["limits"]["cpus"])
        assert _interpolate(_env(service)["TRANSXNET_INTRA_OP_THREADS"]) == cpus


@pytest.mark.parametrize("name", ["transxnet", "transxnet-gpu", "transxnet-replica"])
def test_services_healthcheck_probes_readyz(compose: dict[str, Any], name: str) -> None:
    check = compose["services"][name]["healthcheck"]
    assert check["test"][0] == "CMD" and check["test"][1] == "python"
    assert "/readyz" in check["test"][-1]


@pytest.mark.parametrize("name", ["transxnet", "transxnet-gpu", "transxnet-replica"])
def test_service_environment_names_only_real_settings_with_valid_values(
    compose: dict[str, Any], name: str
) -> None:
    env = _env(compose["services"][name])
    unknown = {k for k in env if k.startswith(ENV_PREFIX)} - {
        ENV_PREFIX + f.upper() for f in Settings.model_fields
    }
    assert not unknown, f"{name}: not settings (typo?): {unknown}"
    _settings_for(compose["services"][name])  # raises on an invalid value


def test_user_models_are_mounted_read_only(compose: dict[str, Any]) -> None:
    for name in ("transxnet", "transxnet-gpu", "transxnet-replica"):
        volumes = compose["services"][name]["volumes"]
        assert any(v.endswith(":/models:ro") for v in volumes), name


def test_gpu_profile_reserves_an_nvidia_gpu_and_keeps_the_trt_cache(compose: dict[str, Any]) -> None:
    service = compose["services"]["transxnet-gpu"]
    assert service["profiles"] == ["gpu"]
    assert service["build"]["target"] == "runtime-gpu"
    devices = service["deploy"]["resources"]["reservations"]["devices"]
    assert devices == [{"driver": "nvidia", "count": 1, "capabilities": ["gpu"]}]
    cache = _env(service)["TRANSXNET_TRT_CACHE_DIR"]
    volume = next(v for v in service["volumes"] if v.endswith(f":{cache}"))
    assert volume.split(":")[0] in compose["volumes"], "the TRT cache must be a named volume"


def test_services_publishing_ports_do_not_collide(compose: dict[str, Any]) -> None:
    host_ports = [
        _interpolate(p).split(":")[0] for svc in compose["services"].values() for p in svc.get("ports", [])
    ]
    assert len(host_ports) == len(set(host_ports)), host_ports
    assert "ports" not in compose["services"]["transxnet-replica"], "--scale would collide on a host port"


def test_stop_grace_period_outlasts_the_services_drain(compose: dict[str, Any]) -> None:
    for name in ("transxnet", "transxnet-gpu", "transxnet-replica"):
        service = compose["services"][name]
        settings = _settings_for(service)
        drain = settings.shutdown_grace_s + settings.shutdown_timeout_s
        assert _seconds(service["stop_grace_period"]) > drain, name


# --- nginx --------------------------------------------------------------------------------------


def test_scale_profile_puts_nginx_in_front_of_the_replicas(compose: dict[str, Any], nginx_conf: str) -> None:
    nginx = compose["services"]["nginx"]
    assert nginx["profiles"] == ["scale"]
    assert compose["services"]["transxnet-replica"]["profiles"] == ["scale"]
    assert nginx["depends_on"]["transxnet-replica"]["condition"] == "service_healthy"
    mount = next(v for v in nginx["volumes"] if v.endswith(":/etc/nginx/nginx.conf:ro"))
    assert (ROOT / mount.split(":")[0]).resolve() == (ROOT / "docker" / "nginx.conf")
    servers = re.findall(r"^\s*server\s+([\w.-]+):(\d+)\b", nginx_conf, re.MULTILINE)
    assert servers == [("transxnet-replica", str(SERVICE_PORT))]


def test_nginx_re_resolves_replicas_through_docker_dns(compose: dict[str, Any], nginx_conf: str) -> None:
    assert "127.0.0.11" in _directive(nginx_conf, "resolver")
    assert re.search(r"^\s*server\s+\S+\s+resolve\b", nginx_conf, re.MULTILINE)
    assert re.search(r"^\s*zone\s+\S+", nginx_conf, re.MULTILINE), "`resolve` needs a shared zone"
    # `server ... resolve` exists in open-source nginx from 1.27.3 on.
    version = tuple(
        int(x) for x in re.search(r":(\d+)\.(\d+)\.(\d+)", compose["services"]["nginx"]["image"]).groups()
    )
    assert version >= (1, 27, 3)


def test_nginx_body_limit_admits_the_services_largest_request_and_little_more(
    compose: dict[str, Any], nginx_conf: str
) -> None:
    settings = _settings_for(compose["services"]["transxnet-replica"])
    service_limit = Limits.from_settings(settings, image_size=224).max_request_bytes  # compose's T
    nginx_limit = _nginx_size(_directive(nginx_conf, "client_max_body_size"))
    assert service_limit <= nginx_limit <= service_limit + 2 * 1024**2


def test_nginx_waits_longer_than_the_services_request_timeout(
    compose: dict[str, Any], nginx_conf: str
) -> None:
    timeout = _settings_for(compose["services"]["transxnet-replica"]).request_timeout_s
    assert _seconds(_directive(nginx_conf, "proxy_read_timeout")) > timeout


def test_nginx_retries_503_once_with_buffered_bodies(nginx_conf: str) -> None:
    retry_on = _directive(nginx_conf, "proxy_next_upstream").split()
    assert "http_503" in retry_on and "non_idempotent" in retry_on
    assert _directive(nginx_conf, "proxy_next_upstream_tries") == "2"
    # Unbuffered bodies cannot be replayed to another upstream.
    assert not re.search(r"^\s*proxy_request_buffering\s+off", nginx_conf, re.MULTILINE)


def test_nginx_forwards_and_logs_the_same_request_id_the_service_echoes(nginx_conf: str) -> None:
    header, variable = re.search(
        r"^\s*proxy_set_header\s+(X-Request-ID)\s+\$(\w+);", nginx_conf, re.M
    ).groups()
    assert header.lower() == REQUEST_ID_HEADER
    # The client's ID when it sent one, else nginx's own.
    mapping = re.search(rf"map\s+\$http_x_request_id\s+\${variable}\s*{{([^}}]*)}}", nginx_conf).group(1)
    assert re.search(r"^\s*default\s+\$http_x_request_id;", mapping, re.M)
    assert re.search(r'^\s*""\s+\$request_id;', mapping, re.M)
    log_name = _directive(nginx_conf, "access_log").split()[1]
    log_format = re.search(rf"log_format\s+{log_name}\s+([^;]+);", nginx_conf).group(1)
    assert f"${variable}" in log_format


def test_deploy_doc_lists_every_setting_with_its_default() -> None:
    doc = (ROOT / "docs" / "deploy.md").read_text()
    rows = dict(re.findall(r"^\| `(TRANSXNET_[A-Z0-9_]+)` \| `?([^`|]*)`? \|", doc, re.MULTILINE))
    for name, field in Settings.model_fields.items():
        variable = ENV_PREFIX + name.upper()
        assert variable in rows, f"docs/deploy.md: no row for {variable}"
        default = field.default
        if default is not None:
            expected = str(default).lower() if isinstance(default, bool) else str(default)
            assert rows[variable].strip() == expected, f"{variable}: doc says {rows[variable]!r}"
