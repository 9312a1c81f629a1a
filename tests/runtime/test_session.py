"""The session factory picks providers honestly: what ORT really initialised, never a silent CPU run."""

from __future__ import annotations

import logging
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from runtime import session as session_module
from runtime.metadata import MetadataError, ModelMetadata
from runtime.session import (
    CPU,
    CUDA,
    TENSORRT,
    ProviderUnavailableError,
    create_session,
    cuda_provider_options,
    read_metadata,
    session_options,
    tensorrt_provider_options,
)
from tests.runtime.conftest import IMAGE_SIZE

GPU_BUILD_PROVIDERS = [TENSORRT, CUDA, CPU]

GPU_BUILD = CUDA in ort.get_available_providers()
#: Tests that describe a CPU-only onnxruntime; a GPU build is covered by the gpu-marked test.
cpu_build_only = pytest.mark.skipif(GPU_BUILD, reason="onnxruntime here offers CUDA")
#: ORT warns about providers the (faked) build lists but cannot load: that is the scenario under test.
expected_ort_warning = pytest.mark.filterwarnings("ignore:Specified provider:UserWarning")


@pytest.fixture
def fake_gpu_build(monkeypatch: pytest.MonkeyPatch) -> None:
    """onnxruntime-gpu without its CUDA/TensorRT libraries: it lists the providers it cannot start."""
    monkeypatch.setattr(ort, "get_available_providers", lambda: list(GPU_BUILD_PROVIDERS))


