"""The cpu overlay's container, run as a real process: its own command, the image's ENV overlaid by
its own environment (only the model path and the ports swapped for local ones, `python` for this
interpreter). Its probes answer as the probes expect, /metrics exposes the autoscaler's metric, it
writes nothing outside the volumes the manifest mounts writable (traced with strace), and after
SIGTERM with a request in flight it answers that request and exits 0 within the time Kubernetes
gives it (terminationGracePeriodSeconds less the preStop sleep, which runs before SIGTERM)."""

from __future__ import annotations

import re
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from tests.deploy.manifests import ROOT, SERVICE_CONTAINER, container, env_of, one, pod_spec
from tests.docker.dockerfile import parse_dockerfile, stage_named
from tests.support.fake_model import build_fake_model
from tests.support.images import encoded_image
from tests.support.processes import free_port, running_process, service_env, status_of, wait_for

pytestmark = pytest.mark.slow

OVERLAY = "overlays/cpu"
#: Hang guard for start-up on a busy 2-core machine (not a timing assertion).
START_DEADLINE_S = 120
#: Paths a container may write besides its writable volumes: devices, which are not the image's
#: filesystem.
DEVICE_PATHS = ("/dev/null", "/dev/shm/", "/dev/tty")
#: The system calls that create, change or remove files.
WRITE_CALLS = "openat,open,creat,mkdir,mkdirat,rename,renameat,renameat2,unlink,unlinkat,link,linkat,symlink,symlinkat,truncate"  # noqa: E501
PNG = {"content-type": "image/png"}


@dataclass
class Pod:
    """What the test needs of the manifest: the service container and the pod around it."""

    spec: dict[str, Any]
    item: dict[str, Any]

    @property
    def env(self) -> dict[str, str]:
        return env_of(self.item)

    def probe_path(self, probe: str) -> str:
        return self.item[probe]["httpGet"]["path"]

    @property
    def writable_paths(self) -> list[str]:
        return [m["mountPath"] for m in self.item["volumeMounts"] if not m.get("readOnly")]

    @property
    def sigterm_budget_s(self) -> float:
        """How long Kubernetes waits after SIGTERM before SIGKILL."""
        pre_stop_s = self.item["lifecycle"]["preStop"]["sleep"]["seconds"]
        return self.spec["terminationGracePeriodSeconds"] - pre_stop_s


@pytest.fixture(scope="module")
def pod() -> Pod:
    spec = pod_spec(one(OVERLAY, "Deployment"))
    return Pod(spec, container(spec, SERVICE_CONTAINER))


