"""Render the GPU measurement's results file (`scripts/gpu/measure.sh`) as markdown.

    python -m benchmarks.gpu_report --results results.json --out benchmarks/results --stem gpu_h200

writes `<stem>.md` and a copy of the JSON as `<stem>.json`. Every table is built from what the file
holds; a stage that did not run (budget, failure) shows as missing with its recorded reason, never
as a number. The verdicts (parity, the issue's two goals, what bounds eager PyTorch and the service)
are computed from the numbers here, with the numbers beside them.
"""

from __future__ import annotations

import argparse
import json
import math
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import Any

BATCH_ORDER = (1, 2, 4, 8, 16, 32, 64, 128, 256)
GOAL_SERVICE_SHARE = 0.8


def _f(value: Any, spec: str = ".0f", missing: str = "–") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _rows(block: dict | None) -> dict[int, dict]:
    if not isinstance(block, dict):
        return {}
    return {int(k): v for k, v in block.items() if k.isdigit() and isinstance(v, dict) and "error" not in v}


def environment_section(data: dict) -> list[str]:
    env = data.get("environment", {})
    torch_env = data.get("torch_env", {})
    packages = env.get("packages", {})
    ort_module = env.get("onnxruntime_module", {})
    lines = ["## Machine and versions", ""]
    lines.append(f"- GPU: {torch_env.get('device', '?')} (nvidia-smi: {env.get('nvidia_smi', '?')})")
    lines.append(
        f"- CPU: {env.get('cpu_model', '?')}, {env.get('cpus', '?')} cores; {env.get('platform', '?')}"
    )
    lines.append(
        f"- Python {env.get('python', '?')}; torch {torch_env.get('torch', packages.get('torch'))} "
        f"(CUDA {torch_env.get('cuda', '?')}, cuDNN {torch_env.get('cudnn', '?')}); "
        f"triton {packages.get('triton')}"
    )
    lines.append(
        f"- onnxruntime {ort_module.get('version', '?')} from {ort_module.get('file', '?')} "
        f"(built for CUDA {ort_module.get('cuda_version', '?')}; "
        f"providers {ort_module.get('available_providers')})"
    )
    lines.append(
        "- "
        + ", ".join(f"{name} {packages.get(name)}" for name in ("onnx", "onnxscript", "numpy", "fastapi"))
        + f", uvicorn {packages.get('uvicorn')}, pillow {packages.get('pillow')}"
    )
    if data.get("mode") == "smoke":
        lines += ["", "**SMOKE RUN (CPU provider, tiny settings): these numbers measure nothing.**"]
    return [*lines, ""]


def parity_section(data: dict) -> list[str]:
    parity = data.get("parity", {})
    lines = ["## Parity: CUDA provider vs CPU ONNX Runtime and the official outputs", ""]
    if not parity:
        return [*lines, f"not run: {data.get('ort_parity_error', 'no parity results')}", ""]
    lines += [
        "| session | batch | logits vs CPU fp32 | worst output vs CPU | logits vs official | top-1 agreement "
        "| ok |",
        "|---|---:|---:|---|---:|---:|---|",
    ]
    for label in ("fp32", "fp32_no_tf32", "fp16"):
        for batch, row in sorted(_rows(parity.get(label)).items()):
            cpu, official = row["vs_cpu_ort_fp32"], row["vs_official"]
            worst = cpu["worst"]
            lines.append(
                f"| {label} | {batch} | {cpu['rel_error']['logits']:.2e} | "
                f"{worst} {cpu['rel_error'][worst]:.2e} | "
                f"{official['rel_error']['logits']:.2e} | {cpu['top1_agreement']:.2f} | "
                f"{'yes' if row['ok'] else 'NO'} |"
            )
    lines += [
        "",
        "Tolerances: fp32 ≤ 1e-4 relative on every output; fp16 ≤ 1e-2 on logits with the same top-1.",
    ]
    for label in ("fp32", "fp16", "fp32_no_tf32"):
        options = parity.get(label, {}).get("provider_options", {}).get("CUDAExecutionProvider")
        if options:
            keys = ("use_tf32", "cudnn_conv_algo_search", "cudnn_conv_use_max_workspace", "enable_cuda_graph")
            lines.append(
                f"- {label} CUDA options in effect: " + ", ".join(f"{k}={options.get(k)}" for k in keys)
            )
    return [*lines, ""]


