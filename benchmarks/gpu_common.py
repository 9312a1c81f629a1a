"""Shared pieces of the GPU measurement (`scripts/gpu/measure.sh`): an incrementally written results
file, time budgets, timing loops and the environment record.

Why incremental: the device call that runs the measurement has a hard time limit and only what is
under $OUT comes back. Every measured point is merged into one JSON file the moment it exists, so a
stage killed by its budget (or the whole call killed at its limit) still returns everything measured
before it. One file, because at most 8 files come back from a call.
"""

from __future__ import annotations

import contextlib
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
REFERENCE = ROOT / "tests" / "fixtures" / "reference"
EXPECTED_T = REFERENCE / "expected_t.npz"

#: Batch sizes of the model sweeps, in the order they are measured: the ones the issue's goals
#: compare (64 and up, and 1) first, so a budget that runs out still leaves the important points.
GPU_BATCHES: tuple[int, ...] = (64, 256, 1, 8, 128, 32, 16, 4, 2)
SMOKE_BATCHES: tuple[int, ...] = (1, 2)


def log(message: str) -> None:
    """One progress line on stdout (unbuffered: the device call returns only the output's tail)."""
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


class ResultsFile:
    """A JSON object on disk that every stage merges its results into, atomically, point by point.

    Stages run one after another, so read-merge-write is safe; the atomic replace keeps the file
    valid even when a stage is killed mid-write.
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)

    def read(self) -> dict[str, Any]:
        if not self.path.is_file():
            return {}
        try:
            return json.loads(self.path.read_text())
        except json.JSONDecodeError:  # a torn file is impossible with os.replace, but never lose a run
            return {}

    def put(self, keys: Sequence[str], value: Any) -> None:
        """Set `value` at the nested path `keys` (objects created as needed) and write the file."""
        data = self.read()
        node = data
        for key in keys[:-1]:
            node = node.setdefault(str(key), {})
        node[str(keys[-1])] = value
        tmp = self.path.with_name(f".{self.path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps(data, indent=1, default=_jsonable))
        os.replace(tmp, self.path)

    def get(self, keys: Sequence[str], default: Any = None) -> Any:
        node: Any = self.read()
        for key in keys:
            if not isinstance(node, dict) or str(key) not in node:
                return default
            node = node[str(key)]
        return node


def _jsonable(value: Any) -> Any:
    if hasattr(value, "tolist"):
        return value.tolist()
    if isinstance(value, Path):
        return str(value)
    return repr(value)


@dataclass
class Deadline:
    """A stage's own time budget: loops ask `left()` and stop cleanly before the hard timeout."""

    seconds: float
    started: float = 0.0

    def __post_init__(self) -> None:
        self.started = time.monotonic()

    def left(self) -> float:
        return self.seconds - (time.monotonic() - self.started)

    def expired(self, reserve: float = 0.0) -> bool:
        return self.left() <= reserve

    def share(self, fraction: float) -> Deadline:
        """A sub-budget of `fraction` of what is left now (unused time flows to later blocks)."""
        return Deadline(max(0.0, self.left() * fraction))


def time_calls(
    fn: Callable[[], object],
    *,
    seconds: float,
    min_runs: int = 5,
    max_runs: int = 2000,
    warmup: int = 2,
    sync: Callable[[], None] | None = None,
) -> dict[str, float]:
    """Median and spread of `fn()` wall times after `warmup` calls; each call is synchronised with
    `sync` (e.g. torch.cuda.synchronize) so asynchronous work is inside the time it is charged to."""
    for _ in range(warmup):
        fn()
        if sync:
            sync()
    times: list[float] = []
    end = time.perf_counter() + seconds
    while len(times) < max_runs and (len(times) < min_runs or time.perf_counter() < end):
        t0 = time.perf_counter()
        fn()
        if sync:
            sync()
        times.append(time.perf_counter() - t0)
    times.sort()
    return {
        "median_ms": 1e3 * statistics.median(times),
        "p10_ms": 1e3 * times[len(times) // 10],
        "p90_ms": 1e3 * times[(9 * len(times)) // 10],
        "runs": len(times),
    }


def throughput_row(batch: int, timing: dict[str, float], **extra: object) -> dict[str, object]:
    row: dict[str, object] = {"batch": batch, **timing, "images_per_s": batch / (timing["median_ms"] / 1e3)}
    row.update(extra)
    return row


def _command_output(command: Sequence[str]) -> str | None:
    with contextlib.suppress(OSError, subprocess.SubprocessError):
        done = subprocess.run(list(command), capture_output=True, text=True, timeout=20, check=False)
        if done.returncode == 0:
            return done.stdout.strip()
    return None


def _versions(names: Sequence[str]) -> dict[str, str | None]:
    from importlib import metadata

    found: dict[str, str | None] = {}
    for name in names:
        try:
            found[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            found[name] = None
    return found


def environment() -> dict[str, object]:
    """Exact versions and the machine: what a published GPU number must name."""
    env: dict[str, object] = {
        "python": sys.version.split()[0],
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "cpu_model": _cpu_model(),
        "nvidia_smi": _command_output(
            [
                "nvidia-smi",
                "--query-gpu=name,driver_version,memory.total,clocks.max.sm",
                "--format=csv,noheader",
            ]
        ),
        "packages": _versions(
            [
                "torch",
                "triton",
                "onnx",
                "onnxscript",
                "onnxruntime",
                "onnxruntime-gpu",
                "numpy",
                "fastapi",
                "uvicorn",
                "pillow",
                "httpx",
                "anyio",
                "pydantic",
                "grpcio",
                "protobuf",
                "prometheus-client",
                "typing-extensions",
                "nvidia-cudnn-cu13",
                "nvidia-cublas",
                "nvidia-cuda-runtime",
            ]
        ),
    }
    with contextlib.suppress(Exception):
        import onnxruntime as ort

        env["onnxruntime_module"] = {
            "version": ort.__version__,
            "file": ort.__file__,
            "available_providers": ort.get_available_providers(),
            "cuda_version": getattr(ort.capi.build_and_package_info, "cuda_version", None),
        }
    return env


def torch_environment() -> dict[str, object]:
    import torch

    info: dict[str, object] = {"torch": torch.__version__, "cuda": torch.version.cuda}
    if torch.cuda.is_available():
        props = torch.cuda.get_device_properties(0)
        info.update(
            device=torch.cuda.get_device_name(0),
            multiprocessors=props.multi_processor_count,
            memory_gib=round(props.total_memory / 2**30, 1),
            cudnn=torch.backends.cudnn.version(),
            capability=".".join(map(str, torch.cuda.get_device_capability(0))),
        )
    return info


def _cpu_model() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


@contextlib.contextmanager
def stage_errors(results: ResultsFile, keys: Sequence[str]) -> Iterator[None]:
    """Record an exception under `keys` + ["error"] and re-raise: the report then says what broke."""
    try:
        yield
    except Exception as exc:
        results.put([*keys, "error"], f"{type(exc).__name__}: {exc}"[:2000])
        raise


def reference_checkpoint(work: Path) -> Path:
    """The seeded reference checkpoint (official key list), whose official outputs are stored."""
    path = work / "transx-t-reference.pth.tar"
    if path.is_file():
        return path
    import torch

    sys.path.insert(0, str(REFERENCE))
    try:
        import make_checkpoint
    finally:
        sys.path.remove(str(REFERENCE))
    work.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".tmp")
    torch.save(
        {"state_dict": make_checkpoint.make_state_dict("t", 0), "epoch": 299, "arch": "transxnet_t"}, tmp
    )
    os.replace(tmp, path)
    return path
