"""Triton's perf_analyzer for the tests, docs examples and benchmarks, installed from PyPI alone.

The tritonclient 2.44.0 wheel ships the binary (`tritonclient-2.44.0.data/data/bin/
perf_analyzer`). It links Debian's libb64 (`libb64-0d`, in scripts/_system.sh) and CUDA's runtime
library `libcudart.so.12` even for CPU-only use, which the `nvidia-cuda-runtime-cu12` wheel holds; no
GPU is needed. The venv keeps its newer tritonclient (the Python client): the two wheels are only
downloaded (`pip download --no-deps`) and the two files taken out of them into a cache directory,
once per machine (`$XDG_CACHE_HOME/transxnet-serve/`, else `~/.cache/transxnet-serve/`).

From a shell (docs/v2.md):

    eval "$(python -m tests.support.perf_analyzer env)"      # perf_analyzer on PATH
    python -m tests.support.perf_analyzer images images.json cat.jpg dog.png
    python -m tests.support.perf_analyzer tensors tensors.json --size 224

Input data for the service's two inputs: perf_analyzer sends a `b64` value as the tensor's raw bytes,
so a BYTES element must carry its 4-byte little-endian length before the file's bytes (`image_bytes_data`);
it sends only the inputs that the data names (both are optional in the model configuration).
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import struct
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

TRITONCLIENT = "tritonclient==2.44.0"
CUDA_RUNTIME = "nvidia-cuda-runtime-cu12==12.4.127"
BINARY_MEMBER = "tritonclient-2.44.0.data/data/bin/perf_analyzer"
CUDART_MEMBER = "nvidia/cuda_runtime/lib/libcudart.so.12"
_THROUGHPUT = re.compile(r"^\s*Throughput: ([0-9.]+) infer/sec", re.MULTILINE)


class PerfAnalyzerUnavailableError(RuntimeError):
    """perf_analyzer cannot be installed or cannot run here; the message says what is missing."""


@dataclass(frozen=True)
class PerfAnalyzer:
    binary: Path
    lib_dir: Path

    def env(self) -> dict[str, str]:
        """This process's environment with CUDA's runtime library on the loader's path."""
        env = dict(os.environ)
        env["LD_LIBRARY_PATH"] = os.pathsep.join(
            filter(None, [str(self.lib_dir), env.get("LD_LIBRARY_PATH")])
        )
        return env

    def run(
        self, args: Sequence[str], *, cwd: Path, timeout_s: float = 300
    ) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.binary), *args],
            cwd=cwd,
            env=self.env(),
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )

    def missing_libraries(self) -> list[str]:
        """Shared libraries the loader cannot find (e.g. libb64.so.0d without Debian's libb64-0d)."""
        done = subprocess.run(
            ["ldd", str(self.binary)], env=self.env(), capture_output=True, text=True, check=False
        )
        return [line.split()[0] for line in done.stdout.splitlines() if "not found" in line]


def cache_dir() -> Path:
    base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    return base / "transxnet-serve" / "perf_analyzer-2.44.0"


def install(cache: Path | None = None) -> PerfAnalyzer:
    """perf_analyzer from the cache, downloading and extracting it first if it is not there."""
    target = cache or cache_dir()
    found = PerfAnalyzer(target / "perf_analyzer", target / "lib")
    if found.binary.is_file() and (found.lib_dir / "libcudart.so.12").is_file():
        return found
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as work:
        wheels, staging = Path(work) / "wheels", Path(work) / "staging"
        download = [sys.executable, "-m", "pip", "download", "--no-deps", "--only-binary=:all:", "--quiet"]
        done = subprocess.run(
            [*download, "-d", str(wheels), TRITONCLIENT, CUDA_RUNTIME],
            capture_output=True,
            text=True,
            check=False,
        )
        if done.returncode != 0:
            raise PerfAnalyzerUnavailableError(
                f"pip could not download {TRITONCLIENT} and {CUDA_RUNTIME}: {done.stderr}"
            )
        _extract(wheels, "tritonclient-*.whl", BINARY_MEMBER, staging / "perf_analyzer")
        _extract(wheels, "nvidia_cuda_runtime_cu12-*.whl", CUDART_MEMBER, staging / "lib" / "libcudart.so.12")
        (staging / "perf_analyzer").chmod(0o755)
        shutil.rmtree(target, ignore_errors=True)
        staging.rename(target)  # whole or not at all
    return found


def _extract(wheels: Path, pattern: str, member: str, destination: Path) -> None:
    (wheel,) = wheels.glob(pattern)
    destination.parent.mkdir(parents=True, exist_ok=True)
    with zipfile.ZipFile(wheel) as archive, archive.open(member) as source, destination.open("wb") as out:
        shutil.copyfileobj(source, out)


def image_bytes_data(blobs: Sequence[bytes]) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one request per file, each one `image_bytes` element."""
    steps = [
        {"image_bytes": {"b64": base64.b64encode(struct.pack("<I", len(blob)) + blob).decode(), "shape": [1]}}
        for blob in blobs
    ]
    return {"data": steps}


def tensor_data(images: Sequence[np.ndarray]) -> dict[str, Any]:
    """perf_analyzer's --input-data JSON: one request per preprocessed `[3, S, S]` image."""
    steps = [
        {"images": {"content": image.astype(np.float32).ravel().tolist(), "shape": list(image.shape)}}
        for image in images
    ]
    return {"data": steps}


def throughputs(output: str) -> list[float]:
    """Every "Throughput: N infer/sec" that perf_analyzer printed (one per concurrency level)."""
    return [float(value) for value in _THROUGHPUT.findall(output)]


def main(argv: Sequence[str] | None = None) -> None:
    """`python -m tests.support.perf_analyzer env|images|tensors ...` (docs/v2.md shows each)."""
    import argparse
    import json
    import shlex

    parser = argparse.ArgumentParser(prog="python -m tests.support.perf_analyzer", description=__doc__)
    commands = parser.add_subparsers(dest="command", required=True)
    commands.add_parser(
        "env", help="install perf_analyzer if needed; print the shell exports that put it on PATH"
    )
    images = commands.add_parser("images", help="--input-data JSON of encoded image files (image_bytes)")
    images.add_argument("out", type=Path)
    images.add_argument("files", type=Path, nargs="+")
    tensors = commands.add_parser("tensors", help="--input-data JSON of random preprocessed tensors (images)")
    tensors.add_argument("out", type=Path)
    tensors.add_argument("--count", type=int, default=4)
    tensors.add_argument("--size", type=int, default=224, help="the model's input size S of [3, S, S]")
    args = parser.parse_args(argv)
    if args.command == "env":
        try:
            found = install()
        except PerfAnalyzerUnavailableError as exc:
            sys.exit(f"perf_analyzer: {exc}")
        missing = found.missing_libraries()
        if missing:
            sys.exit(f"perf_analyzer needs {missing}: `apt-get install libb64-0d` (Debian's libb64)")
        print(f'export PATH={shlex.quote(str(found.binary.parent))}:"$PATH"')
        print(f'export LD_LIBRARY_PATH={shlex.quote(str(found.lib_dir))}:"${{LD_LIBRARY_PATH:-}}"')
        return
    if args.command == "images":
        data = image_bytes_data([path.read_bytes() for path in args.files])
    else:
        rng = np.random.default_rng(0)
        data = tensor_data([rng.normal(0, 1, (3, args.size, args.size)).round(4) for _ in range(args.count)])
    args.out.write_text(json.dumps(data))
    print(f"wrote {args.out}: {len(data['data'])} requests")


if __name__ == "__main__":
    main()
