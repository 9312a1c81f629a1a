"""The ceiling: raw ONNX Runtime throughput at fixed batch sizes, no HTTP, no decoding, no queue.

`python -m benchmarks.ort_ceiling --model models/transxnet_t.onnx --batch-sizes 1,4,16` prints JSON.
Run in its own process by `service_bench` so its thread pool never competes with a server's. It uses
the service's own session factory (`runtime.session.create_session`), so the options are identical.
"""

from __future__ import annotations

import argparse
import json
import time

import numpy as np

from runtime.metadata import INPUT_NAME
from runtime.session import create_session, read_metadata


def measure(model: str, batch_sizes: list[int], seconds: float, intra_op_threads: int) -> dict:
    """Per batch size: images/s and per-batch latency percentiles over at least `seconds` of runs."""
    loaded = create_session(model, providers="cpu", intra_op_threads=intra_op_threads)
    size = read_metadata(loaded.session).image_size
    rng = np.random.default_rng(0)
    results = {}
    for batch_size in batch_sizes:
        batch = rng.standard_normal((batch_size, 3, size, size), dtype=np.float32)
        loaded.session.run(["logits"], {INPUT_NAME: batch})  # warm-up: allocations for this shape
        times: list[float] = []
        started = time.perf_counter()
        while time.perf_counter() - started < seconds or len(times) < 3:
            t0 = time.perf_counter()
            loaded.session.run(["logits"], {INPUT_NAME: batch})
            times.append(time.perf_counter() - t0)
        array = np.asarray(times)
        results[str(batch_size)] = {
            "runs": len(times),
            "images_per_s": batch_size * len(times) / float(array.sum()),
            "batch_ms_p50": float(np.percentile(array, 50) * 1000),
            "batch_ms_p90": float(np.percentile(array, 90) * 1000),
        }
    return {"intra_op_threads": intra_op_threads, "batch_sizes": results}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True)
    parser.add_argument("--batch-sizes", default="1,2,4,8,16")
    parser.add_argument("--seconds", type=float, default=5.0, help="per batch size")
    parser.add_argument("--intra-op-threads", type=int, default=0)
    args = parser.parse_args()
    sizes = [int(s) for s in args.batch_sizes.split(",") if s]
    print(json.dumps(measure(args.model, sizes, args.seconds, args.intra_op_threads)))


if __name__ == "__main__":
    main()
