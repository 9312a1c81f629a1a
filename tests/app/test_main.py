"""The service as a real process: graceful SIGTERM, no torch, clean start-up errors."""

from __future__ import annotations

import json
import re
import signal
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import httpx
import pytest

from tests.support.images import encoded_image
from tests.support.processes import ROOT, free_port, running_process, service_env, status_of, wait_for

PNG = {"content-type": "image/png"}


@pytest.mark.slow
def test_sigterm_drains_in_flight_requests_and_exits_zero(fake_model_path) -> None:
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        fake_model_path,
        TRANSXNET_PORT=str(port),
        TRANSXNET_MAX_BATCH_SIZE="1",
        TRANSXNET_MAX_BATCH_DELAY_MS="0",
        TRANSXNET_SHUTDOWN_GRACE_S="1.5",
    )
    args = [sys.executable, "-m", "tests.support.serve", "--slow-s", "0.7"]
    with running_process(args, env) as process, ThreadPoolExecutor(4) as pool:
        wait_for(lambda: status_of(f"{base}/readyz") == 200 or process.poll() is not None)
        assert process.poll() is None
        blobs = [encoded_image(i) for i in range(3)]
        in_flight = [
            pool.submit(httpx.post, f"{base}/classify", content=b, headers=PNG, timeout=60) for b in blobs
        ]

        def queued() -> bool:
            return "transxnet_queue_depth 2.0" in httpx.get(f"{base}/metrics", timeout=5).text

        wait_for(queued)  # one running, two queued: all three are in flight
        process.send_signal(signal.SIGTERM)
        wait_for(lambda: status_of(f"{base}/readyz") == 503, timeout_s=5)
        refused = httpx.post(f"{base}/classify", content=blobs[0], headers=PNG, timeout=10)
        assert refused.status_code == 503
        assert refused.json()["error"]["code"] == "not_ready"
        responses = [future.result(timeout=60) for future in in_flight]
        assert [r.status_code for r in responses] == [200, 200, 200]
        assert process.wait(timeout=60) == 0, process.stdout.read() if process.stdout else ""


NO_TORCH_SCRIPT = """
import asyncio, sys
import httpx
from app.main import create_app
from app.settings import load_settings
from tests.support.images import encoded_image

async def main():
    app = create_app(load_settings())
    async with app.router.lifespan_context(app):
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://s") as c:
            while (await c.get("/readyz")).status_code != 200:
                await asyncio.sleep(0.01)
            r = await c.post("/classify", content=encoded_image(1), headers={"content-type": "image/png"})
            assert r.status_code == 200, r.text
    assert "torch" not in sys.modules, "torch was imported by the service"
    assert "onnx" not in sys.modules, "onnx was imported by the service"
    print("NO_TORCH_OK")

asyncio.run(main())
"""


@pytest.mark.slow
def test_service_process_never_imports_torch(fake_model_path) -> None:
    result = subprocess.run(
        [sys.executable, "-c", NO_TORCH_SCRIPT],
        cwd=ROOT,
        env=service_env(fake_model_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert result.returncode == 0, result.stderr
    assert "NO_TORCH_OK" in result.stdout


@pytest.mark.slow
@pytest.mark.parametrize(
    ("extra", "expected"),
    [
        ({"TRANSXNET_MAX_BATCH_SIZE": "0"}, "TRANSXNET_MAX_BATCH_SIZE"),
        ({"TRANSXNET_PROVIDERS": "gpu"}, "TRANSXNET_PROVIDERS"),
        ({"TRANSXNET_MODEL_PATH": "/nonexistent/model.onnx"}, "python -m export --variant t --output"),
    ],
)
def test_bad_settings_stop_the_process_with_one_clean_line(fake_model_path, extra, expected) -> None:
    result = subprocess.run(
        [sys.executable, "-m", "app"],
        cwd=ROOT,
        env=service_env(fake_model_path, **extra),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert expected in lines[0]
    assert "Traceback" not in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("log_format", ["json", "text"])
def test_every_log_line_of_a_request_names_its_id(fake_model_path, log_format: str) -> None:
    """uvicorn's access line and the service's own lines for a request carry the X-Request-ID the
    response had; lines outside any request (start-up, shutdown) carry none."""
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    env = service_env(
        fake_model_path, TRANSXNET_PORT=str(port), TRANSXNET_LOG_FORMAT=log_format, TRANSXNET_LOG_LEVEL="info"
    )
    with running_process([sys.executable, "-m", "app"], env) as process:
        wait_for(lambda: status_of(f"{base}/readyz") == 200 or process.poll() is not None)
        traced = httpx.post(
            f"{base}/classify", content=encoded_image(1), headers={**PNG, "X-Request-ID": "t-42"}
        )
        assert traced.status_code == 200 and traced.headers["x-request-id"] == "t-42"
        generated = httpx.post(f"{base}/classify", content=b"junk", headers=PNG).headers["x-request-id"]
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=60) == 0
        output = process.stdout.read() if process.stdout else ""

    lines = output.splitlines()
    if log_format == "json":
        # Only our handler's lines: native libraries may write their own to stderr.
        records = [json.loads(line) for line in lines if line.startswith("{")]
        access = {r.get("request_id"): r["message"] for r in records if r["logger"] == "uvicorn.access"}
        startup = [r for r in records if r["message"].startswith("serving ")]
    else:
        access = {
            m.group(1): line
            for line in lines
            if " uvicorn.access: " in line and (m := re.search(r"\[request_id=(\S+)\]$", line))
        }
        startup = [line for line in lines if ": serving " in line]
    assert "POST /classify" in access["t-42"] and " 200" in access["t-42"]
    assert "POST /classify" in access[generated] and " 400" in access[generated]
    assert len(startup) == 1 and "request_id" not in str(startup[0])
