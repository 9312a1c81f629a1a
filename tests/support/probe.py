"""Poll a service's /healthz every 20 ms: `probe_until(base, stop)` in a thread, or this module as its
own process (`python -m tests.support.probe BASE`, until its stdin closes; it then prints the
latencies as JSON). The process form measures the server alone: a thread in a process that is busy
building or sending a large request would wait for that process's GIL and blame the server."""

from __future__ import annotations

import json
import sys
import threading
import time

import httpx

PERIOD_S = 0.02


def probe_until(base: str, stop: threading.Event) -> tuple[list[float], int]:
    """(latencies in seconds, failures) of /healthz polls until `stop` is set."""
    latencies: list[float] = []
    failures = 0
    with httpx.Client(base_url=base, timeout=30) as client:
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
    print("ready", flush=True)
    latencies, failures = probe_until(sys.argv[1], stop)
    print(json.dumps({"latencies": latencies, "failures": failures}), flush=True)


if __name__ == "__main__":
    main()