def _best(
    rows: dict[int, dict], key: str = "images_per_s", at_least: int = 0
) -> tuple[int | None, float | None]:
    candidates = {b: r.get(key) for b, r in rows.items() if b >= at_least and r.get(key)}
    if not candidates:
        return None, None
    batch = max(candidates, key=lambda b: candidates[b])
    return batch, candidates[batch]


def model_columns(data: dict) -> list[tuple[str, dict[int, dict], str]]:
    ort = data.get("ort_throughput", {})
    eager = data.get("torch_eager", {})
    compiled = data.get("torch_compile", {})
    session_run = {b: r["session_run"] for b, r in _rows(ort.get("fp32_plain")).items() if "session_run" in r}
    return [
        ("ORT CUDA fp16 (IOBinding)", _rows(ort.get("fp16_plain")), "images_per_s"),
        ("ORT CUDA fp16 + CUDA graphs", _rows(ort.get("fp16_cuda_graph")), "images_per_s"),
        ("ORT CUDA fp32 (IOBinding)", _rows(ort.get("fp32_plain")), "images_per_s"),
        ("ORT CUDA fp32 + CUDA graphs", _rows(ort.get("fp32_cuda_graph")), "images_per_s"),
        ("ORT CUDA fp32 session.run (service's call)", session_run, "images_per_s"),
        ("torch eager fp32", _rows(eager.get("fp32")), "images_per_s"),
        ("torch eager fp16", _rows(eager.get("fp16")), "images_per_s"),
        ("torch.compile max-autotune fp16", _rows(compiled.get("fp16")), "images_per_s"),
        ("torch.compile max-autotune fp32", _rows(compiled.get("fp32")), "images_per_s"),
    ]


def throughput_section(data: dict) -> list[str]:
    columns = [c for c in model_columns(data) if c[1]]
    lines = ["## Model throughput (images/s; TransXNet-T 224×224, logits)", ""]
    if not columns:
        return [*lines, "not run", ""]
    lines.append("| batch | " + " | ".join(name for name, _, _ in columns) + " |")
    lines.append("|---:|" + "---:|" * len(columns))
    for batch in BATCH_ORDER:
        cells = [_f(rows.get(batch, {}).get(key)) for _, rows, key in columns]
        if any(c != "–" for c in cells):
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    lines += ["", "Cold first run per new batch size (ms; cuDNN algorithm search, graph capture):", ""]
    ort = data.get("ort_throughput", {})
    labels = [k for k in ort if isinstance(ort[k], dict) and _rows(ort[k])]
    lines.append("| batch | " + " | ".join(labels) + " |")
    lines.append("|---:|" + "---:|" * len(labels))
    for batch in BATCH_ORDER:
        cells = [_f(_rows(ort[label]).get(batch, {}).get("cold_first_run_ms")) for label in labels]
        if any(c != "–" for c in cells):
            lines.append(f"| {batch} | " + " | ".join(cells) + " |")
    compiled = data.get("torch_compile", {})
    for label in ("fp16", "fp32"):
        block = compiled.get(label, {})
        forms = sorted({row.get("form", "?") for row in _rows(block).values()})
        if forms:
            lines.append(f"- torch.compile {label}: IDConv form {', '.join(forms)}")
        if block.get("grouped_form_error"):
            lines.append(
                f"- torch.compile {label}: the official grouped form did not compile, so the export form "
                f"(batched matmuls, the ONNX file's) was timed: {block['grouped_form_error'][:300]}"
            )
    for label, block in ort.items():
        if isinstance(block, dict) and block.get("error"):
            lines.append(f"- {label}: FAILED {block['error'][:300]}")
        if isinstance(block, dict) and block.get("skipped_for_budget"):
            lines.append(f"- {label}: batches {block['skipped_for_budget']} skipped (budget)")
    return [*lines, ""]


def goals_section(data: dict) -> list[str]:
    ort = data.get("ort_throughput", {})
    compiled = data.get("torch_compile", {})
    lines = ["## Goals", ""]
    for batch in (64, 128, 256):
        ours = [
            _rows(ort.get(k)).get(batch, {}).get("images_per_s") for k in ("fp16_plain", "fp16_cuda_graph")
        ]
        ours_best = max((v for v in ours if v), default=None)
        theirs = _rows(compiled.get("fp16")).get(batch, {}).get("images_per_s")
        if ours_best and theirs:
            verdict = "met" if ours_best >= theirs else "NOT met"
            lines.append(
                f"- batch {batch}: ORT CUDA fp16 {ours_best:.0f} img/s vs torch.compile fp16 "
                f"{theirs:.0f}: {verdict}"
            )
        else:
            lines.append(
                f"- batch {batch}: not both measured (ORT fp16 {_f(ours_best)}, torch.compile {_f(theirs)})"
            )
    lines += service_goal(data)
    return [*lines, ""]


