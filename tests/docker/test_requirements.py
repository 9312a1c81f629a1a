"""The images' lock files: exact pins that satisfy pyproject.toml, torch-free serving sets, and
onnxruntime-gpu instead of (never beside) onnxruntime."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.docker.conftest import ROOT

LOCKS = {name: ROOT / "docker" / f"requirements-{name}.txt" for name in ("runtime", "gpu", "export")}
PROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]


def _pins(path: Path) -> dict[str, Version]:
    pins = {}
    for line in path.read_text().splitlines():
        text = line.split("#", 1)[0].strip()
        if not text:
            continue
        req = Requirement(text)
        (spec,) = req.specifier  # exactly one specifier ...
        assert spec.operator == "==", f"{path.name}: {text} is not an exact pin"  # ... and exact
        name = canonicalize_name(req.name)
        assert name not in pins, f"{path.name}: {name} pinned twice"
        pins[name] = Version(spec.version)
    return pins


@pytest.mark.parametrize("lock", ["runtime", "gpu"])
def test_serving_lock_satisfies_every_runtime_dependency(lock: str) -> None:
    pins = _pins(LOCKS[lock])
    for text in PROJECT["dependencies"]:
        req = Requirement(text)
        name = canonicalize_name(req.name)
        if lock == "gpu" and name == "onnxruntime":
            name, req = "onnxruntime-gpu", Requirement(f"onnxruntime-gpu{req.specifier}")
        assert name in pins, f"{lock} lock lacks {name}"
        assert req.specifier.contains(pins[name], prereleases=True), f"{name}=={pins[name]} vs {req}"


@pytest.mark.parametrize("lock", ["runtime", "gpu"])
def test_serving_lock_has_no_training_packages(lock: str) -> None:
    assert not {"torch", "onnx", "onnxscript", "torchvision", "safetensors"} & set(_pins(LOCKS[lock]))


def test_gpu_lock_swaps_onnxruntime_for_onnxruntime_gpu() -> None:
    gpu, cpu = _pins(LOCKS["gpu"]), _pins(LOCKS["runtime"])
    assert "onnxruntime-gpu" in gpu and "onnxruntime" not in gpu
    assert "onnxruntime" in cpu and "onnxruntime-gpu" not in cpu
    # Everything else is the same tested set.
    assert {k: v for k, v in gpu.items() if k != "onnxruntime-gpu"} == {
        k: v for k, v in cpu.items() if k != "onnxruntime"
    }


def test_export_lock_plus_runtime_lock_cover_the_export_extra() -> None:
    pins = {**_pins(LOCKS["runtime"]), **_pins(LOCKS["export"])}
    for text in PROJECT["optional-dependencies"]["export"]:
        req = Requirement(text)
        if canonicalize_name(req.name) == "torch":
            continue  # installed from the PyTorch CPU index by its own Dockerfile line
        assert canonicalize_name(req.name) in pins, req.name
        assert req.specifier.contains(pins[canonicalize_name(req.name)], prereleases=True), text
    assert not set(_pins(LOCKS["export"])) & set(_pins(LOCKS["runtime"])), "pinned in both files"


def test_dockerfile_torch_pin_satisfies_the_export_extra() -> None:
    dockerfile = (ROOT / "docker" / "Dockerfile").read_text()
    version = Version(re.search(r"torch==([\w.+]+)", dockerfile)[1])
    (torch_req,) = [
        Requirement(t) for t in PROJECT["optional-dependencies"]["export"] if Requirement(t).name == "torch"
    ]
    assert torch_req.specifier.contains(version)
