"""The runtime image's dependency set, installed the way the runtime stage installs it, into a fresh
virtual environment: it must be complete (`pip check`), torch-free, and enough to serve a model."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.docker.conftest import ROOT, host_env, image_argv, run_service, wait_ready
from tests.docker.dockerfile import Stage, stage_named

pytestmark = pytest.mark.slow

LOCK = ROOT / "docker" / "requirements-runtime.txt"
SOURCE_DIR = "/tmp/src/"


def _pip(python: Path, *args: str) -> None:
    done = subprocess.run(
        [str(python), "-m", "pip", "--disable-pip-version-check", *args],
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert done.returncode == 0, f"pip {' '.join(args)}:\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"


def _stage_sources(stage: Stage, dest: Path) -> None:
    """Copy what the stage's `COPY ... /tmp/src/...` lines copy, so the same packages get installed."""
    copied = 0
    for copy in stage.find("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        target = words[-1]
        if not target.startswith(SOURCE_DIR):
            continue
        for source in words[:-1]:
            origin = ROOT / source.rstrip("/")
            where = dest / target[len(SOURCE_DIR) :]
            if origin.is_dir():
                shutil.copytree(origin, where, ignore=shutil.ignore_patterns("__pycache__"))
            else:
                where.mkdir(parents=True, exist_ok=True)
                shutil.copy2(origin, where / origin.name)
            copied += 1
    assert copied >= 3, "the runtime stage no longer stages its sources under /tmp/src/"


@pytest.fixture(scope="module")
def runtime_venv(stages: list[Stage], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv with the lock (`--no-deps`), then the project (`--no-deps`), as the image does."""
    runtime = stage_named(stages, "runtime")
    runs = " ".join(r.args for r in runtime.find("RUN"))
    assert f"pip install --no-deps -r /tmp/{LOCK.name}" in runs, "the image installs its lock differently"
    assert f"pip install --no-deps {SOURCE_DIR.rstrip('/')}" in runs, (
        "the image installs the project differently"
    )

    root = tmp_path_factory.mktemp("runtime-venv")
    subprocess.run([sys.executable, "-m", "venv", str(root / "venv")], check=True, timeout=120)
    python = root / "venv" / "bin" / "python"
    _pip(python, "install", "--no-deps", "-r", str(LOCK))
    _stage_sources(runtime, root / "src")
    _pip(python, "install", "--no-deps", str(root / "src"))
    _pip(python, "check")
    return python


def test_runtime_set_does_not_contain_torch_or_onnx(runtime_venv: Path) -> None:
    for module in ("torch", "onnx"):
        done = subprocess.run(
            [str(runtime_venv), "-c", f"import {module}"], capture_output=True, text=True, check=False
        )
        assert done.returncode != 0 and "ModuleNotFoundError" in done.stderr, f"{module} is importable"


def test_runtime_set_serves_an_exported_model(
    stages: list[Stage], runtime_venv: Path, exported_model: Path, tmp_path: Path
) -> None:
    (cmd,) = stage_named(stages, "runtime").find("CMD")
    env = host_env(TRANSXNET_MODEL_PATH=str(exported_model), TRANSXNET_PROVIDERS="cpu")
    env["PATH"] = f"{runtime_venv.parent}:{env['PATH']}"
    # cwd outside the repository: the packages must come from the venv, as in the image.
    with run_service(image_argv(cmd.exec_form(), str(runtime_venv)), env, tmp_path, tmp_path / "log") as svc:
        status = wait_ready(svc)
        assert status == 200, f"/readyz answered {status}\n{svc.output()}"
