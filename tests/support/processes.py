"""The service as a real process, for the tests and benchmarks that need uvicorn itself: a free
port, the environment, start and stop, waiting until ready, scraping /metrics, and polling that gives
up with the reason instead of hanging."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import psutil

from tests.support.probe import probe_until

ROOT = Path(__file__).resolve().parents[2]


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
            "TRANSXNET_GRPC_PORT": "0",  # parallel processes must not fight over 8001
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
    """`args` from the repository root, output captured, in a process group of its own: killed on
    exit with whatever it started (a wrapper such as strace would otherwise leave the service it
    runs behind, orphaned)."""
    process = subprocess.Popen(
        args,
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        start_new_session=True,
    )
    try:
        yield process
    finally:
        _stop_group(process, graceful=False)


@dataclass
class ServiceProcess:
    """A running service: its base URL, its process, and its log (read after it stopped)."""

    base: str
    process: subprocess.Popen
    log_path: Path

    @property
    def pid(self) -> int:
        return self.process.pid

    def url(self, path: str) -> str:
        return self.base + path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")

    def metric(self, name: str) -> float:
        """One unlabelled sample from /metrics (e.g. `transxnet_queue_depth`)."""
        for line in httpx.get(self.url("/metrics"), timeout=10).text.splitlines():
            if line.startswith(name + " "):
                return float(line.split()[1])
        raise AssertionError(f"{name} not in /metrics")

    def labelled_metric(self, name: str, **labels: str) -> float:
        """The sum of `name` samples whose labels include `labels` (0 if none)."""
        total = 0.0
        for line in httpx.get(self.url("/metrics"), timeout=10).text.splitlines():
            if not line.startswith(name + "{"):
                continue
            head, value = line.rsplit(" ", 1)
            if all(f'{key}="{val}"' in head for key, val in labels.items()):
                total += float(value)
        return total

    def wait_until(self, predicate: Callable[[], bool], timeout_s: float, what: str) -> None:
        wait_for(predicate, timeout_s, what=what, process=self.process, log=self.log)

    def stop(self, timeout_s: float = 60) -> int:
        """SIGTERM and wait: the exit code (a clean drain is 0)."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout_s)


def _ready(service: ServiceProcess, path: str = "/readyz") -> bool:
    with contextlib.suppress(httpx.TransportError):
        return httpx.get(service.url(path), timeout=2).status_code == 200
    return False


@contextmanager
def service_process(
    model_path: Path,
    *,
    helper_args: list[str] | None = None,
    command: Callable[[int], list[str]] | None = None,
    ready_path: str = "/readyz",
    ready_timeout_s: float = 300,
    graceful_stop: bool = False,
    env: dict[str, str] | None = None,
    **settings: str,
) -> Iterator[ServiceProcess]:
    """Start `python -m app` on a free port with TRANSXNET_* `settings` (keys without the prefix) and
    wait until `ready_path` answers 200.

    `helper_args`: run the instrumented server (`tests.support.serve`) with these arguments instead;
    `command(port)`: run another server altogether (the benchmarks' peers). The server runs in its
    own process group. `env`: more environment variables (e.g. `TRANSXNET_INTRA_OP_THREADS="0"` to
    undo the tests' one-thread default). At the end the group is killed, or with `graceful_stop` sent
    SIGTERM first.
    """
    port = free_port()
    extra = {f"TRANSXNET_{key.upper()}": str(value) for key, value in settings.items()}
    overrides = {"TRANSXNET_PORT": str(port), "TRANSXNET_LOG_LEVEL": "warning", **extra, **(env or {})}
    environment = service_env(model_path, **overrides)
    args = [sys.executable, "-m", "app"]
    if helper_args is not None:
        args = [sys.executable, "-m", "tests.support.serve", *helper_args]
    if command is not None:
        args = command(port)
    handle, log_name = tempfile.mkstemp(prefix="transxnet-service-", suffix=".log")
    with os.fdopen(handle, "w") as log:
        process = subprocess.Popen(
            args, cwd=ROOT, env=environment, stdout=log, stderr=subprocess.STDOUT, start_new_session=True
        )
    service = ServiceProcess(f"http://127.0.0.1:{port}", process, Path(log_name))
    try:
        service.wait_until(lambda: _ready(service, ready_path), ready_timeout_s, f"{ready_path} 200")
        yield service
    finally:
        _stop_group(process, graceful_stop)
        with contextlib.suppress(OSError):
            os.unlink(log_name)


def _stop_group(process: subprocess.Popen, graceful: bool) -> None:
    """End the server and whatever it started (a peer's worker processes, a traced child) with it;
    the group outlives its leader, so it is killed even when the leader has exited."""
    if process.poll() is not None:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(process.pid, signal.SIGKILL)
        return
    if graceful:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(process.pid, signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=30)
            return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait(timeout=10)


@dataclass
class Watch:
    """Polls /healthz and samples RSS in the background until stopped."""

    service: ServiceProcess
    probe_latencies: list[float] = field(default_factory=list)
    probe_failures: int = 0
    peak_rss: int = 0
    start_rss: int = 0
    _stop: threading.Event = field(default_factory=threading.Event)

    def _probe(self) -> None:
        self.probe_latencies, self.probe_failures = probe_until(self.service.base, self._stop)

    def _sample(self) -> None:
        process = psutil.Process(self.service.pid)
        while not self._stop.is_set():
            self.peak_rss = max(self.peak_rss, process.memory_info().rss)
            self._stop.wait(0.01)

    @property
    def slowest_probe(self) -> float:
        return max(self.probe_latencies, default=0.0)

    @property
    def rss_growth(self) -> int:
        return max(0, self.peak_rss - self.start_rss)


@contextmanager
def watching(service: ServiceProcess, *, probe_process: bool = False) -> Iterator[Watch]:
    """Watch `service` for the block: its /healthz latency every 20 ms and its peak RSS every 10 ms.

    `probe_process`: poll from a process of its own (`tests.support.probe`), so that what this
    process does meanwhile (building or sending a large request holds its GIL) cannot show up as the
    server's latency; it costs a Python start-up, so the tests' many short watches use a thread."""
    watch = Watch(service, start_rss=psutil.Process(service.pid).memory_info().rss)
    prober = None
    threads = [threading.Thread(target=watch._sample)]
    if probe_process:
        prober = subprocess.Popen(
            [sys.executable, "-m", "tests.support.probe", service.base],
            cwd=ROOT,
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        assert prober.stdout is not None and prober.stdout.readline().strip() == "ready"
    else:
        threads.append(threading.Thread(target=watch._probe))
    for thread in threads:
        thread.start()
    try:
        yield watch
    finally:
        watch._stop.set()
        for thread in threads:
            thread.join()
        if prober is not None:
            result = json.loads(prober.communicate(timeout=60)[0])
            watch.probe_latencies, watch.probe_failures = result["latencies"], result["failures"]
