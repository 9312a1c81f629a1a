"""IDConv's functional core: the kernel-group mix and the per-sample depthwise convolution, each in
two exact formulations (`"grouped"`, the official one, and `"export"`, which traces to ONNX with a
dynamic batch). Plain functions, so the model's modules and their export forms share them.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F

DynamicConvImpl = Literal["grouped", "export"]
DYNAMIC_CONV_IMPLS: tuple[str, ...] = ("grouped", "export")


def dynamic_depthwise_conv_grouped(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The official formulation: fold the batch into channels, one group per (sample, channel).

    `x` (B, C, H, W), `weight` (B, C, K, K), `bias` (B, C); zero padding K//2.
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    out = F.conv2d(
        x.reshape(1, b * c, h, w),
        weight.reshape(b * c, 1, k, k),
        bias=bias.reshape(b * c),
        padding=k // 2,
        groups=b * c,
    )
    return out.reshape(b, c, h, w)


def dynamic_depthwise_conv_export(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """The same convolution with no batch-dependent attribute, so it traces with a dynamic batch.

    Each output row is a sum over the K kernel rows of (input row band) @ (banded Toeplitz matrix
    built from that kernel row); stacking the K bands turns the whole conv into one batched MatMul
    per (sample, channel): (H, K*W) @ (K*W, W). Dense GEMMs with computed operands are what ONNX
    Runtime runs fast, unlike a grouped Conv with computed weights (im2col per group). Only the rows
    are zero-padded: the column padding is folded into the Toeplitz matrices (their band is cut at
    the edges), which saves (W+2p)/W of the GEMM and of the bands, 30-46% at stages 3-4.

    The Toeplitz matrices are expanded from the kernel by a MatMul with a constant 0/1 matrix rather
    than by indexing: ONNX Runtime runs that small GEMM several times faster than the GatherND and
    the two layout Transposes that `weight[..., index]` exports to, and it is exact (every entry is
    one kernel tap times 1 plus zeros).
    """
    b, c, h, w = x.shape
    k = weight.shape[-1]
    p = k // 2
    xp = F.pad(x, (0, 0, p, p))
    # (B, C, H, K*W): the K row-shifted bands side by side, gathered in one pass (row h of band i is
    # padded row h + i); K Slices and a Concat would copy them twice.
    rows = (torch.arange(h, device=x.device).view(h, 1) + torch.arange(k, device=x.device)).flatten()
    bands = torch.index_select(xp, 2, rows).reshape(b, c, h, k * w)
    # expand[j, u, v] = 1 where u - v + p == j, so (weight @ expand)[..., i, u, v] = weight[..., i, u - v + p]
    # inside the band and 0 outside it (and past the image edges): the Toeplitz matrix of kernel
    # row i. Shapes are static, so the exporter stores `expand` as a constant.
    u = torch.arange(w, device=x.device).view(1, w, 1)
    v = torch.arange(w, device=x.device).view(1, 1, w)
    j = torch.arange(k, device=x.device).view(k, 1, 1)
    expand = (u - v + p == j).to(x.dtype).reshape(k, w * w)
    toeplitz = torch.matmul(weight, expand)  # (B, C, K, W*W)
    out = torch.matmul(bands, toeplitz.reshape(b, c, k * w, w))
    return out + bias.reshape(b, c, 1, 1)


def mix_groups_softmax(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The official kernel mix: sum over g of softmax(logits, dim=1)[:, g] * values[g].

    `logits` (B, G, ...), `values` (G, ...) with the same trailing shape.
    """
    return (torch.softmax(logits, dim=1) * values.unsqueeze(0)).sum(dim=1)


def mix_groups_export(logits: torch.Tensor, values: torch.Tensor) -> torch.Tensor:
    """The same mix without a Softmax node, for export: the softmax written out, max-subtracted.

    ONNX Runtime runs Softmax on a non-last axis through transposes (0.29 ms per call at T's
    (1, 2, 224, 7, 7), 18 calls per image). With two groups the export goes further and folds the
    mix into IDConv's projection (`model.reparam.TwoGroupIDConv`).
    """
    e = torch.exp(logits - logits.amax(dim=1, keepdim=True))
    return (e * values.unsqueeze(0)).sum(dim=1) / e.sum(dim=1)


DYNAMIC_CONV = {
    "grouped": dynamic_depthwise_conv_grouped,
    "export": dynamic_depthwise_conv_export,
}
MIX_GROUPS = {
    "grouped": mix_groups_softmax,
    "export": mix_groups_export,
}
