"""ONNX Runtime session factory shared by the service (`app/`) and the export's verification.

Why a factory and not a bare `InferenceSession(path)`: `onnxruntime-gpu` lists the CUDA and TensorRT
providers even where their shared libraries (CUDA, cuDNN, TensorRT) are missing, and the session then
quietly runs on the CPU. The only truth is `session.get_providers()` after creation, so this module
asks for a provider chain, compares what it asked for with what it got, logs every provider it had to
skip with the reason, and refuses (`ProviderUnavailableError`) when the caller named a GPU provider
explicitly and did not get it. No torch and no onnx here: onnxruntime and the stdlib only.

Provider option names follow the ONNX Runtime TensorRT / CUDA execution provider documentation
(https://onnxruntime.ai/docs/execution-providers/TensorRT-ExecutionProvider.html and
.../CUDA-ExecutionProvider.html). The Python binding parses TensorRT booleans as the strings
"True"/"False" only (anything else throws), CUDA booleans as "1"/"0".
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal, get_args

import onnxruntime as ort

from runtime.metadata import INPUT_NAME, ModelMetadata

logger = logging.getLogger(__name__)

ProviderPreference = Literal["auto", "tensorrt", "cuda", "cpu"]
PROVIDER_PREFERENCES: tuple[str, ...] = get_args(ProviderPreference)

TENSORRT = "TensorrtExecutionProvider"
CUDA = "CUDAExecutionProvider"
CPU = "CPUExecutionProvider"

#: ORT provider name -> the short name a user types (`--providers`, settings, error messages).
_SHORT_NAMES = {TENSORRT: "tensorrt", CUDA: "cuda", CPU: "cpu"}


class ProviderUnavailableError(RuntimeError):
    """An explicitly requested execution provider cannot run here; the message says why and what to do."""

    def __init__(self, provider: str, reason: str) -> None:
        super().__init__(f"execution provider {provider!r} is unavailable: {reason}")
        self.provider = provider
        self.reason = reason


@dataclass(frozen=True)
class LoadedSession:
    """A ready session plus an honest account of how its providers were chosen."""

    session: ort.InferenceSession
    #: What `session.get_providers()` reports after creation, in priority order: the truth.
    providers: tuple[str, ...]
    #: The preference the caller gave ("auto", "tensorrt", "cuda" or "cpu").
    requested: str
    #: One human-readable reason per provider skipped under "auto" (logged, shown in /readyz).
    fallbacks: tuple[str, ...] = ()

    @property
    def primary_provider(self) -> str:
        """The provider that runs the bulk of the graph (the first one ORT kept)."""
        return self.providers[0]


def tensorrt_provider_options(
    *,
    image_size: int,
    max_batch_size: int,
    fp16: bool = True,
    cache_dir: str | Path | None = None,
    device_id: int = 0,
    input_name: str = INPUT_NAME,
) -> dict[str, str]:
    """TensorRT EP options: one optimisation profile for batch 1..max_batch_size, optional caches.

    The explicit profile matters: without it TensorRT builds an engine for the first shape it sees
    and rebuilds (seconds to minutes) whenever a larger batch arrives at request time. The opt shape
    is the max batch because dynamic batching fills batches under load, which is when speed counts.
    With `cache_dir` None the engine and timing caches are off and every start rebuilds the engine.
    """
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    if image_size < 1:
        raise ValueError(f"image_size must be >= 1, got {image_size}")

    def shape(batch: int) -> str:
        return f"{input_name}:{batch}x3x{image_size}x{image_size}"

    options = {
        "device_id": str(device_id),
        "trt_fp16_enable": str(bool(fp16)),
        "trt_profile_min_shapes": shape(1),
        "trt_profile_opt_shapes": shape(max_batch_size),
        "trt_profile_max_shapes": shape(max_batch_size),
    }
    if cache_dir is None:
        options["trt_engine_cache_enable"] = "False"
        options["trt_timing_cache_enable"] = "False"
    else:
        path = str(Path(cache_dir).expanduser().resolve())
        options.update(
            {
                "trt_engine_cache_enable": "True",
                "trt_engine_cache_path": path,
                "trt_timing_cache_enable": "True",
                "trt_timing_cache_path": path,
            }
        )
    return options


def cuda_provider_options(*, device_id: int = 0) -> dict[str, str]:
    """CUDA EP options that matter for a conv net: exhaustive cuDNN algorithm search with the full
    workspace (a one-off cost per input shape, paid at warm-up) and copies on the default stream."""
    return {
        "device_id": str(device_id),
        "cudnn_conv_algo_search": "EXHAUSTIVE",
        "cudnn_conv_use_max_workspace": "1",
        "do_copy_in_default_stream": "1",
    }


_shared_arena_lock = threading.Lock()
_shared_arena = {"registered": False}


def register_shared_cpu_arena() -> None:
    """Register one process-wide CPU arena that sessions created with `shared_arena=True` allocate
    from (idempotent). Two sessions of one model then reuse each other's freed activation memory
    instead of each keeping its own batch-16 peak: 500 instead of 717 MiB for T's two sessions."""
    with _shared_arena_lock:
        if _shared_arena["registered"]:
            return
        memory = ort.OrtMemoryInfo("Cpu", ort.OrtAllocatorType.ORT_ARENA_ALLOCATOR, 0, ort.OrtMemType.DEFAULT)
        ort.create_and_register_allocator(memory, ort.OrtArenaCfg(0, -1, -1, -1))  # ORT's defaults
        _shared_arena["registered"] = True


