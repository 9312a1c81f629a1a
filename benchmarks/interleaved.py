"""Two servers alternating, several rounds: the comparison one run cannot make.

On a shared 2-core host whole benchmark runs minutes apart differ by up to 1.4x, more than the
difference being measured. Running the two servers one after the other, round after round, puts
both under the same drift; the per-round ratio and its median are what to quote.

    python -m benchmarks.interleaved --rounds 5 --concurrency 1,16            # service vs LitServe
    python -m benchmarks.interleaved --servers service-jpeg-draft,service --corpus phone

Each round also measures raw ONNX Runtime (the ceiling, in its own process) just before the
servers, so the first server's targets (c=1 p50 within 10 ms of the batch-1 model latency, c=16 at
90% of the best-batch ceiling) are judged against a ceiling measured under the same host drift.

Writes `benchmarks/results/interleaved.{md,json}` for the default pair, corpus and levels,
otherwise `interleaved_<first>_vs_<second>[_<corpus>][_c<levels>].{md,json}`.
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
    CEILING_SHARE_TARGET,
    P50_OVER_MODEL_TARGET_MS,
    ROOT,
    SERVER_SPECS,
    WARMUP_REQUESTS,
    ServerSpec,
    bench_server,
    best_batch,
    ensure_model,
    level_row,
    measure_ceiling,
)

DEFAULT_SERVERS = "service,litserve"
DEFAULT_LEVELS = "1,16"
CEILING_BATCH_SIZES = (1, 2, 4, 8, 16)
CEILING_SECONDS = 3.0


def _row(server: dict, concurrency: int) -> dict:
    row = level_row(server, concurrency)
    assert row is not None, f"{server['name']} has no level {concurrency}"
    return row


def summarise(
    rounds: list[dict[str, dict]], names: tuple[str, str], levels: Sequence[int], ceilings: list[dict]
) -> dict:
    """Per level: each round's throughput ratio (first / second), p99s and p50s, and medians; and the
    first server's two latency/throughput targets against that round's own ceiling."""
    first, second = names
    summary = {}
    for concurrency in levels:
        rows = [{name: _row(r[name], concurrency) for name in names} for r in rounds]
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
        level = summary[str(concurrency)]
        if concurrency == 1:
            model_ms = [c["batch_sizes"]["1"]["batch_ms_p50"] for c in ceilings]
            over = [row[first]["p50_ms"] - ms for row, ms in zip(rows, model_ms, strict=True)]
            level["model_batch1_ms_per_round"] = [round(ms, 1) for ms in model_ms]
            level[f"{first}_p50_over_model_ms_per_round"] = [round(x, 1) for x in over]
            level[f"{first}_p50_over_model_ms_median"] = round(statistics.median(over), 1)
        if concurrency == 16:
            best = [best_batch(c)[1]["images_per_s"] for c in ceilings]
            share = [row[first]["throughput_img_s"] / b for row, b in zip(rows, best, strict=True)]
            level["ceiling_best_img_s_per_round"] = [round(b, 1) for b in best]
            level[f"{first}_share_of_ceiling_per_round"] = [round(x, 3) for x in share]
            level[f"{first}_share_of_ceiling_median"] = round(statistics.median(share), 3)
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
    lines += ["", f"Targets for `{first}`, each round against raw ORT measured in the same round:", ""]
    c1, c16 = report["summary"].get("1"), report["summary"].get("16")
    if c1:
        over = c1[f"{first}_p50_over_model_ms_per_round"]
        met = sum(x <= P50_OVER_MODEL_TARGET_MS for x in over)
        lines.append(
            f"- c=1 p50 minus the batch-1 model latency (target <= {P50_OVER_MODEL_TARGET_MS:g} ms): "
            f"{over} ms, median {c1[f'{first}_p50_over_model_ms_median']} ms, met in {met} of "
            f"{len(over)} rounds (model {c1['model_batch1_ms_per_round']} ms)."
        )
    if c16:
        share = c16[f"{first}_share_of_ceiling_per_round"]
        percents = ", ".join(f"{100 * x:.0f}%" for x in share)
        median = 100 * c16[f"{first}_share_of_ceiling_median"]
        met = sum(x >= CEILING_SHARE_TARGET for x in share)
        lines.append(
            f"- c=16 throughput over raw ORT at its best batch size (target >= "
            f"{100 * CEILING_SHARE_TARGET:.0f}%): {percents}, median {median:.0f}%, met in {met} of "
            f"{len(share)} rounds (ceiling {c16['ceiling_best_img_s_per_round']} img/s)."
        )
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", type=Path, default=ROOT / "models" / "transxnet_t.onnx")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--concurrency", default=DEFAULT_LEVELS)
    parser.add_argument("--requests", type=int, default=240)
    parser.add_argument(
        "--servers",
        default=DEFAULT_SERVERS,
        help=f"two of {', '.join(SERVER_SPECS)}; ratios are first/second",
    )
    parser.add_argument("--corpus", choices=sorted(CORPORA), default="web")
    parser.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results")
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout of the project (e.g. `git worktree add /tmp/before <commit>`): adds the "
        "server `service-baseline`, the service run from that tree",
    )
    args = parser.parse_args(argv)
    if args.baseline is not None:
        SERVER_SPECS["service-baseline"] = ServerSpec(
            "service-baseline", "service", tree=args.baseline.resolve()
        )
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
    rounds, ceilings = [], []
    for index in range(args.rounds):
        print(f"round {index + 1} of {args.rounds}", flush=True)
        ceilings.append(measure_ceiling(model, CEILING_BATCH_SIZES, CEILING_SECONDS, intra_op=0))
        rounds.append(
            {
                name: bench_server(SERVER_SPECS[name], model, blobs, levels, args.requests, WARMUP_REQUESTS)
                for name in names
            }
        )
    report["loadavg_after"] = [round(x, 2) for x in os.getloadavg()]
    report["summary"] = summarise(rounds, names, levels, ceilings)  # type: ignore[arg-type]
    report["raw"] = rounds
    report["ceilings"] = ceilings
    stem = "interleaved"
    if (args.servers, args.corpus, args.concurrency) != (DEFAULT_SERVERS, "web", DEFAULT_LEVELS):
        stem += f"_{names[0]}_vs_{names[1]}" + ("" if args.corpus == "web" else f"_{args.corpus}")
        if args.concurrency != DEFAULT_LEVELS:
            stem += "_c" + "-".join(str(c) for c in levels)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2))
    text = markdown(report)
    (args.out / f"{stem}.md").write_text(text)
    print(text)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
