"""Poll a service's /healthz every 20 ms: `probe_until(base, stop)` in a thread, or this module as its
own process (`python -m tests.support.probe BASE`, until its stdin closes; it then prints the
latencies as JSON). The process form measures the server alone: a thread in a process that is busy
building or sending a large request would wait for that process's GIL and blame the server."""

from __future__ import annotations

import json
import sys
import threading
import time
from collections.abc import Callable

import httpx

PERIOD_S = 0.02


def probe_until(
    base: str, stop: threading.Event, on_started: Callable[[], None] | None = None
) -> tuple[list[float], int]:
    """(latencies in seconds, failures) of /healthz polls until `stop` is set; `on_started` is called
    once the first poll has answered (the connection is up), so a watch starts measuring at once."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(base_url=base, timeout=30) as client:
        client.get("/healthz")  # connect before the first measured poll
        if on_started is not None:
            on_started()
        while not stop.is_set():
            started = time.perf_counter()
            try:
                ok = client.get("/healthz").status_code == 200
            except httpx.TransportError:
                ok = False
            latencies.append(time.perf_counter() - started)
            failures += not ok
            stop.wait(PERIOD_S)
    return latencies, failures


def main() -> None:
    stop = threading.Event()

    def until_stdin_closes() -> None:
        sys.stdin.read()
        stop.set()

    threading.Thread(target=until_stdin_closes, daemon=True).start()
    latencies, failures = probe_until(sys.argv[1], stop, lambda: print("ready", flush=True))
    print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)


if __name__ == "__main__":
    main()
