"""The export as one library call: build -> trace -> check -> verify -> write (-> Triton repository).

The file is written to a temporary name first and moved into place only after it passed the check
and the verification, so a failed export never leaves a model that looks valid at `output`.
"""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from export.download import resolve_checkpoint
from export.labels import imagenet_labels, load_labels
from export.onnx_export import (
    DEFAULT_OPSET,
    DEFAULT_SEED,
    StepTimer,
    attach_metadata,
    build_metadata,
    build_model,
    check_onnx,
    convert_to_fp16,
    default_output_path,
    save_onnx,
    trace_to_onnx,
)
from export.triton import write_triton_repository
from export.verify import VerificationReport, verify_onnx
from model import resolve_variant
from runtime.metadata import ModelMetadata

log = logging.getLogger(__name__)


@dataclass
class ExportResult:
    path: Path
    metadata: ModelMetadata
    timings: dict[str, float]
    verification: VerificationReport | None
    triton_model_dir: Path | None = None


def export_model(
    variant: str = "t",
    *,
    checkpoint: str | None = None,
    image_size: int = 224,
    output: str | Path | None = None,
    opset: int = DEFAULT_OPSET,
    fp16: bool = False,
    labels_file: str | Path | None = None,
    num_classes: int = 1000,
    seed: int = DEFAULT_SEED,
    verify: bool = True,
    expected: str | Path | None = None,
    triton_repo: str | Path | None = None,
    max_batch_size: int = 16,
    cache_dir: str | Path | None = None,
) -> ExportResult:
    """Export one variant to a verified ONNX file; see `python -m export --help` for the options."""
    variant = resolve_variant(variant)
    out = Path(output) if output is not None else default_output_path(variant, image_size, fp16=fp16)
    labels = load_labels(labels_file, num_classes=num_classes) if labels_file else None
    if labels is None:
        if num_classes != 1000:
            raise ValueError(f"{num_classes} classes need a label file (--labels); ImageNet has 1000")
        labels = imagenet_labels()
    timer = StepTimer()

    with timer.step("build", f"{variant} at {image_size}px"):
        ckpt = resolve_checkpoint(
            checkpoint,
            variant=variant,
            image_size=image_size,
            cache_dir=Path(cache_dir) if cache_dir else None,
        )
        net, weights = build_model(
            variant, checkpoint=ckpt, image_size=image_size, num_classes=num_classes, seed=seed
        )
        metadata = build_metadata(
            net, weights=weights, labels=labels, precision="fp16" if fp16 else "fp32", opset=opset
        )
    with timer.step("trace", f"torch.onnx dynamo exporter, opset {opset}, dynamic batch"):
        proto = trace_to_onnx(net, opset=opset)
        if fp16:
            proto = convert_to_fp16(proto)
        attach_metadata(proto, metadata)
    tmp = out.with_name(f".{out.name}.partial")
    try:
        with timer.step("check", "onnx.checker full check"):
            save_onnx(proto, tmp)
            del proto
            check_onnx(tmp)
        report = None
        if verify:
            with timer.step("verify", "ONNX Runtime vs PyTorch at batch 1, 3, 8"):
                reference = dict(np.load(expected)) if expected else None
                report = verify_onnx(tmp, net, fp16=fp16, expected=reference)
                worst = report.worst
                if worst is not None:
                    log.info(
                        "[verify] worst: %s at batch %d, %.2e",
                        worst.output,
                        worst.batch_size,
                        worst.rel_error,
                    )
        else:
            log.warning("[verify] skipped (--no-verify): the file was not compared with PyTorch")
        with timer.step("write", str(out)):
            os.replace(tmp, out)
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
    result = ExportResult(path=out, metadata=metadata, timings=timer.timings, verification=report)
    if triton_repo is not None:
        with timer.step("triton", f"model repository in {triton_repo}"):
            name = out.stem.replace("-", "_")
            result.triton_model_dir = write_triton_repository(
                triton_repo, out, metadata, model_name=name, max_batch_size=max_batch_size, fp16=True
            )
    return result
