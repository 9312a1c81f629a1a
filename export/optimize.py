"""Inference-time rewrites applied to a copy of the model before tracing.

Each rewrite is exact (same function, float rounding aside) and exists because ONNX Runtime runs
the rewritten graph faster; the export's verification compares the ONNX file against the
untouched model, so a rewrite that changed the numbers would fail it.
"""

from __future__ import annotations

import copy

from torch import nn

from model.transxnet import TransXNet


def prepare_for_export(model: TransXNet) -> nn.Module:
    """Return an eval-mode copy of `model` ready to trace with a dynamic batch.

    IDConv switches to its batch-independent formulation (ONNX `Conv.group` is static).
    """
    prepared = copy.deepcopy(model).eval()
    prepared.set_dynamic_conv_impl("export")
    return prepared
