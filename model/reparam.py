"""Exact inference-time forms of TransXNet's modules, built by their `reparameterize()` methods.

Each form computes the same function as the module it replaces (only float rounding differs) and
exists because ONNX Runtime runs it faster. ONNX Runtime folds a BatchNorm into the conv *before*
it, but a BatchNorm that follows a GELU survives as its own pass over the activations (on CPU it
becomes an NCHWc depthwise 1x1 Conv), and so does LayerScale (a grouped 1x1 Conv). Folding them, in
float64, into the 1x1 convs next to them removes those passes without changing the function:

- STE (`DMixer.proj`): each BatchNorm folds into the conv before it, or else into the unpadded 1x1
  conv after it (`fold_batchnorms`, which finds them by type and refuses one it cannot fold).
- MS-FFN (`FoldedMSFFN`): `norm`, fc2's BN and the block's `layer_scale_2` fold into fc2; the
  block's `norm2` affine folds into fc1; the depthwise residual folds into the depthwise kernels,
  and the multi-scale depthwise conv becomes a sum of branches with no Split/Concat.

Two more remove small ops rather than passes: an IDConv with two kernel groups folds its softmax
into its projection (`TwoGroupIDConv`), and `norm2`, affine-free once folded, is traced as a plain
InstanceNormalization (`PlainGroupNorm`).

This module knows no TransXNet module's layout: the modules hand it their parts (checked with
`expect_layers`), so a change to a module's layers fails its `reparameterize()` loudly instead of
folding the wrong layer. `tests/model/test_reparam.py` checks each form against the module it
replaces, and the export's verification checks the ONNX file against the untouched model.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from model.ops import dynamic_depthwise_conv_export

#: A per-channel affine y = scale * x + shift, float64.
Affine = tuple[torch.Tensor, torch.Tensor]


class ReparameterizeError(ValueError):
    """A module's layers are not what its exact rewrite assumes; nothing was folded."""


def expect_layers(seq: nn.Sequential, types: Sequence[type[nn.Module]], where: str) -> list[nn.Module]:
    """`seq`'s layers, after checking they are exactly `types` in order (else `ReparameterizeError`)."""
    layers = list(seq)
    if len(layers) != len(types) or not all(isinstance(m, t) for m, t in zip(layers, types, strict=False)):
        want = ", ".join(t.__name__ for t in types)
        got = ", ".join(type(m).__name__ for m in layers)
        raise ReparameterizeError(
            f"{where}: the exact rewrite expects [{want}] but the module has [{got}]; update its "
            "reparameterize() together with the layers"
        )
    return layers


# --------------------------------------------------------------------------------------------------
# Affine algebra (float64, so folding adds no rounding of its own beyond the final cast)
# --------------------------------------------------------------------------------------------------
def bn_affine(bn: nn.BatchNorm2d) -> Affine:
    """Eval-mode BatchNorm as y = scale * x + shift, per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ReparameterizeError("cannot fold a BatchNorm without running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv's weight and bias (zeros when it has none) in float64."""
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def frozen_params(conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """`conv` holding float64 `weight` and `bias` cast back to `like`'s dtype and device, frozen."""
    conv.weight = nn.Parameter(weight.to(dtype=like.dtype, device=like.device), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype=like.dtype, device=like.device), requires_grad=False)
    return conv