def session_options(
    *, intra_op_threads: int = 0, optimized_model_path: str | Path | None = None, shared_arena: bool = False
) -> ort.SessionOptions:
    """CPU-side session options: full graph optimisation, sequential execution, one inter-op thread,
    no per-shape memory patterns, no spinning once a run has returned.

    `intra_op_threads` 0 leaves ORT's default (one per physical core). Each of the service's runs is
    one batch on one thread of its own, so parallel (inter-op) execution would only add contention.
    `shared_arena`: allocate from the process-wide CPU arena (`register_shared_cpu_arena`).
    """
    if intra_op_threads < 0:
        raise ValueError(f"intra_op_threads must be >= 0 (0 = ONNX Runtime default), got {intra_op_threads}")
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.intra_op_num_threads = intra_op_threads
    options.inter_op_num_threads = 1
    # The memory-pattern planner keeps one pre-planned block per distinct input shape, and a dynamic
    # batcher feeds every batch size from 1 to max: measured on T, peak RSS after batch-16 runs drops
    # from 1015 to 628 MiB without it (the arena still reuses buffers across runs).
    options.enable_mem_pattern = False
    # ORT's worker threads busy-wait for the next parallel op, and by default keep spinning for a
    # while after a run returns. Between batches that core belongs to decoding (the split resize's
    # second band above all): with the spin stopped at the end of each run, a request's
    # preprocessing at c=1 took 4.8 instead of 6.1 ms on web photos and 75 instead of 82 ms on
    # phone photos, with no measurable change at c=16 (docs/benchmarks.md).
    options.add_session_config_entry("session.force_spinning_stop", "1")
    if shared_arena:
        register_shared_cpu_arena()
        options.add_session_config_entry("session.use_env_allocators", "1")
    if optimized_model_path is not None:
        # Written once at session creation; for inspecting what ORT fused (e.g. in Netron).
        options.optimized_model_filepath = str(optimized_model_path)
    return options


def read_metadata(session: ort.InferenceSession) -> ModelMetadata:
    """This project's metadata from a session; `MetadataError` if the file was not exported by us."""
    return ModelMetadata.from_props(dict(session.get_modelmeta().custom_metadata_map))


def _resolve_image_size(model_path: Path) -> int:
    """Input side for the TensorRT profile when the caller did not pass one.

    Costs one CPU session with optimisations off (no TensorRT build), paid only on the TensorRT
    path. Prefers the graph's static input shape, then the metadata's `image_size`.
    """
    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    probe = ort.InferenceSession(str(model_path), sess_options=options, providers=[CPU])
    for node in probe.get_inputs():
        if node.name == INPUT_NAME and len(node.shape) == 4:
            height, width = node.shape[2], node.shape[3]
            if isinstance(height, int) and isinstance(width, int):
                if height != width:
                    raise ValueError(f"{model_path}: non-square input {height}x{width} is not supported")
                return height
    return read_metadata(probe).image_size


def _unavailable_reason(provider: str) -> str:
    return (
        f"{provider} is not offered by this onnxruntime build (onnxruntime {ort.__version__}, "
        f"available: {', '.join(ort.get_available_providers())}); install onnxruntime-gpu "
        "(never next to onnxruntime) on a machine with an NVIDIA driver"
    )


def _dropped_reason(provider: str, got: Sequence[str]) -> str:
    needs = "TensorRT, CUDA and cuDNN" if provider == TENSORRT else "CUDA and cuDNN"
    return (
        f"{provider} is offered by onnxruntime but failed to initialise: the session reports "
        f"{list(got)} (its {needs} libraries are probably missing or mismatched, or no GPU is visible; "
        "ONNX Runtime's own warning above names the library)"
    )


def _provider_chain(
    requested: str, available: Sequence[str], build_options: dict[str, Callable[[], dict[str, str]]]
) -> tuple[list[tuple[str, dict[str, str]]], list[str]]:
    """(providers to ask for with their options, reasons for providers skipped before trying)."""
    skipped: list[str] = []
    if requested == "cpu":
        return [(CPU, {})], skipped
    # Under TensorRT, CUDA takes the nodes TensorRT does not support and CPU the host-side ops.
    wanted = [CUDA] if requested == "cuda" else [TENSORRT, CUDA]
    chain: list[tuple[str, dict[str, str]]] = []
    for provider in wanted:
        if provider in available:
            chain.append((provider, build_options[provider]()))
        elif _SHORT_NAMES[provider] == requested:
            raise ProviderUnavailableError(requested, _unavailable_reason(provider))
        else:
            # under "auto", or CUDA absent under "tensorrt" (whose initialisation then decides)
            skipped.append(_unavailable_reason(provider))
    chain.append((CPU, {}))
    return chain, skipped