def test_cpu_preference_runs_on_cpu_and_computes(tiny_model: Path) -> None:
    loaded = create_session(tiny_model, providers="cpu")
    assert loaded.providers == (CPU,)
    assert loaded.requested == "cpu"
    assert loaded.fallbacks == ()
    x = np.random.default_rng(0).standard_normal((2, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    (out,) = loaded.session.run(["logits"], {"images": x})
    np.testing.assert_array_equal(out, np.maximum(x, 0))


@cpu_build_only
def test_auto_falls_back_to_cpu_with_a_reason_per_gpu_provider(
    tiny_model: Path, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.WARNING, logger="runtime.session"):
        loaded = create_session(tiny_model, providers="auto")
    assert loaded.providers == (CPU,)
    assert len(loaded.fallbacks) == 2
    assert TENSORRT in loaded.fallbacks[0] and "not offered" in loaded.fallbacks[0]
    assert CUDA in loaded.fallbacks[1] and "not offered" in loaded.fallbacks[1]
    # every skip is logged, not only returned
    logged = " ".join(r.getMessage() for r in caplog.records)
    assert TENSORRT in logged and CUDA in logged


@cpu_build_only
@pytest.mark.parametrize(("preference", "provider"), [("tensorrt", TENSORRT), ("cuda", CUDA)])
def test_explicit_gpu_provider_missing_from_build_raises(
    tiny_model: Path, preference: str, provider: str
) -> None:
    with pytest.raises(ProviderUnavailableError) as info:
        create_session(tiny_model, providers=preference, image_size=IMAGE_SIZE)
    assert info.value.provider == preference
    assert provider in info.value.reason and "not offered" in info.value.reason
    assert "onnxruntime-gpu" in str(info.value)


@cpu_build_only
@expected_ort_warning
@pytest.mark.usefixtures("fake_gpu_build")
def test_auto_reports_gpu_providers_dropped_at_initialisation(tiny_model: Path) -> None:
    loaded = create_session(tiny_model, providers="auto", image_size=IMAGE_SIZE)
    assert loaded.providers == (CPU,)
    assert len(loaded.fallbacks) == 2
    assert all("failed to initialise" in reason for reason in loaded.fallbacks)
    assert TENSORRT in loaded.fallbacks[0] and CUDA in loaded.fallbacks[1]


@cpu_build_only
@expected_ort_warning
@pytest.mark.usefixtures("fake_gpu_build")
@pytest.mark.parametrize(("preference", "provider"), [("tensorrt", TENSORRT), ("cuda", CUDA)])
def test_explicit_gpu_provider_dropped_at_initialisation_raises(
    tiny_model: Path, preference: str, provider: str
) -> None:
    with pytest.raises(ProviderUnavailableError, match="failed to initialise") as info:
        create_session(tiny_model, providers=preference, image_size=IMAGE_SIZE)
    assert provider in info.value.reason


@cpu_build_only
@expected_ort_warning
@pytest.mark.usefixtures("fake_gpu_build")
def test_tensorrt_profile_size_is_read_from_the_model_when_not_given(
    tiny_model: Path, tiny_model_with_metadata: Path, metadata: ModelMetadata, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: list[dict[str, str]] = []
    real = session_module.tensorrt_provider_options

    def spy(**kwargs: object) -> dict[str, str]:
        options = real(**kwargs)  # type: ignore[arg-type]
        seen.append(options)
        return options

    monkeypatch.setattr(session_module, "tensorrt_provider_options", spy)
    create_session(tiny_model, providers="auto", max_batch_size=4)
    create_session(tiny_model_with_metadata, providers="auto", max_batch_size=4)
    # static input shape of the first model, metadata of the second (its spatial dims are symbolic)
    assert seen[0]["trt_profile_max_shapes"] == f"images:4x3x{IMAGE_SIZE}x{IMAGE_SIZE}"
    size = metadata.image_size
    assert seen[1]["trt_profile_max_shapes"] == f"images:4x3x{size}x{size}"


def test_unknown_preference_lists_the_valid_ones(tiny_model: Path) -> None:
    with pytest.raises(ValueError, match=r"auto.*tensorrt.*cuda.*cpu"):
        create_session(tiny_model, providers="gpu")  # type: ignore[arg-type]


def test_missing_model_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.onnx"
    with pytest.raises(FileNotFoundError, match=r"nope\.onnx"):
        create_session(missing, providers="cpu")


@pytest.mark.parametrize("max_batch", [1, 16, 64])
def test_tensorrt_options_profile_spans_batch_one_to_max(max_batch: int, tmp_path: Path) -> None:
    options = tensorrt_provider_options(image_size=224, max_batch_size=max_batch, cache_dir=tmp_path)
    assert options["trt_profile_min_shapes"] == "images:1x3x224x224"
    assert options["trt_profile_opt_shapes"] == f"images:{max_batch}x3x224x224"
    assert options["trt_profile_max_shapes"] == f"images:{max_batch}x3x224x224"
    assert options["trt_fp16_enable"] == "True"
    assert options["trt_engine_cache_enable"] == "True"
    assert options["trt_timing_cache_enable"] == "True"
    assert options["trt_engine_cache_path"] == str(tmp_path.resolve())
    assert options["trt_timing_cache_path"] == str(tmp_path.resolve())


def test_tensorrt_options_without_cache_dir_disable_caches_and_honour_fp32() -> None:
    options = tensorrt_provider_options(image_size=384, max_batch_size=8, fp16=False)
    assert options["trt_fp16_enable"] == "False"
    assert options["trt_engine_cache_enable"] == "False"
    assert options["trt_timing_cache_enable"] == "False"
    assert "trt_engine_cache_path" not in options
    # the Python binding throws on anything but True/False for TensorRT booleans
    assert all(options[k] in {"True", "False"} for k in options if k.endswith("_enable"))


def test_tensorrt_options_reject_empty_batch_range() -> None:
    with pytest.raises(ValueError, match="max_batch_size"):
        tensorrt_provider_options(image_size=224, max_batch_size=0)


def test_cuda_options_search_conv_algorithms_exhaustively() -> None:
    assert cuda_provider_options(device_id=1) == {
        "device_id": "1",
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }


def test_session_options_set_threads_and_sequential_execution(tmp_path: Path) -> None:
    options = session_options(intra_op_threads=3, optimized_model_path=tmp_path / "opt.onnx")
    assert options.enable_mem_pattern is False  # one block per batch size otherwise (see session_options)
    assert options.intra_op_num_threads == 3
    assert options.inter_op_num_threads == 1
    assert options.execution_mode == ort.ExecutionMode.ORT_SEQUENTIAL
    assert options.graph_optimization_level == ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    # Worker threads stop spinning when a run returns: the cores go to decoding between batches.
    assert options.get_session_config_entry("session.force_spinning_stop") == "1"
    with pytest.raises(ValueError, match="intra_op_threads"):
        session_options(intra_op_threads=-1)


SHARED_ARENA_SCRIPT = """
import sys
import numpy as np
import onnx
from onnx import TensorProto, helper
from runtime.session import create_session

# Two 32 MiB intermediates per run: what the arena keeps after a run is easy to see in RSS.
graph = helper.make_graph(
    [helper.make_node("Relu", ["x"], ["a"]), helper.make_node("Neg", ["a"], ["b"]),
     helper.make_node("ReduceSum", ["b"], ["y"], keepdims=0)],
    "big", [helper.make_tensor_value_info("x", TensorProto.FLOAT, [8, 1024, 1024])],
    [helper.make_tensor_value_info("y", TensorProto.FLOAT, [])],
)
onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), sys.argv[1])

def rss_mib():
    return int(open("/proc/self/statm").read().split()[1]) * 4096 / 2**20

shared = sys.argv[2] == "shared"
x = np.ones((8, 1024, 1024), np.float32)
sessions = [create_session(sys.argv[1], providers="cpu", intra_op_threads=1, shared_arena=shared)
            for _ in range(2)]
outputs = [s.session.run(None, {"x": x})[0] for s in sessions[:1]]
after_one = rss_mib()
outputs += [s.session.run(None, {"x": x})[0] for s in sessions[1:]]
assert outputs[0] == outputs[1] == -8 * 1024 * 1024, outputs
print(round(rss_mib() - after_one, 1))
"""


@pytest.mark.parametrize(("mode", "second_session_grows"), [("shared", False), ("separate", True)])
def test_sessions_on_the_shared_arena_reuse_each_others_memory(
    tmp_path: Path, mode: str, second_session_grows: bool
) -> None:
    # A fresh process each: the shared arena is process-wide and RSS must start clean.
    result = subprocess.run(
        [sys.executable, "-c", SHARED_ARENA_SCRIPT, str(tmp_path / "big.onnx"), mode],
        capture_output=True,
        text=True,
        check=True,
        cwd=Path(__file__).resolve().parents[2],
    )
    growth_mib = float(result.stdout.strip().splitlines()[-1])
    # The second session's run needs ~64 MiB of intermediates: its own arena, or the one it shares.
    assert (growth_mib > 48) is second_session_grows, growth_mib


def test_shared_arena_is_registered_once_and_asked_for_in_the_options() -> None:
    session_module.register_shared_cpu_arena()
    session_module.register_shared_cpu_arena()  # a second call must not raise
    assert session_options(shared_arena=True).get_session_config_entry("session.use_env_allocators") == "1"
    with pytest.raises(RuntimeError, match="does not have configuration"):
        session_options().get_session_config_entry("session.use_env_allocators")


def test_optimized_model_is_written_for_inspection(tiny_model: Path, tmp_path: Path) -> None:
    target = tmp_path / "optimized.onnx"
    create_session(tiny_model, providers="cpu", intra_op_threads=1, optimized_model_path=target)
    assert target.is_file() and target.stat().st_size > 0


def test_read_metadata_round_trips_the_exported_props(
    tiny_model_with_metadata: Path, metadata: ModelMetadata
) -> None:
    loaded = create_session(tiny_model_with_metadata, providers="cpu")
    assert read_metadata(loaded.session) == metadata


def test_read_metadata_of_a_foreign_model_says_how_to_export(tiny_model: Path) -> None:
    loaded = create_session(tiny_model, providers="cpu")
    with pytest.raises(MetadataError, match="python -m export"):
        read_metadata(loaded.session)


@pytest.mark.parametrize("missing", ["interpolation", "mean", "std"])
def test_metadata_without_its_preprocessing_is_refused_not_assumed_imagenet(
    metadata: ModelMetadata, missing: str
) -> None:
    props = metadata.to_props()
    del props[f"transxnet.{missing}"]
    with pytest.raises(MetadataError, match=missing):
        ModelMetadata.from_props(props)


def test_runtime_session_module_imports_neither_torch_nor_onnx() -> None:
    code = (
        "import sys, runtime.session; "
        "bad = [m for m in ('torch', 'onnx') if m in sys.modules]; "
        "sys.exit(f'imported {bad}' if bad else 0)"
    )
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code], check=False, cwd=root, capture_output=True, text=True
    )
    assert result.returncode == 0, result.stderr


@pytest.mark.gpu
@pytest.mark.skipif(not GPU_BUILD, reason="needs onnxruntime-gpu and a CUDA device")
@pytest.mark.parametrize(("preference", "provider"), [("cuda", CUDA), ("tensorrt", TENSORRT)])
def test_explicit_gpu_provider_really_runs_on_the_gpu(
    tiny_model: Path, tmp_path: Path, preference: str, provider: str
) -> None:
    loaded = create_session(tiny_model, providers=preference, max_batch_size=4, trt_cache_dir=tmp_path)
    assert loaded.primary_provider == provider
    x = np.random.default_rng(0).standard_normal((4, 3, IMAGE_SIZE, IMAGE_SIZE), dtype=np.float32)
    (out,) = loaded.session.run(["logits"], {"images": x})
    np.testing.assert_array_equal(out, np.maximum(x, 0))


def test_sessions_leave_no_telemetry_behind(tiny_model: Path, tmp_path: Path) -> None:
    home = tmp_path / "home"
    home.mkdir()
    code = (
        "import numpy as np, runtime.session as rs; "
        f"s = rs.create_session({str(tiny_model)!r}, providers='cpu').session; "
        "s.run(None, {s.get_inputs()[0].name: np.zeros([d if isinstance(d, int) else 1 "
        "for d in s.get_inputs()[0].shape], np.float32)})"
    )
    env = {k: v for k, v in os.environ.items() if k != "ORT_DISABLE_TELEMETRY"}
    root = Path(__file__).resolve().parents[2]
    result = subprocess.run(
        [sys.executable, "-c", code],
        check=False,
        cwd=root,
        env={**env, "HOME": str(home)},
        capture_output=True,
        text=True,
    )
    assert result.returncode == 0, result.stderr
    assert list(home.rglob("*")) == []  # no ~/.cache/Microsoft/DeveloperTools/.onnxruntime