def pointwise_conv(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """A fresh 1x1 conv with bias, from folded float64 `weight` (O, I, 1, 1) and `bias` (O,)."""
    out_chans, in_chans = weight.shape[:2]
    return frozen_params(nn.Conv2d(in_chans, out_chans, kernel_size=1), weight, bias, like)


def depthwise_conv(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """A fresh 'same'-padded depthwise conv from float64 `weight` (C, 1, K, K) and `bias` (C,)."""
    chans, _, size, _ = weight.shape
    return frozen_params(nn.Conv2d(chans, chans, size, padding=size // 2, groups=chans), weight, bias, like)


def is_pointwise(module: nn.Module | None) -> bool:
    """An unpadded, unstrided, ungrouped 1x1 conv: the only kind an input-side affine folds into."""
    return (
        isinstance(module, nn.Conv2d)
        and module.kernel_size == (1, 1)
        and module.groups == 1
        and module.stride == (1, 1)
        and module.padding == (0, 0)
    )


def fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """conv(scale * x + shift) as one conv. Exact only for an unpadded 1x1 conv: a padded conv
    would see the shift inside the image but zeros in the padding."""
    if not is_pointwise(conv):
        raise ReparameterizeError(f"an input-side affine folds only into a plain 1x1 conv, not {conv}")
    weight, bias = conv_params(conv)
    return pointwise_conv(weight * scale.view(1, -1, 1, 1), bias + weight[:, :, 0, 0] @ shift, conv.weight)


def fold_output_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """scale * conv(x) + shift as one conv: exact for any conv (each output channel is scaled)."""
    weight, bias = conv_params(conv)
    if is_pointwise(conv):
        return pointwise_conv(weight * scale.view(-1, 1, 1, 1), bias * scale + shift, conv.weight)
    folded = copy.deepcopy(conv)
    return frozen_params(folded, weight * scale.view(-1, 1, 1, 1), bias * scale + shift, conv.weight)


def fold_batchnorms(seq: nn.Sequential, where: str) -> int:
    """Fold every BatchNorm2d of `seq` into a neighbouring conv, leaving Identity in its slot.

    A BatchNorm right after a conv folds into that conv's output; one after anything else (a GELU)
    folds into the input of the unpadded 1x1 conv right after it. The BatchNorms are found by type,
    in order, so layers may move; one with neither neighbour raises `ReparameterizeError` before
    anything is changed. Returns how many were folded.
    """
    layers = list(seq)
    plan = []
    for i, layer in enumerate(layers):
        if not isinstance(layer, nn.BatchNorm2d):
            continue
        before = layers[i - 1] if i > 0 else None
        after = layers[i + 1] if i + 1 < len(layers) else None
        if isinstance(before, nn.Conv2d):
            plan.append((i, i - 1, fold_output_affine))
        elif is_pointwise(after):
            plan.append((i, i + 1, fold_input_affine))
        else:
            raise ReparameterizeError(
                f"{where}[{i}]: a BatchNorm folds into the conv before it or the plain 1x1 conv after it; "
                f"found {type(before).__name__} before and {type(after).__name__} after"
            )
    for bn_index, conv_index, fold in plan:
        seq[conv_index] = fold(seq[conv_index], *bn_affine(layers[bn_index]))
        seq[bn_index] = nn.Identity()
    return len(plan)


# --------------------------------------------------------------------------------------------------
# GroupNorm without affine
# --------------------------------------------------------------------------------------------------
class PlainGroupNorm(nn.Module):
    """GroupNorm(1, C) with no affine, traced as InstanceNormalization over one group.

    The exporter writes an affine-free GroupNorm with a Mul by ones and an Add of zeros (two passes
    over the activations) and a Shape; this form has neither.
    """

    def __init__(self, eps: float) -> None:
        super().__init__()
        self.eps = eps

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, h, w = x.shape
        return F.instance_norm(x.reshape(b, 1, c * h * w), eps=self.eps).reshape(b, c, h, w)


def split_group_norm(norm: nn.GroupNorm) -> tuple[nn.Module, Affine | None]:
    """`norm` without its affine (`PlainGroupNorm` for one group) and that affine (None if it had none):
    the caller folds the affine into the 1x1 conv that follows."""
    if not norm.affine:
        return norm, None
    affine = (norm.weight.detach().double(), norm.bias.detach().double())
    if norm.num_groups == 1:
        return PlainGroupNorm(norm.eps), affine
    return nn.GroupNorm(norm.num_groups, norm.num_channels, eps=norm.eps, affine=False), affine


# --------------------------------------------------------------------------------------------------
# MS-FFN
# --------------------------------------------------------------------------------------------------
#: MS-FFN's depthwise scales, grouped into branches (see `FoldedMSFFN`).
MSFFN_BRANCHES: tuple[tuple[int, ...], ...] = ((1, 3), (5, 7))


class _Branch(nn.Module):
    """A share of the folded MS-FFN's hidden channels: fc1 -> GELU -> affine -> depthwise KxK ->
    GELU -> fc2."""

    def __init__(self, fc1: nn.Conv2d, affine: nn.Conv2d, dwconv: nn.Conv2d, fc2: nn.Conv2d) -> None:
        super().__init__()
        self.fc1, self.act1, self.affine = fc1, nn.GELU(), affine
        self.dwconv, self.act2, self.fc2 = dwconv, nn.GELU(), fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dwconv(self.affine(self.act1(self.fc1(x))))))


def _residual_kernels(dwconvs: Sequence[nn.Conv2d]) -> dict[int, tuple[torch.Tensor, ...]]:
    """Per kernel size: (hidden channel rows, float64 kernel with the residual `+ z` as a 1 added to
    its centre tap, float64 bias). The convs cover consecutive channel chunks, in order."""
    chunks: dict[int, tuple[torch.Tensor, ...]] = {}
    start = 0
    for conv in dwconvs:
        chans = conv.in_channels
        if conv.groups != chans or conv.out_channels != chans or conv.stride != (1, 1):
            raise ReparameterizeError(f"MS-FFN's scales must be depthwise, stride-1 convs, got {conv}")
        kernel, kernel_bias = conv_params(conv)
        kernel = kernel.clone()
        size = kernel.shape[-1]
        kernel[:, 0, size // 2, size // 2] += 1.0  # the residual `+ z`
        chunks[size] = (torch.arange(start, start + chans), kernel, kernel_bias)
        start += chans
    if sorted(chunks) != sorted(s for group in MSFFN_BRANCHES for s in group):
        raise ReparameterizeError(
            f"MS-FFN scales {sorted(chunks)} do not match the branches {MSFFN_BRANCHES}"
        )
    return chunks


class FoldedMSFFN(nn.Module):
    """MS-FFN as a sum of branches over its hidden channels, with its affine layers folded.

    The original computes, with z = BN1(GELU(fc1(x))),
        fc2_bn(fc2(norm(GELU(dwconv(z) + z))))
    where `dwconv` applies kernels 1/3/5/7 to four chunks of the hidden channels (Split, four
    convs, Concat), and the block then applies LayerScale. Everything between fc1 and fc2 is per
    channel, so any grouping of the chunks gives independent branches, each with its own rows of
    fc1 and columns of fc2, and fc2 over the concatenation is the sum of the branches (ONNX Runtime
    folds the sum into the fc2 convs): no Split or Concat copies. A branch's depthwise conv has its
    largest kernel, the smaller ones zero-padded at the centre (the same taps).

    The grouping (`MSFFN_BRANCHES`) trades depthwise taps for GEMM size, measured on T: one branch
    with every kernel padded to 7x7 does 49 taps per channel where the chunks need 21 on average;
    four branches were fastest at batch 8 but their 1x1 convs got small enough to cost more than
    that at batch 1; two (1/3 and 5/7, 29 taps on average) were within 2% of the best at both.

    Folded:
    - `fc1` carries the preceding GroupNorm's affine (`input_affine`; exact: an unpadded 1x1 conv);
    - BN1 stays a per-channel affine, as a depthwise 1x1 conv (`affine`): it cannot fold into the
      zero-padded depthwise convs after it (a folded shift would need a constant per-position map,
      and adding one forces ONNX Runtime out of its blocked NCHWc layout and back);
    - the residual `+ z` is a 1 added to each depthwise kernel's centre tap;
    - `norm`, fc2's BN and the block's LayerScale (`output_affine`) fold into the `fc2` columns
      (exact: unpadded 1x1 convs), whose bias goes to the first branch only.
    """

    def __init__(
        self,
        *,
        fc1: nn.Conv2d,
        hidden_bn: nn.BatchNorm2d,
        dwconvs: Sequence[nn.Conv2d],
        norm: nn.BatchNorm2d,
        fc2: nn.Conv2d,
        fc2_bn: nn.BatchNorm2d,
        input_affine: Affine | None = None,
        output_affine: Affine | None = None,
    ) -> None:
        super().__init__()
        like = fc1.weight  # dtype and device of every rebuilt conv
        if input_affine is not None:
            fc1 = fold_input_affine(fc1, *input_affine)
        fc1_weight, fc1_bias = conv_params(fc1)
        bn_scale, bn_shift = bn_affine(hidden_bn)
        fc2 = fold_output_affine(fold_input_affine(fc2, *bn_affine(norm)), *bn_affine(fc2_bn))
        if output_affine is not None:
            fc2 = fold_output_affine(fc2, *output_affine)
        fc2_weight, fc2_bias = conv_params(fc2)
        chunks = _residual_kernels(dwconvs)

        branches = []
        for group in MSFFN_BRANCHES:
            size = max(group)
            rows = torch.cat([chunks[s][0] for s in group])
            kernel = torch.cat([F.pad(chunks[s][1], [(size - s) // 2] * 4) for s in group])
            kernel_bias = torch.cat([chunks[s][2] for s in group])
            bias = fc2_bias if not branches else torch.zeros_like(fc2_bias)
            branches.append(
                _Branch(
                    pointwise_conv(fc1_weight[rows], fc1_bias[rows], like),
                    depthwise_conv(bn_scale[rows].view(-1, 1, 1, 1), bn_shift[rows], like),
                    depthwise_conv(kernel, kernel_bias, like),
                    pointwise_conv(fc2_weight[:, rows], bias, like),
                )
            )
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


# --------------------------------------------------------------------------------------------------
# IDConv with two kernel groups
# --------------------------------------------------------------------------------------------------
class TwoGroupIDConv(nn.Module):
    """IDConv whose two-way softmax is folded into its last projection.

    With two groups, softmax(l)[0] = sigmoid(l0 - l1), and l0 - l1 is itself a 1x1 conv (the
    difference of the projection's two halves). So the projection emits the difference directly,
    and the mix is low + sigmoid(diff) * span with constant low = values[1], span = values[0] -
    values[1]: no Reshape/Split/Squeeze/Sub of the logits, ten small ops per block fewer.

    Built from IDConv's parts: its pooling, the projection's first stage (kept as is), its last 1x1
    conv (emitting both groups' logits, group-major), and the two groups' kernels and biases.
    """

    def __init__(
        self,
        *,
        pool: nn.Module,
        reduce: nn.Module,
        expand: nn.Conv2d,
        weight: torch.Tensor,
        bias: torch.Tensor,
    ) -> None:
        super().__init__()
        if weight.shape[0] != 2 or bias.shape[0] != 2:
            raise ReparameterizeError(f"TwoGroupIDConv needs 2 kernel groups, got {weight.shape[0]}")
        if not is_pointwise(expand):
            raise ReparameterizeError(f"IDConv's last projection must be a plain 1x1 conv, got {expand}")
        self.pool = pool
        expand_weight, expand_bias = conv_params(expand)
        half = expand_weight.shape[0] // 2
        difference = pointwise_conv(
            expand_weight[:half] - expand_weight[half:],
            expand_bias[:half] - expand_bias[half:],
            expand.weight,
        )
        self.proj = nn.Sequential(reduce, difference)
        values, biases = weight.detach().double(), bias.detach().double()
        self.register_buffer("weight_low", values[1].to(weight))
        self.register_buffer("weight_span", (values[0] - values[1]).to(weight))
        self.register_buffer("bias_low", biases[1].to(weight))
        self.register_buffer("bias_span", (biases[0] - biases[1]).to(weight))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        weight = self.weight_low + torch.sigmoid(self.proj(self.pool(x))) * self.weight_span
        share = torch.sigmoid(self.proj(torch.mean(x, dim=[-2, -1], keepdim=True))).reshape(b, c)
        return dynamic_depthwise_conv_export(x, weight, self.bias_low + share * self.bias_span)
