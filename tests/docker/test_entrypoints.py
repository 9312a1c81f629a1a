"""The images' commands, read from docker/Dockerfile and compose.yaml, run on the host: the export
stage's RUN (offline build argument), the runtime stage's CMD, and both healthchecks. If the
container's entrypoint drifts from what works, these fail."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from runtime.metadata import KEY_PREFIX
from tests.docker.conftest import (
    ROOT,
    free_port,
    host_env,
    image_argv,
    mapped_env,
    run_service,
    wait_ready,
)
from tests.docker.dockerfile import Stage, stage_named

pytestmark = pytest.mark.slow

IMAGE_MODEL = "/app/models/transxnet.onnx"


@pytest.fixture(scope="module")
def cpu_service(stages: list[Stage], exported_model: Path, tmp_path_factory: pytest.TempPathFactory):
    """The runtime stage's CMD with its ENV (image paths -> host paths), serving the exported model."""
    runtime = stage_named(stages, "runtime")
    (cmd,) = runtime.find("CMD")
    env = host_env(**mapped_env(runtime.env(), {IMAGE_MODEL: str(exported_model)}))
    assert env["TRANSXNET_MODEL_PATH"] == str(exported_model), "the image's model path moved"
    log = tmp_path_factory.mktemp("service") / "service.log"
    with run_service(image_argv(cmd.exec_form(), sys.executable), env, ROOT, log) as service:
        yield service


def _run_check(argv: list[str], port: int) -> subprocess.CompletedProcess[str]:
    env = host_env(TRANSXNET_PORT=str(port))
    return subprocess.run(
        image_argv(argv, sys.executable), env=env, capture_output=True, text=True, timeout=60, check=False
    )


def test_export_run_writes_a_random_init_model_recording_its_provenance(exported_model: Path) -> None:
    import onnxruntime as ort

    session = ort.InferenceSession(str(exported_model), providers=["CPUExecutionProvider"])
    props = session.get_modelmeta().custom_metadata_map
    assert json.loads(props[f"{KEY_PREFIX}pretrained"]) is False
    assert "random" in props[f"{KEY_PREFIX}weights"]
    assert props[f"{KEY_PREFIX}variant"] == "transxnet_t"


def test_runtime_cmd_serves_the_exported_model_until_ready(cpu_service) -> None:
    status = wait_ready(cpu_service)
    assert status == 200, f"/readyz answered {status}\n{cpu_service.output()}"


def test_image_healthcheck_passes_against_the_ready_service(stages: list[Stage], cpu_service) -> None:
    assert wait_ready(cpu_service) == 200, cpu_service.output()
    (check,) = stage_named(stages, "runtime").find("HEALTHCHECK")
    done = _run_check(check.exec_form(), cpu_service.port)
    assert done.returncode == 0, done.stderr


def test_image_healthcheck_fails_where_nothing_answers(stages: list[Stage]) -> None:
    (check,) = stage_named(stages, "runtime").find("HEALTHCHECK")
    assert _run_check(check.exec_form(), free_port()).returncode != 0


def test_compose_healthcheck_passes_against_the_ready_service(compose: dict[str, Any], cpu_service) -> None:
    assert wait_ready(cpu_service) == 200, cpu_service.output()
    test = compose["services"]["transxnet"]["healthcheck"]["test"]
    assert test[0] == "CMD"
    done = _run_check(test[1:], cpu_service.port)
    assert done.returncode == 0, done.stderr
    assert _run_check(test[1:], free_port()).returncode != 0
