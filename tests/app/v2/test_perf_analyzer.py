"""Triton's perf_analyzer (the tritonclient 2.44.0 binary, `tests.support.perf_analyzer`) against a
real process over gRPC and over HTTP, driven with real image bytes and with preprocessed tensors: it
reads the model's metadata, configuration and statistics from our endpoints as it reads Triton's,
reports throughput, and the server counts every one of its requests a success (so it sent exactly the
one input that the data names, of the two optional ones).
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pytest

from tests.support import perf_analyzer
from tests.support.fake_model import IMAGE_SIZE, fake_metadata
from tests.support.images import encoded_image
from tests.support.processes import ServiceProcess, free_port, service_process

pytestmark = pytest.mark.slow

MODEL = fake_metadata().variant
#: Short, and stable enough on a busy 2-core machine: 3 windows of 10 requests per concurrency level.
QUICK = [
    "--measurement-mode",
    "count_windows",
    "--measurement-request-count",
    "10",
    "--stability-percentage",
    "100",
]


@pytest.fixture(scope="module")
def analyzer() -> perf_analyzer.PerfAnalyzer:
    found = perf_analyzer.install()
    missing = found.missing_libraries()
    if missing:
        pytest.skip(f"perf_analyzer needs {missing}: install Debian's libb64-0d (scripts/_system.sh)")
    return found


@pytest.fixture(scope="module")
def served(fake_model_path: Path) -> Iterator[tuple[ServiceProcess, int]]:
    port = free_port()
    with service_process(fake_model_path, grpc_port=str(port), max_batch_size="8") as service:
        yield service, port


@pytest.fixture(scope="module")
def data_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("perf-data")
    rng = np.random.default_rng(0)
    contents = {
        "bytes": perf_analyzer.image_bytes_data([encoded_image(700 + i) for i in range(4)]),
        "tensors": perf_analyzer.tensor_data(
            [rng.normal(0, 1, (3, IMAGE_SIZE, IMAGE_SIZE)).round(4) for _ in range(2)]
        ),
    }
    paths = {}
    for name, content in contents.items():
        paths[name] = folder / f"{name}.json"
        paths[name].write_text(json.dumps(content))
    return paths


def _stats(service: ServiceProcess) -> dict:
    return httpx.get(service.url(f"/v2/models/{MODEL}/stats"), timeout=10).json()["model_stats"][0]


@pytest.mark.parametrize("data", ["bytes", "tensors"])
@pytest.mark.parametrize("protocol", ["grpc", "http"])
def test_perf_analyzer_reports_throughput_without_errors(
    analyzer, served, data_files, tmp_path: Path, protocol: str, data: str
) -> None:
    service, grpc_port = served
    address = f"127.0.0.1:{grpc_port}" if protocol == "grpc" else service.base.removeprefix("http://")
    before = _stats(service)
    args = ["-m", MODEL, "-u", address, "-i", protocol, "--input-data", str(data_files[data])]
    done = analyzer.run([*args, "--concurrency-range", "1:2", *QUICK], cwd=tmp_path)
    output = done.stdout + done.stderr
    assert done.returncode == 0, output[-3000:]
    assert "error" not in output.lower(), output[-3000:]
    rates = perf_analyzer.throughputs(output)
    assert len(rates) == 2 and all(rate > 0 for rate in rates), output[-3000:]
    after = _stats(service)
    assert after["inference_stats"]["fail"]["count"] == before["inference_stats"]["fail"]["count"]
    sent = after["inference_stats"]["success"]["count"] - before["inference_stats"]["success"]["count"]
    assert sent >= 2 * 3 * 10  # two levels of at least three windows of ten requests
    # perf_analyzer read the server-side statistics too (Triton's statistics extension).
    assert "Server:" in output and "Inference count:" in output
