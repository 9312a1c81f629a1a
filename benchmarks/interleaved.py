"""The service against LitServe, alternating, several rounds: the comparison one run cannot make.

On a shared 2-core host whole benchmark runs minutes apart differ by up to 1.4x, more than the
difference being measured. Running the two servers one after the other, round after round, puts
both under the same drift; the per-round ratio and its median are what to quote.

    python -m benchmarks.interleaved --rounds 5 --concurrency 1,16

Writes `benchmarks/results/interleaved.{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import jpeg_corpus
from benchmarks.service_bench import ROOT, WARMUP_REQUESTS, ServerSpec, bench_server, ensure_model, level_row

SERVERS = (ServerSpec("service", "service"), ServerSpec("litserve", "litserve"))


def _row(server: dict, concurrency: int) -> dict:
    row = level_row(server, concurrency)
    assert row is not None, f"{server['name']} has no level {concurrency}"
    return row


def summarise(rounds: list[dict[str, dict]], levels: Sequence[int]) -> dict:
    """Per level: each round's throughput ratio (service / LitServe), p99s and p50s, and medians."""
    summary = {}
    for concurrency in levels:
        rows = [{name: _row(r[name], concurrency) for name in r} for r in rounds]
        ratios = [row["service"]["throughput_img_s"] / row["litserve"]["throughput_img_s"] for row in rows]
        summary[str(concurrency)] = {
            "throughput_ratio_per_round": [round(x, 3) for x in ratios],
            "median_throughput_ratio": round(statistics.median(ratios), 3),
            "rounds_with_lower_p99": sum(
                row["service"]["p99_ms"] < row["litserve"]["p99_ms"] for row in rows
            ),
            **{
                f"{name}_{key}": [row[name][key] for row in rows]
                for name in ("service", "litserve")
                for key in ("throughput_img_s", "p50_ms", "p99_ms")
            },
        }
    return summary


def markdown(report: dict) -> str:
    lines = [
        f"# Service vs LitServe, interleaved ({report['rounds']} rounds)",
        "",
        f"{report['cpus']} CPUs, load average before {report['loadavg_before']}, after "
        f"{report['loadavg_after']}. {report['requests']} one-JPEG requests per level and server; the "
        "servers alternate, each in a fresh process, with the settings of `benchmarks/service_bench.py`.",
        "",
        "| c | service img/s | LitServe img/s | ratio per round | median ratio | service p99 lower | "
        "p50 service / LitServe (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency, level in report["summary"].items():
        lines.append(
            f"| {concurrency} | {level['service_throughput_img_s']} | {level['litserve_throughput_img_s']} | "
            f"{level['throughput_ratio_per_round']} | {level['median_throughput_ratio']:.2f}x | "
            f"{level['rounds_with_lower_p99']} of {report['rounds']} | "
            f"{statistics.median(level['service_p50_ms']):.0f} / "
            f"{statistics.median(level['litserve_p50_ms']):.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "transxnet_t.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    model = ensure_model(args.model)
    blobs = jpeg_corpus()
    report: dict = {
        "rounds": args.rounds,
        "requests": args.requests,
        "cpus": os.cpu_count(),
        "loadavg_before": [round(x, 2) for x in os.getloadavg()],
    }
    rounds = []
    for index in range(args.rounds):
        print(f"round {index + 1} of {args.rounds}", flush=True)
        rounds.append(
            {
                spec.name: bench_server(spec, model, blobs, levels, args.requests, WARMUP_REQUESTS)
                for spec in SERVERS
            }
        )
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarise(rounds, levels)
    report["raw"] = rounds
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "interleaved.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / "interleaved.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