def raw_ceiling(data: dict) -> tuple[int | None, float | None]:
    """The service's ceiling: session.run on numpy (its own call), fp32, at the best batch."""
    rows = _rows(data.get("ort_throughput", {}).get("fp32_plain"))
    run_rows = {b: r["session_run"] for b, r in rows.items() if "session_run" in r}
    return _best(run_rows)


def service_goal(data: dict) -> list[str]:
    batch, ceiling = raw_ceiling(data)
    best = None
    for name, config in data.get("service", {}).get("configs", {}).items():
        for level in config.get("levels", {}).values():
            if best is None or level["throughput_img_s"] > best[2]:
                best = (name, level["concurrency"], level["throughput_img_s"])
    if not ceiling or best is None:
        return ["- service vs raw CUDA: not both measured"]
    share = best[2] / ceiling
    verdict = "met" if share >= GOAL_SERVICE_SHARE else "NOT met (see where the time goes)"
    return [
        f"- service: best {best[2]:.0f} img/s ({best[0]}, c={best[1]}) vs raw CUDA fp32 session.run "
        f"{ceiling:.0f} img/s at batch {batch}: {share:.0%} ({verdict})"
    ]


def eager_verdict(analysis: dict, eager_ms: float | None) -> str:
    graph = analysis.get("cuda_graph", {})
    sync = analysis.get("sync_debug", {})
    profiler = analysis.get("profiler", {})
    dispatch = analysis.get("dispatch", {})
    if sync.get("sync_warnings") or dispatch.get("syncing_ops"):
        return "a host synchronisation inside the forward (see the sync readings)"
    if graph.get("captured") and eager_ms:
        replay = graph["replay_median_ms"]
        gpu = profiler.get("gpu_kernel_ms_per_forward")
        if replay < 0.5 * eager_ms:
            return (
                f"launch-bound: the same kernels replayed as one CUDA graph take {replay:.1f} ms against "
                f"{eager_ms:.1f} ms eager ({eager_ms / replay:.0f}x), summed kernel time "
                f"{_f(gpu, '.1f')} ms; "
                "capture succeeded, so nothing in the forward synchronises the host"
            )
        return f"GPU-bound at this batch: graph replay {replay:.1f} ms vs eager {eager_ms:.1f} ms"
    return "undetermined (capture failed or not run: see the readings)"


def eager_section(data: dict) -> list[str]:
    lines = ["## Why eager PyTorch takes tens of ms per forward", ""]
    analysis = data.get("eager_analysis", {}).get("fp32", {})
    if not analysis:
        return [*lines, "not run", ""]
    eager_rows = _rows(data.get("torch_eager", {}).get("fp32"))
    for batch, readings in sorted(((int(b), r) for b, r in analysis.items()), key=lambda x: x[0]):
        row = eager_rows.get(batch, {})
        lines.append(
            f"**batch {batch}**: eager {_f(row.get('median_ms'), '.1f')} ms synchronised, host enqueue "
            f"{_f(row.get('enqueue_ms'), '.1f')} ms → {eager_verdict(readings, row.get('median_ms'))}."
        )
        lines.append("")
        for name in ("dispatch", "sync_debug", "cuda_graph", "profiler"):
            if name in readings:
                lines.append(f"- {name}: `{json.dumps(readings[name])[:700]}`")
        lines.append("")
    return lines


