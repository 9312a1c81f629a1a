"""What each of issue 21's attacks costs the real service: `python -m benchmarks.hostile_bench`.

For every case of the hostile corpus (tests/support/hostile.py) and the request-level attacks (the
four inflating JSON bombs, 32-image /features JSON, a 44 MB JSON tensor), against `python -m app`
serving TransXNet-T with its defaults: the status, how long the request took, how much the
server's RSS grew, and the slowest /healthz answer while it ran (polled every 20 ms from a process of
its own, so this one's work cannot be mistaken for the server's). The tests
(tests/reliability/test_hostile_requests.py) hold the same quantities to generous bounds; this
prints the measured values for docs/benchmarks.md. Writes benchmarks/results/hostile.md and .json.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.service_bench import DEFAULT_MODEL, RESULTS, ensure_model  # noqa: E402
from tests.support.hostile import DEFLATE_JSON, hostile_cases, json_inflation_bomb, json_tensor_body  # noqa: E402
from tests.support.images import encoded_image  # noqa: E402
from tests.support.processes import ServiceProcess, service_process, watching  # noqa: E402

MIB = 1 << 20


def _post(service: ServiceProcess, path: str, **kwargs: object) -> int:
    return httpx.post(service.url(path), timeout=120, **kwargs).status_code


#: Each request-level attack builds its payload first (in this process, outside the measurement:
#: building 44 MB of JSON holds this process's GIL for a second, which the probe thread here would
#: otherwise report as the server's stall) and returns the call that sends it.
Attack = Callable[[ServiceProcess], Callable[[], str]]


def _json_bombs(service: ServiceProcess) -> Callable[[], str]:
    bomb = json_inflation_bomb()

    def send() -> str:
        with ThreadPoolExecutor(4) as pool:
            futures = [
                pool.submit(
                    _post, service, "/v2/models/transxnet_t/infer", content=bomb, headers=DEFLATE_JSON
                )
                for _ in range(4)
            ]
            return ",".join(str(future.result()) for future in futures)

    return send


def _features_json(images: int) -> Attack:
    def prepare(service: ServiceProcess) -> Callable[[], str]:
        files = [("files", (f"{i}.png", encoded_image(i), "image/png")) for i in range(images)]
        params = {"outputs": "pooled,stage1,stage2,stage3,stage4"}
        return lambda: str(_post(service, "/features", files=files, params=params))

    return prepare


def _json_tensor(service: ServiceProcess) -> Callable[[], str]:
    body = json_tensor_body()
    path = "/v2/models/transxnet_t/infer"
    return lambda: f"{_post(service, path, content=body)} ({len(body) / MIB:.0f} MiB)"


REQUEST_ATTACKS: dict[str, Attack] = {
    "4 deflate JSON bombs (550 MB each) to /v2": _json_bombs,
    "/features, every output as JSON, 32 images": _features_json(32),
    "/features, every output as JSON, 6 images (1.75M values)": _features_json(6),
    "/v2 FP32 tensor as JSON, 14 images (44 MB)": _json_tensor,
}


def _measure(service: ServiceProcess, run: Callable[[], str]) -> dict:
    with watching(service, probe_process=True) as watch:
        started = time.perf_counter()
        outcome = run()
        elapsed = time.perf_counter() - started
    return {
        "outcome": outcome,
        "seconds": round(elapsed, 3),
        "rss_growth_mib": round(watch.rss_growth / MIB, 1),
        "slowest_healthz_ms": round(watch.slowest_probe * 1000, 1),
        "healthz_failures": watch.probe_failures,
    }


def run(model: Path) -> list[dict]:
    rows = []
    with service_process(model, env={"TRANSXNET_INTRA_OP_THREADS": "0"}) as service:
        for name, case in sorted(hostile_cases().items()):
            data = case.build()
            headers = {"content-type": case.content_type}
            row = _measure(
                service,
                lambda data=data, headers=headers: str(
                    _post(service, "/classify", content=data, headers=headers)
                ),
            )
            rows.append({"attack": name, "expected": case.status, **row})
            print(json.dumps(rows[-1]), flush=True)
        for name, attack in REQUEST_ATTACKS.items():
            rows.append({"attack": name, "expected": None, **_measure(service, attack(service))})
            print(json.dumps(rows[-1]), flush=True)
    return rows


def markdown(rows: Sequence[dict]) -> str:
    lines = [
        "# Hostile inputs: what each attack costs the service",
        "",
        f"`python -m benchmarks.hostile_bench` on {platform.processor() or platform.machine()}, "
        f"{time.strftime('%Y-%m-%d')}: `python -m app` serving TransXNet-T, defaults (2 decode threads).",
        "",
        "| attack | status | seconds | RSS growth MiB | slowest /healthz ms |",
        "|---|---|---:|---:|---:|",
    ]
    for row in rows:
        lines.append(
            f"| {row['attack']} | {row['outcome']} | {row['seconds']:.2f} | {row['rss_growth_mib']:.0f} | "
            f"{row['slowest_healthz_ms']:.0f} |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model", type=Path, default=DEFAULT_MODEL, help="exported ONNX (exported if missing)"
    )
    args = parser.parse_args(argv)
    rows = run(ensure_model(args.model))
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "hostile.json").write_text(json.dumps(rows, indent=1) + "\n")
    (RESULTS / "hostile.md").write_text(markdown(rows))
    print(markdown(rows))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