def create_session(
    model_path: str | Path,
    *,
    providers: ProviderPreference = "auto",
    intra_op_threads: int = 0,
    max_batch_size: int = 16,
    image_size: int | None = None,
    trt_fp16: bool = True,
    trt_cache_dir: str | Path | None = None,
    optimized_model_path: str | Path | None = None,
    device_id: int = 0,
    shared_arena: bool = False,
) -> LoadedSession:
    """Create an `InferenceSession` on the best provider that really initialises.

    `providers`: "auto" tries TensorRT -> CUDA -> CPU and reports every skip in `fallbacks`;
    "tensorrt" / "cuda" raise `ProviderUnavailableError` rather than run on the CPU; "cpu" is CPU
    only. `max_batch_size` and `image_size` shape the TensorRT optimisation profile (batch
    1..max_batch_size); `image_size` None reads it from the model. `trt_cache_dir` holds TensorRT's
    engine and timing caches so restarts skip the engine build (None: no cache). `shared_arena`:
    CPU memory from the process-wide arena, for several sessions of one model in one process.
    """
    if providers not in PROVIDER_PREFERENCES:
        raise ValueError(f"unknown provider preference {providers!r}; choose one of {PROVIDER_PREFERENCES}")
    if max_batch_size < 1:
        raise ValueError(f"max_batch_size must be >= 1, got {max_batch_size}")
    path = Path(model_path)
    if not path.is_file():
        raise FileNotFoundError(f"ONNX model not found: {path} (export one with `python -m export`)")
    options = session_options(
        intra_op_threads=intra_op_threads,
        optimized_model_path=optimized_model_path,
        shared_arena=shared_arena,
    )
    available = ort.get_available_providers()

    resolved_size: list[int] = []  # memo: the probe session is only paid for when TensorRT is tried

    def trt_options() -> dict[str, str]:
        if not resolved_size:
            resolved_size.append(image_size if image_size is not None else _resolve_image_size(path))
        if trt_cache_dir is not None:
            Path(trt_cache_dir).expanduser().mkdir(parents=True, exist_ok=True)
        else:
            logger.info("TensorRT engine cache disabled (no cache dir): the engine is rebuilt every start")
        return tensorrt_provider_options(
            image_size=resolved_size[0],
            max_batch_size=max_batch_size,
            fp16=trt_fp16,
            cache_dir=trt_cache_dir,
            device_id=device_id,
        )

    build_options = {TENSORRT: trt_options, CUDA: lambda: cuda_provider_options(device_id=device_id)}
    chain, fallbacks = _provider_chain(providers, available, build_options)

    session, names = _first_session_that_starts(path, options, chain, providers, fallbacks)
    got = tuple(session.get_providers())
    fallbacks.extend(_dropped_providers(names, got, providers))

    for reason in fallbacks:
        logger.warning("provider fallback: %s", reason)
    logger.info("ONNX Runtime session for %s on %s (requested %s)", path.name, list(got), providers)
    return LoadedSession(session=session, providers=got, requested=providers, fallbacks=tuple(fallbacks))


def _first_session_that_starts(
    path: Path,
    options: ort.SessionOptions,
    chain: list[tuple[str, dict[str, str]]],
    providers: str,
    fallbacks: list[str],
) -> tuple[ort.InferenceSession, list[str]]:
    """The session on the longest head of `chain` that initialises, and the providers asked for.

    Under "auto" a provider that fails to create the session is dropped (the reason kept in
    `fallbacks`) and the next is tried; a named provider's failure is `ProviderUnavailableError`; a
    CPU failure is a broken model and is raised as is."""
    while True:
        names = [name for name, _ in chain]
        try:
            session = ort.InferenceSession(
                str(path), sess_options=options, providers=names, provider_options=[o for _, o in chain]
            )
        except Exception as exc:  # ORT raises bare RuntimeError/Fail subclasses from C++
            head = chain[0][0]
            if head == CPU:
                raise
            reason = f"{head} failed while creating the session: {type(exc).__name__}: {exc}"
            if providers != "auto":
                raise ProviderUnavailableError(providers, reason) from exc
            fallbacks.append(reason)
            chain = chain[1:]
            continue
        return session, names


def _dropped_providers(names: Sequence[str], got: Sequence[str], providers: str) -> list[str]:
    """Why each provider asked for is missing from the session (ORT drops one whose libraries fail to
    load without raising); a named provider's absence is `ProviderUnavailableError`."""
    reasons = []
    for name in names:
        if name == CPU or name in got:
            continue
        reason = _dropped_reason(name, got)
        if providers != "auto" and _SHORT_NAMES[name] == providers:
            raise ProviderUnavailableError(providers, reason)
        reasons.append(reason)
    return reasons