def service_section(data: dict) -> list[str]:
    service = data.get("service", {})
    lines = [
        "## The service on the GPU (closed loop of JPEGs, `python -m app`, TRANSXNET_PROVIDERS=cuda)",
        "",
    ]
    if not service.get("configs"):
        return [*lines, "not run", ""]
    batch, ceiling = raw_ceiling(data)
    lines.append(
        f"Raw CUDA ceiling (fp32 session.run at its best batch, {batch}): {_f(ceiling)} img/s. "
        f"Corpus: {service.get('corpus')}. Single-thread cost per image outside the model: "
        f"`{json.dumps(service.get('decode_cost_ms_per_image'))[:300]}`."
    )
    lines += [
        "",
        "| config | c | img/s | vs ceiling | p50 ms | p99 ms | mean batch | model busy | preprocess ms/img | "
        "inference ms/batch | server CPU % | client CPU % | errors |",
        "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
    ]
    for name, config in service["configs"].items():
        if config.get("error"):
            lines.append(f"| {name} | | FAILED: {config['error'][:200]} |" + " |" * 10)
        for c, level in sorted(config.get("levels", {}).items(), key=lambda x: int(x[0])):
            errors = sum(level["errors"].values()) + level["transport_errors"]
            share = level["throughput_img_s"] / ceiling if ceiling else None
            lines.append(
                f"| {name} | {c} | {level['throughput_img_s']:.0f} | {_f(share, '.0%')} | "
                f"{_f(level['p50_ms'])} | {_f(level['p99_ms'])} | "
                f"{_f(level.get('mean_batch_size'), '.1f')} | "
                f"{_f(level.get('model_busy_fraction'), '.0%')} | "
                f"{_f(level.get('preprocess_mean_ms'), '.1f')} | "
                f"{_f(level.get('inference_mean_ms'), '.1f')} | {_f(level['server_cpu_percent'])} | "
                f"{_f(level['client_cpu_percent'])} | {errors} |"
            )
    lines += ["", "Where the time goes, at each config's best level:", ""]
    cores = data.get("environment", {}).get("cpus") or 16
    for name, config in service["configs"].items():
        levels = list(config.get("levels", {}).values())
        if levels:
            best = max(levels, key=lambda level: level["throughput_img_s"])
            lines.append(
                f"- {name}, c={best['concurrency']}: {service_bound(best, config.get('env', {}), cores)}"
            )
    lines += [
        "",
        "Settings per config: "
        + "; ".join(f"{n}: {c.get('env')} ({c.get('request')})" for n, c in service["configs"].items()),
    ]
    if service.get("skipped_for_budget"):
        lines.append(f"- skipped for budget: {service['skipped_for_budget']}")
    return [*lines, ""]


def service_bound(level: dict, env: dict, cores: int) -> str:
    """Name what limits one service level, from its own readings (each reading stated)."""
    workers = int(env.get("TRANSXNET_PREPROCESS_WORKERS", 0)) or max(2, min(4, cores // 2))
    busy = level.get("model_busy_fraction")
    cpu = level.get("server_cpu_percent") or 0.0
    pre = level.get("preprocess_mean_ms")
    decode_capacity = workers * 1000.0 / pre if pre else None
    facts = (
        f"model busy {_f(busy, '.0%')}, server CPU {cpu:.0f}% of {100 * cores}%, client CPU "
        f"{_f(level.get('client_cpu_percent'))}%, {workers} decode threads at {_f(pre, '.1f')} ms/image "
        f"= {_f(decode_capacity)} img/s of decoding"
    )
    if busy is not None and busy >= 0.9:
        verdict = "the model (GPU path) is the bound"
    elif decode_capacity and 0.85 * decode_capacity <= level["throughput_img_s"] <= 1.15 * decode_capacity:
        verdict = "the decode threads are the bound: more workers (or reduced-scale JPEG decoding)"
    elif cpu >= 85.0 * cores:
        verdict = "the CPUs are the bound (decoding, HTTP and the load clients share them)"
    else:
        verdict = (
            "neither GPU nor decoding is saturated: something serialises (the one-process HTTP loop, "
            "the batcher)"
        )
    return f"{facts}: {verdict}"


def render(data: dict) -> str:
    lines = ["# GPU measurement: ONNX Runtime CUDA provider, PyTorch and the service", ""]
    for section in (
        environment_section,
        parity_section,
        throughput_section,
        goals_section,
        eager_section,
        service_section,
    ):
        lines += section(data)
    lines += ["## Stage times and errors", "", f"`{json.dumps(data.get('stage_seconds', {}))}`", ""]
    for key, value in data.items():
        if key.endswith("_error"):
            lines.append(f"- {key}: {str(value)[:500]}")
    return "\n".join(lines) + "\n"


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--results", type=Path, required=True)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--stem", default="gpu_report")
    parser.add_argument("--no-json", action="store_true", help="markdown only (the device run's preview)")
    args = parser.parse_args(argv)
    data = json.loads(args.results.read_text())
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / f"{args.stem}.md").write_text(render(data))
    target = args.out / f"{args.stem}.json"
    if not args.no_json and target.resolve() != args.results.resolve():
        shutil.copyfile(args.results, target)
    print(f"wrote {args.out / args.stem}.md" + ("" if args.no_json else " and .json"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
