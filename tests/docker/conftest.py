"""Fixtures for the deployment files: parsed Dockerfile/compose/nginx config, and (built once per
session) a model exported by the Dockerfile's own export command and a way to run the image's CMD
on the host. There is no Docker engine here, so the containers' commands run as host processes."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.docker.dockerfile import Stage, parse_dockerfile, stage_named

ROOT = Path(__file__).resolve().parents[2]
DOCKERFILE = ROOT / "docker" / "Dockerfile"
COMPOSE_FILE = ROOT / "compose.yaml"
NGINX_CONF = ROOT / "docker" / "nginx.conf"

#: Where the image keeps things -> where the host tests put them.
CONTEXT_MOUNT = "/context/"
EXPORT_DIR = "/export/"
#: Upper bound for a service to become ready on this 2-core machine (a hang guard, not an assertion).
READY_DEADLINE_S = 240.0


@pytest.fixture(scope="session")
def stages() -> list[Stage]:
    return parse_dockerfile(DOCKERFILE)


@pytest.fixture(scope="session")
def compose() -> dict[str, Any]:
    return yaml.safe_load(COMPOSE_FILE.read_text())


@pytest.fixture(scope="session")
def nginx_conf() -> str:
    # Comments out, so a directive mentioned in prose is never mistaken for a real one.
    return "\n".join(line.split("#", 1)[0] for line in NGINX_CONF.read_text().splitlines())


def export_command(stages: list[Stage], output_dir: Path) -> tuple[str, dict[str, str]]:
    """The export stage's `python -m export` RUN as host shell text, with the build args' defaults.

    Only the image's absolute paths are rewritten (build context -> repo, /export -> `output_dir`);
    every other character runs as written in the Dockerfile.
    """
    stage = stage_named(stages, "export")
    runs = [inst for inst in stage.find("RUN") if "python -m export" in inst.args]
    assert len(runs) == 1, "the export stage must have exactly one RUN with `python -m export`"
    script = runs[0].run_script()
    for image_path in (CONTEXT_MOUNT, EXPORT_DIR):
        assert image_path in script, f"{image_path} no longer appears in the export RUN: update the test"
    script = script.replace(CONTEXT_MOUNT, f"{ROOT}/").replace(EXPORT_DIR, f"{output_dir}/")
    return script, stage.arg_defaults()


def host_env(**overrides: str) -> dict[str, str]:
    """This environment with the venv's `python` first on PATH and no stray service settings."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSXNET_")}
    env["PATH"] = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    env["PYTHONUNBUFFERED"] = "1"
    env.update(overrides)
    return env


@pytest.fixture(scope="session")
def exported_model(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """TransXNet-T exported by the Dockerfile's own RUN line with the offline build argument."""
    out = tmp_path_factory.mktemp("export")
    script, args = export_command(stages, out)
    env = host_env(**{**args, "TRANSXNET_CHECKPOINT": "random"})
    # /bin/sh, as `RUN` uses; cwd = the sources, as the stage's WORKDIR holds them.
    done = subprocess.run(
        ["/bin/sh", "-c", script], cwd=ROOT, env=env, capture_output=True, text=True, check=False
    )
    assert done.returncode == 0, f"export RUN failed:\n{done.stdout[-4000:]}\n{done.stderr[-4000:]}"
    models = sorted(out.glob("*.onnx"))
    assert models, f"the export RUN wrote no .onnx into {out}: {sorted(out.iterdir())}"
    return models[0]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def http_status(url: str) -> int | None:
    """The status code, or None when nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return int(response.status)
    except urllib.error.HTTPError as exc:
        return int(exc.code)
    except (urllib.error.URLError, OSError):
        return None


@dataclass
class RunningService:
    process: subprocess.Popen[str]
    port: int
    env: dict[str, str]
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-6000:]


def wait_ready(service: RunningService) -> int | None:
    """Poll /readyz until 200, the process exits, or the hang guard passes; the last status seen."""
    deadline = time.monotonic() + READY_DEADLINE_S
    status = None
    while time.monotonic() < deadline and service.process.poll() is None:
        status = http_status(f"{service.base_url}/readyz")
        if status == 200:
            return status
        time.sleep(0.5)
    return status


@contextmanager
def run_service(argv: Sequence[str], env: dict[str, str], cwd: Path, log: Path) -> Iterator[RunningService]:
    """Start the service as the container would, on a free loopback port; SIGTERM it afterwards."""
    port = free_port()
    # gRPC on a free port too: the image's 8001 may be taken by another test's service.
    env = {
        **env,
        "TRANSXNET_HOST": "127.0.0.1",
        "TRANSXNET_PORT": str(port),
        "TRANSXNET_GRPC_PORT": str(free_port()),
    }
    with log.open("w") as sink:
        process = subprocess.Popen(
            list(argv), cwd=cwd, env=env, stdout=sink, stderr=subprocess.STDOUT, text=True
        )
    service = RunningService(process, port, env, log)
    try:
        yield service
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=60)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def image_argv(argv: Sequence[str], python: str) -> list[str]:
    """An exec-form command with the image's `python` replaced by a host interpreter."""
    assert argv and argv[0] in ("python", "python3"), f"expected a python command, got {argv}"
    return [python, *argv[1:]]


def mapped_env(image_env: dict[str, str], replacements: dict[str, str]) -> dict[str, str]:
    """The stage's TRANSXNET_* ENV with image paths replaced by host paths."""
    ours = {key: value for key, value in image_env.items() if key.startswith("TRANSXNET_")}
    return {key: replacements.get(value, value) for key, value in ours.items()}
