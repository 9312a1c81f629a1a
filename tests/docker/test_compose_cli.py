"""compose.yaml through a real Compose CLI: the whole file rendered (`config`, which validates it and
interpolates every `${VAR:-default}`) for every profile combination. Debian's `docker-compose`
(v1, installed by scripts/_system.sh) does this offline, without a Docker engine; the `docker
compose` plugin is used where it exists. Under CI (CI=true) a missing CLI fails instead of skipping:
there, scripts/_system.sh has installed it."""

from __future__ import annotations

import os
import shutil
import subprocess
from typing import Any

import pytest
import yaml

from tests.docker.conftest import COMPOSE_FILE

#: Services each profile adds to the default one.
BY_PROFILE = {"gpu": {"transxnet-gpu"}, "scale": {"transxnet-replica", "nginx"}}


def compose_cli() -> list[str] | None:
    """`docker compose` if the plugin answers, else Debian's `docker-compose`, else None."""
    if shutil.which("docker"):
        probe = subprocess.run(["docker", "compose", "version"], capture_output=True, check=False)
        if probe.returncode == 0:
            return ["docker", "compose"]
    if shutil.which("docker-compose"):
        return ["docker-compose"]
    return None


def rendered(profiles: list[str]) -> dict[str, Any]:
    cli = compose_cli()
    if cli is None:
        message = "neither the `docker compose` plugin nor docker-compose is installed"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{message}: scripts/_system.sh should have installed docker-compose")
        pytest.skip(message)
    flags = [arg for profile in profiles for arg in ("--profile", profile)]
    # No TRANSXNET_* from the caller's shell: the file's own defaults are what is checked.
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSXNET_")}
    done = subprocess.run(
        [*cli, "-f", str(COMPOSE_FILE), *flags, "config"],
        capture_output=True,
        text=True,
        check=False,
        cwd=COMPOSE_FILE.parent,
        env=env,
        timeout=120,
    )
    assert done.returncode == 0, done.stderr
    return yaml.safe_load(done.stdout)


@pytest.mark.parametrize("profiles", [[], ["gpu"], ["scale"], ["gpu", "scale"]])
def test_compose_cli_renders_the_file_for_every_profile(profiles: list[str]) -> None:
    config = rendered(profiles)
    services = config["services"]
    expected = {"transxnet"}.union(*(BY_PROFILE[p] for p in profiles))
    # docker-compose v1 renders every service whatever the profiles; the plugin the active ones.
    assert expected <= services.keys()
    for name, profile_services in BY_PROFILE.items():
        for service in profile_services & services.keys():
            assert services[service].get("profiles") == [name], service
    assert "profiles" not in services["transxnet"]


def test_compose_cli_interpolates_the_defaults() -> None:
    services = rendered([])["services"]
    environment = services["transxnet"]["environment"]
    assert environment["TRANSXNET_MODEL_PATH"] == "/app/models/transxnet.onnx"
    assert environment["TRANSXNET_INTRA_OP_THREADS"] == "2"
    assert not any("${" in str(value) for value in environment.values()), environment