@pytest.fixture(scope="module")
def model(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return build_fake_model(tmp_path_factory.mktemp("deploy-model") / "transxnet.onnx")


def container_process(pod: Pod, model: Path, port: int, **overrides: str) -> tuple[list[str], dict[str, str]]:
    """The container's argv and environment for this host."""
    image_env = stage_named(parse_dockerfile(ROOT / "docker" / "Dockerfile"), "runtime").env()
    local = {
        "TRANSXNET_MODEL_PATH": str(model),
        "TRANSXNET_HOST": "127.0.0.1",
        "TRANSXNET_PORT": str(port),
        # Nothing listens there yet; a free port keeps a future gRPC server off a fixed number.
        "TRANSXNET_GRPC_PORT": str(free_port()),
    }
    assert local.keys() <= pod.env.keys(), "the manifest no longer sets what the test swaps"
    env = service_env(model, **{**image_env, **pod.env, **local, **overrides})
    command = [*pod.item["command"], *pod.item.get("args", [])]
    assert command[0] == "python", command
    return [sys.executable, *command[1:]], env


def metrics(base: str) -> dict[str, Any]:
    text = httpx.get(f"{base}/metrics", timeout=5).text
    return {family.name: family for family in text_string_to_metric_families(text)}


def sample(base: str, name: str) -> float:
    (value,) = [s.value for s in metrics(base)[name].samples]
    return value


@dataclass
class Running:
    process: subprocess.Popen[str]
    base: str
    trace_dir: Path | None


@pytest.fixture(scope="module")
def deployed(pod: Pod, model: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Running]:
    """The container's process, ready, under strace when strace exists (to see what it writes)."""
    port = free_port()
    argv, env = container_process(pod, model, port)
    trace_dir = None
    if shutil.which("strace"):
        trace_dir = tmp_path_factory.mktemp("strace")
        # -ff: one file per thread, so no call is split across lines of different threads.
        argv = ["strace", "-ff", "-qq", "-e", f"trace={WRITE_CALLS}", "-o", str(trace_dir / "t"), *argv]
    base = f"http://127.0.0.1:{port}"
    with running_process(argv, env) as process:
        log = lambda: process.stdout.read() if process.poll() is not None and process.stdout else ""  # noqa: E731
        wait_for(
            lambda: status_of(f"{base}{pod.probe_path('readinessProbe')}") == 200,
            START_DEADLINE_S,
            what="readiness",
            process=process,
            log=log,
        )
        yield Running(process, base, trace_dir)


def test_probe_paths_answer_as_the_probes_expect(pod: Pod, deployed: Running) -> None:
    # An httpGet probe passes on 200-399.
    for probe in ("startupProbe", "livenessProbe", "readinessProbe"):
        status = status_of(f"{deployed.base}{pod.probe_path(probe)}")
        assert status is not None and 200 <= status < 400, f"{probe} {pod.probe_path(probe)}: {status}"


def test_the_autoscalers_metric_is_a_gauge_the_service_exposes(deployed: Running) -> None:
    (metric,) = one(OVERLAY, "HorizontalPodAutoscaler")["spec"]["metrics"]
    name = metric["pods"]["metric"]["name"]
    families = metrics(deployed.base)
    assert name in families, f"/metrics has no {name}: {sorted(families)}"
    assert families[name].type == "gauge"
    assert sample(deployed.base, name) == 0  # idle: nothing queued


def _written_paths(trace_dir: Path) -> set[str]:
    """Paths that successful file-changing calls touched, from strace's per-thread logs."""
    written = set()
    call = re.compile(r'^(\w+)\((?:AT_FDCWD|\d+)?,?\s*"([^"]+)"(.*)\)\s+=\s+(-?\d+)')
    for log in trace_dir.iterdir():
        for line in log.read_text(errors="replace").splitlines():
            match = call.match(line)
            if not match or match[4].startswith("-"):
                continue  # not a call on a path, or it failed
            name, path, rest = match[1], match[2], match[3]
            if name in ("openat", "open") and not re.search(r"O_WRONLY|O_RDWR|O_CREAT|O_TRUNC", rest):
                continue
            written.add(path if path.startswith("/") else str(ROOT / path))
            # rename/link's second path is written too.
            second = re.search(r'"([^"]+)"', rest)
            if name.startswith(("rename", "link", "symlink")) and second:
                written.add(second[1])
    return written


def test_the_service_writes_only_to_its_writable_volumes(pod: Pod, deployed: Running) -> None:
    if deployed.trace_dir is None:
        pytest.skip("strace is not installed")
    response = httpx.post(f"{deployed.base}/classify", content=encoded_image(0), headers=PNG, timeout=60)
    assert response.status_code == 200
    allowed = tuple(path.rstrip("/") + "/" for path in pod.writable_paths) + DEVICE_PATHS
    outside = sorted(p for p in _written_paths(deployed.trace_dir) if not p.startswith(allowed))
    assert not outside, f"writes outside {pod.writable_paths} (read-only root filesystem): {outside}"


def test_sigterm_with_a_request_in_flight_answers_it_and_exits_in_time(pod: Pod, model: Path) -> None:
    grace_s = float(pod.env["TRANSXNET_SHUTDOWN_GRACE_S"])
    # The only change from the manifest: the first image waits (grace + 2) s for batch-mates, so the
    # request is still in flight after the grace period, when the listener has closed.
    delay_ms = str(int((grace_s + 2) * 1000))
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    argv, env = container_process(
        pod, model, port, TRANSXNET_BATCH_WAIT="always", TRANSXNET_MAX_BATCH_DELAY_MS=delay_ms
    )
    with running_process(argv, env) as process, ThreadPoolExecutor(1) as pool:
        wait_for(lambda: status_of(f"{base}/readyz") == 200, START_DEADLINE_S, what="ready", process=process)
        image = encoded_image(1)
        request = pool.submit(httpx.post, f"{base}/classify", content=image, headers=PNG, timeout=60)
        wait_for(lambda: sample(base, "transxnet_queue_depth") >= 1, what="the image queued")
        process.send_signal(signal.SIGTERM)
        sent = time.monotonic()
        # Readiness drops at once.
        readiness = f"{base}{pod.probe_path('readinessProbe')}"
        wait_for(lambda: status_of(readiness) == 503, 5, what="readiness 503")
        response = request.result(timeout=pod.sigterm_budget_s)
        assert response.status_code == 200, response.text
        code = process.wait(timeout=max(1.0, pod.sigterm_budget_s - (time.monotonic() - sent)))
        output = process.stdout.read() if process.stdout else ""
        assert code == 0, output[-3000:]
