"""Check an exported ONNX file against the PyTorch model it came from.

ONNX Runtime (CPU unless told otherwise) and PyTorch run the same fresh inputs at several batch sizes
(not only the traced one: a graph that specialised its batch or mixed samples fails here) and every
output is compared by relative error ||ort - torch|| / ||torch||.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from model.transxnet import TransXNet
from runtime.metadata import INPUT_NAME, OUTPUT_NAMES
from runtime.session import create_session

log = logging.getLogger(__name__)

DEFAULT_BATCH_SIZES = (1, 3, 8)
FP32_TOLERANCE = 1e-4
FP16_TOLERANCE = 1e-2


@dataclass(frozen=True)
class Comparison:
    output: str
    batch_size: int
    rel_error: float
    tolerance: float

    @property
    def ok(self) -> bool:
        return bool(np.isfinite(self.rel_error)) and self.rel_error <= self.tolerance


@dataclass
class VerificationReport:
    providers: tuple[str, ...]
    comparisons: list[Comparison] = field(default_factory=list)
    failures_text: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return not self.failures_text and all(c.ok for c in self.comparisons)

    @property
    def worst(self) -> Comparison | None:
        return max(self.comparisons, key=lambda c: c.rel_error / c.tolerance, default=None)

    def table(self) -> str:
        lines = [f"{'output':8} {'batch':>5} {'rel error':>10} {'tolerance':>9}  ok"]
        for c in self.comparisons:
            verdict = "yes" if c.ok else "NO"
            lines.append(f"{c.output:8} {c.batch_size:5d} {c.rel_error:10.2e} {c.tolerance:9.0e}  {verdict}")
        return "\n".join([*lines, *self.failures_text])


class VerificationError(RuntimeError):
    """The ONNX file disagrees with PyTorch beyond tolerance; the message says by how much."""

    def __init__(self, report: VerificationReport) -> None:
        failed = [c for c in report.comparisons if not c.ok]
        summary = "; ".join(
            f"{c.output} at batch {c.batch_size}: {c.rel_error:.2e} > {c.tolerance:.0e}" for c in failed[:6]
        )
        summary = "; ".join(filter(None, [summary, *report.failures_text]))
        super().__init__(f"ONNX verification failed: {summary}")
        self.report = report


def relative_error(actual: np.ndarray, expected: np.ndarray) -> float:
    """||actual - expected|| / ||expected|| in float64; inf on a shape mismatch."""
    if actual.shape != expected.shape:
        return float("inf")
    diff = np.linalg.norm(actual.astype(np.float64) - expected.astype(np.float64))
    return float(diff / max(np.linalg.norm(expected.astype(np.float64)), 1e-30))


def torch_outputs(net: TransXNet, images: np.ndarray) -> dict[str, np.ndarray]:
    """The six exported outputs computed by the untouched PyTorch model (official IDConv form)."""
    with torch.inference_mode():
        outputs = net.forward_outputs(torch.from_numpy(images))
    return {name: getattr(outputs, name).numpy() for name in OUTPUT_NAMES}


def verify_onnx(
    onnx_path: str | Path,
    net: TransXNet,
    *,
    batch_sizes: Sequence[int] = DEFAULT_BATCH_SIZES,
    tolerance: float = FP32_TOLERANCE,
    fp16: bool = False,
    providers: str = "cpu",
    seed: int = 20231030,
    expected: Mapping[str, np.ndarray] | None = None,
    raise_on_failure: bool = True,
) -> VerificationReport:
    """Compare the ONNX file with `net` on fresh inputs at each batch size, for every output.

    `fp16`: logits within 1e-2 and the same top-1 (the stage maps are not compared: float16's range
    is what it is). `expected`: stored reference outputs (with their `inputs`), e.g. the official
    implementation's `expected_t.npz`; the ONNX logits must match them too.
    """
    net = net.eval()
    size = net.image_size
    rng = np.random.default_rng(seed)
    inputs = {b: rng.standard_normal((b, 3, size, size)).astype(np.float32) for b in batch_sizes}
    # PyTorch first, then ONNX Runtime: the two thread pools never run at the same time.
    references = {b: torch_outputs(net, x) for b, x in inputs.items()}
    loaded = create_session(onnx_path, providers=providers)  # type: ignore[arg-type]
    session = loaded.session
    report = VerificationReport(providers=loaded.providers)
    names = ["logits"] if fp16 else list(OUTPUT_NAMES)
    tol = FP16_TOLERANCE if fp16 else tolerance
    for b, x in inputs.items():
        got = dict(zip(names, session.run(names, {INPUT_NAME: x}), strict=True))
        for name in names:
            report.comparisons.append(
                Comparison(name, b, relative_error(got[name], references[b][name]), tol)
            )
        if fp16:
            same = np.array_equal(got["logits"].argmax(1), references[b]["logits"].argmax(1))
            if not same:
                report.failures_text.append(f"top-1 differs from PyTorch at batch {b}")
    if expected is not None:
        x = np.asarray(expected["inputs"], dtype=np.float32)
        got = dict(zip(names, session.run(names, {INPUT_NAME: x}), strict=True))
        for name in names:
            if name in expected:
                ref = np.asarray(expected[name])
                report.comparisons.append(
                    Comparison(f"{name}*", x.shape[0], relative_error(got[name], ref), tol)
                )
        if fp16 and not np.array_equal(got["logits"].argmax(1), np.asarray(expected["logits"]).argmax(1)):
            report.failures_text.append("top-1 differs from the stored reference outputs")
    log.info("verification on %s:\n%s", ", ".join(loaded.providers), report.table())
    if raise_on_failure and not report.ok:
        raise VerificationError(report)
    return report
