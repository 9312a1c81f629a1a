"""Two servers alternating, several rounds: the comparison one run cannot make.

On a shared 2-core host whole benchmark runs minutes apart differ by up to 1.4x, more than the
difference being measured. Running the two servers one after the other, round after round, puts
both under the same drift; the per-round ratio and its median are what to quote.

    python -m benchmarks.interleaved --rounds 5 --concurrency 1,16            # service vs LitServe
    python -m benchmarks.interleaved --servers service-jpeg-draft,service --corpus phone

Writes `benchmarks/results/interleaved.{md,json}` for the default pair and corpus, otherwise
`interleaved_<first>_vs_<second>[_<corpus>].{md,json}`.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
from collections.abc import Sequence
from pathlib import Path

from benchmarks.loadgen import CORPORA, jpeg_corpus
from benchmarks.service_bench import (
    ROOT,
    SERVER_SPECS,
    WARMUP_REQUESTS,
    bench_server,
    ensure_model,
    level_row,
)

DEFAULT_SERVERS = "service,litserve"


def _row(server: dict, concurrency: int) -> dict:
    row = level_row(server, concurrency)
    assert row is not None, f"{server['name']} has no level {concurrency}"
    return row


def summarise(rounds: list[dict[str, dict]], names: tuple[str, str], levels: Sequence[int]) -> dict:
    """Per level: each round's throughput ratio (first / second), p99s and p50s, and medians."""
    first, second = names
    summary = {}
    for concurrency in levels:
        rows = [{name: _row(r[name], concurrency) for name in r} for r in rounds]
        ratios = [row[first]["throughput_img_s"] / row[second]["throughput_img_s"] for row in rows]
        summary[str(concurrency)] = {
            "throughput_ratio_per_round": [round(x, 3) for x in ratios],
            "median_throughput_ratio": round(statistics.median(ratios), 3),
            "rounds_with_lower_p99": sum(row[first]["p99_ms"] < row[second]["p99_ms"] for row in rows),
            **{
                f"{name}_{key}": [row[name][key] for row in rows]
                for name in names
                for key in ("throughput_img_s", "p50_ms", "p99_ms")
            },
        }
    return summary


def markdown(report: dict) -> str:
    first, second = report["servers"]
    lines = [
        f"# {first} vs {second}, interleaved ({report['rounds']} rounds)",
        "",
        f"{report['cpus']} CPUs, load average before {report['loadavg_before']}, after "
        f"{report['loadavg_after']}. {report['requests']} one-JPEG requests per level and server "
        f"(corpus `{report['corpus']}`); the servers alternate, each in a fresh process, with the "
        "settings of `benchmarks/service_bench.py`.",
        "",
        f"| c | {first} img/s | {second} img/s | ratio per round | median ratio | {first} p99 lower | "
        f"p50 {first} / {second} (median) |",
        "|---|---|---|---|---|---|---|",
    ]
    for concurrency, level in report["summary"].items():
        lines.append(
            f"| {concurrency} | {level[f'{first}_throughput_img_s']} | "
            f"{level[f'{second}_throughput_img_s']} | "
            f"{level['throughput_ratio_per_round']} | {level['median_throughput_ratio']:.2f}x | "
            f"{level['rounds_with_lower_p99']} of {report['rounds']} | "
            f"{statistics.median(level[f'{first}_p50_ms']):.0f} / "
            f"{statistics.median(level[f'{second}_p50_ms']):.0f} ms |"
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "transxnet_t.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default="1,16")
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"two of {', '.join(SERVER_SPECS)}; ratios are first/second",
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="web")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    args = parser.parse_args(argv)
    names = tuple(args.servers.split(","))
    if len(names) != 2 or len(set(names)) != 2 or not set(names) <= set(SERVER_SPECS):
        parser.error(f"--servers takes two different names from {', '.join(SERVER_SPECS)}")
    levels = [int(c) for c in args.concurrency.split(",")]
    model = ensure_model(args.model)
    blobs = jpeg_corpus(CORPORA[args.corpus])
    report: dict = {
        "servers": list(names),
        "corpus": args.corpus,
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
                name: bench_server(SERVER_SPECS[name], model, blobs, levels, args.requests, WARMUP_REQUESTS)
                for name in names
            }
        )
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarise(rounds, names, levels)  # type: ignore[arg-type]
    report["raw"] = rounds
    stem = "interleaved"
    if args.servers != DEFAULT_SERVERS or args.corpus != "web":
        stem += f"_{names[0]}_vs_{names[1]}" + ("" if args.corpus == "web" else f"_{args.corpus}")
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
