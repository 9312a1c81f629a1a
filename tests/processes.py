"""The service as a real process, for the tests that need uvicorn itself: a free port, the
environment, start and kill, and polling that gives up with the reason instead of hanging."""

from __future__ import annotations

import os
import socket
import subprocess
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def service_env(model_path: Path, **extra: str) -> dict[str, str]:
    """This process's environment without any TRANSXNET_ setting of the developer's, plus the model,
    the CPU provider, localhost and one intra-op thread (tests share two cores), then `extra`."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRANSXNET_")}
    env.update(
        {
            "PYTHONPATH": str(ROOT),
            "TRANSXNET_MODEL_PATH": str(model_path),
            "TRANSXNET_PROVIDERS": "cpu",
            "TRANSXNET_HOST": "127.0.0.1",
            "TRANSXNET_INTRA_OP_THREADS": "1",
            **extra,
        }
    )
    return env


def wait_for(
    predicate: Callable[[], bool],
    timeout_s: float = 60,
    *,
    what: str = "condition",
    process: subprocess.Popen | None = None,
    log: Callable[[], str] | None = None,
) -> None:
    """Poll until `predicate()` holds; fail after `timeout_s`, or at once if `process` has exited
    (with the end of its `log`), so a crashed server fails the test with its reason."""
    end = time.monotonic() + timeout_s
    while not predicate():
        if process is not None and process.poll() is not None:
            tail = log()[-3000:] if log else ""
            raise AssertionError(f"the service exited ({process.returncode}) waiting for {what}:\n{tail}")
        if time.monotonic() > end:
            raise AssertionError(f"{what} not reached in {timeout_s} s")
        time.sleep(0.02)


def status_of(url: str) -> int | None:
    try:
        return httpx.get(url, timeout=2).status_code
    except httpx.TransportError:
        return None


@contextmanager
def running_process(args: list[str], env: dict[str, str]) -> Iterator[subprocess.Popen]:
    """`args` from the repository root, output captured; killed on exit if still running."""
    process = subprocess.Popen(
        args, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
    )
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
            process.wait(timeout=10)
