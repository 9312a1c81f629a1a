"""Inference-time rewrites applied to a copy of the model before tracing.

Each rewrite is exact (the same function; only float rounding differs) and exists because ONNX
Runtime runs the rewritten graph faster. ONNX Runtime folds a BatchNorm into the conv *before* it,
but a BatchNorm that follows a GELU survives as its own pass over the activations (on CPU it becomes
an NCHWc depthwise 1x1 Conv), and so does LayerScale (a grouped 1x1 Conv). Folding them here, in
float64, into the 1x1 convs that follow them removes those passes without changing the function:

- MS-FFN: `norm` (BN), `fc2`'s BN and `layer_scale_2` fold into the `fc2` conv; `norm2`'s affine
  folds into `fc1`; the depthwise residual folds into the depthwise kernels, and the multi-scale
  depthwise conv becomes a sum of branches with no Split/Concat (see `FoldedMSFFN`, also for why
  `fc1`'s BN stays).
- STE (`DMixer.proj`): the BNs after each GELU fold into the next 1x1 conv, the last BN into the
  conv before it.

Two more remove small ops rather than passes: an IDConv with two kernel groups folds its softmax
into its projection (`TwoGroupIDConv`), and `norm2`, affine-free once folded, is traced as a plain
InstanceNormalization (`PlainGroupNorm`).

The export's verification compares the ONNX file against the untouched model, and
`tests/export/test_optimize.py` compares the prepared model against the original, so a rewrite that
changed the numbers would fail both.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
from torch import nn

from model.transxnet import (
    MSFFN,
    Block,
    DMixer,
    IDConv,
    MultiScaleDWConv,
    TransXNet,
    dynamic_depthwise_conv_export,
)


# --------------------------------------------------------------------------------------------------
# Affine algebra (float64, so folding adds no rounding of its own beyond the final cast)
# --------------------------------------------------------------------------------------------------
def _bn_affine(bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval-mode BatchNorm as y = scale * x + shift, per channel."""
    if bn.running_mean is None or bn.running_var is None:
        raise ValueError("cannot fold a BatchNorm without running statistics")
    scale = bn.weight.double() / torch.sqrt(bn.running_var.double() + bn.eps)
    shift = bn.bias.double() - bn.running_mean.double() * scale
    return scale, shift


def _conv_params(conv: nn.Conv2d) -> tuple[torch.Tensor, torch.Tensor]:
    weight = conv.weight.detach().double()
    bias = conv.bias.detach().double() if conv.bias is not None else weight.new_zeros(weight.shape[0])
    return weight, bias


def _frozen_params(
    conv: nn.Conv2d, weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor
) -> nn.Conv2d:
    """`conv` holding float64 `weight` and `bias` cast back to `like`'s dtype and device, frozen."""
    conv.weight = nn.Parameter(weight.to(dtype=like.dtype, device=like.device), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype=like.dtype, device=like.device), requires_grad=False)
    return conv


def _pointwise_conv(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """A fresh 1x1 conv with bias, from folded float64 `weight` (O, I, 1, 1) and `bias` (O,)."""
    out_chans, in_chans = weight.shape[:2]
    return _frozen_params(nn.Conv2d(in_chans, out_chans, kernel_size=1), weight, bias, like)


def _check_pointwise(conv: nn.Conv2d) -> None:
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
        raise ValueError(f"expected a plain 1x1 conv, got {conv}")


def _fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """conv(scale * x + shift) as one conv. Exact only for an unpadded 1x1 conv: a padded conv
    would see the shift inside the image but zeros in the padding."""
    _check_pointwise(conv)
    weight, bias = _conv_params(conv)
    return _pointwise_conv(weight * scale.view(1, -1, 1, 1), bias + weight[:, :, 0, 0] @ shift, conv.weight)


def _fold_output_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """scale * conv(x) + shift as one conv (any 1x1 conv)."""
    _check_pointwise(conv)
    weight, bias = _conv_params(conv)
    return _pointwise_conv(weight * scale.view(-1, 1, 1, 1), bias * scale + shift, conv.weight)


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


# --------------------------------------------------------------------------------------------------
# MS-FFN
# --------------------------------------------------------------------------------------------------
def _depthwise_conv(weight: torch.Tensor, bias: torch.Tensor, like: torch.Tensor) -> nn.Conv2d:
    """A fresh 'same'-padded depthwise conv from float64 `weight` (C, 1, K, K) and `bias` (C,)."""
    chans, _, size, _ = weight.shape
    return _frozen_params(nn.Conv2d(chans, chans, size, padding=size // 2, groups=chans), weight, bias, like)


# MS-FFN's depthwise scales, grouped into branches (see `FoldedMSFFN`).
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
    - `fc1` carries the preceding GroupNorm's affine (exact: it is an unpadded 1x1 conv);
    - BN1 stays a per-channel affine, as a depthwise 1x1 conv (`affine`): it cannot fold into the
      zero-padded depthwise convs after it (a folded shift would need a constant per-position map,
      and adding one forces ONNX Runtime out of its blocked NCHWc layout and back);
    - the residual `+ z` is a 1 added to each depthwise kernel's centre tap;
    - `norm`, fc2's BN and LayerScale fold into the `fc2` columns (exact: unpadded 1x1 convs), whose
      bias goes to the first branch only.
    """

    def __init__(
        self,
        mlp: MSFFN,
        input_affine: tuple[torch.Tensor, torch.Tensor] | None,
        output_affine: tuple[torch.Tensor, torch.Tensor] | None,
    ) -> None:
        super().__init__()
        fc1 = mlp.fc1[0]
        like = fc1.weight  # dtype and device of every rebuilt conv
        if input_affine is not None:
            fc1 = _fold_input_affine(fc1, *input_affine)
        fc1_weight, fc1_bias = _conv_params(fc1)
        bn_scale, bn_shift = _bn_affine(mlp.fc1[2])
        fc2 = _fold_input_affine(mlp.fc2[0], *_bn_affine(mlp.norm))
        fc2 = _fold_output_affine(fc2, *_bn_affine(mlp.fc2[1]))
        if output_affine is not None:
            fc2 = _fold_output_affine(fc2, *output_affine)
        fc2_weight, fc2_bias = _conv_params(fc2)

        chunks: dict[int, tuple[torch.Tensor, torch.Tensor, torch.Tensor]] = {}  # scale: rows, kernel, bias
        start = 0
        for conv, chans in zip(mlp.dwconv.proj, mlp.dwconv.channels, strict=True):
            kernel, kernel_bias = _conv_params(conv)
            kernel = kernel.clone()
            size = kernel.shape[-1]
            kernel[:, 0, size // 2, size // 2] += 1.0  # the residual `+ z`
            chunks[size] = (torch.arange(start, start + chans), kernel, kernel_bias)
            start += chans
        if sorted(chunks) != sorted(s for group in MSFFN_BRANCHES for s in group):
            raise ValueError(f"MS-FFN scales {sorted(chunks)} do not match the branches {MSFFN_BRANCHES}")

        branches = []
        for group in MSFFN_BRANCHES:
            size = max(group)
            rows = torch.cat([chunks[s][0] for s in group])
            kernel = torch.cat([F.pad(chunks[s][1], [(size - s) // 2] * 4) for s in group])
            kernel_bias = torch.cat([chunks[s][2] for s in group])
            bias = fc2_bias if not branches else torch.zeros_like(fc2_bias)
            branches.append(
                _Branch(
                    _pointwise_conv(fc1_weight[rows], fc1_bias[rows], like),
                    _depthwise_conv(bn_scale[rows].view(-1, 1, 1, 1), bn_shift[rows], like),
                    _depthwise_conv(kernel, kernel_bias, like),
                    _pointwise_conv(fc2_weight[:, rows], bias, like),
                )
            )
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _fold_msffn(block: Block) -> None:
    """Swap `block.mlp` for `FoldedMSFFN`; `norm2` loses its affine (`PlainGroupNorm` for one group),
    `layer_scale_2` becomes Identity."""
    norm2 = block.norm2
    input_affine = None
    if norm2.affine:
        input_affine = (norm2.weight.detach().double(), norm2.bias.detach().double())
        if norm2.num_groups == 1:
            block.norm2 = PlainGroupNorm(norm2.eps)
        else:
            block.norm2 = nn.GroupNorm(norm2.num_groups, norm2.num_channels, eps=norm2.eps, affine=False)
    ls = block.layer_scale_2
    output_affine = (ls.weight.detach().double().flatten(), ls.bias.detach().double())
    block.mlp = FoldedMSFFN(block.mlp, input_affine, output_affine)
    block.layer_scale_2 = nn.Identity()


# --------------------------------------------------------------------------------------------------
# STE (DMixer.proj)
# --------------------------------------------------------------------------------------------------
def _fold_ste(mixer: DMixer) -> None:
    """Fold the STE's three BatchNorms into its two 1x1 convs, leaving Identity in their slots.

    proj = [dw3x3, GELU, BN, conv1x1, GELU, BN, conv1x1, BN]: BN(2) and BN(5) feed unpadded 1x1
    convs (input-side fold), BN(7) follows one (output-side fold).
    """
    proj = mixer.proj
    if not (isinstance(proj[2], nn.BatchNorm2d) and isinstance(proj[5], nn.BatchNorm2d)):
        raise ValueError("unexpected STE layout")
    proj[3] = _fold_input_affine(proj[3], *_bn_affine(proj[2]))
    last = _fold_input_affine(proj[6], *_bn_affine(proj[5]))
    proj[6] = _fold_output_affine(last, *_bn_affine(proj[7]))
    proj[2], proj[5], proj[7] = nn.Identity(), nn.Identity(), nn.Identity()


# --------------------------------------------------------------------------------------------------
# IDConv with two kernel groups
# --------------------------------------------------------------------------------------------------
class TwoGroupIDConv(nn.Module):
    """IDConv whose two-way softmax is folded into its last projection.

    With two groups, softmax(l)[0] = sigmoid(l0 - l1), and l0 - l1 is itself a 1x1 conv (the
    difference of the projection's two halves). So the projection emits the difference directly,
    and the mix is low + sigmoid(diff) * span with constant low = values[1], span = values[0] -
    values[1]: no Reshape/Split/Squeeze/Sub of the logits, ten small ops per block fewer.
    """

    def __init__(self, idconv: IDConv) -> None:
        super().__init__()
        if idconv.num_groups != 2:
            raise ValueError(f"TwoGroupIDConv needs 2 kernel groups, got {idconv.num_groups}")
        self.pool = idconv.pool
        last = idconv.proj[1]
        weight, bias = _conv_params(last)
        half = weight.shape[0] // 2
        difference = _pointwise_conv(weight[:half] - weight[half:], bias[:half] - bias[half:], last.weight)
        self.proj = nn.Sequential(idconv.proj[0], difference)
        values, biases = idconv.weight.detach().double(), idconv.bias.detach().double()
        like = idconv.weight  # dtype and device, as for the rebuilt convs
        self.register_buffer("weight_low", values[1].to(like))
        self.register_buffer("weight_span", (values[0] - values[1]).to(like))
        self.register_buffer("bias_low", biases[1].to(like))
        self.register_buffer("bias_span", (biases[0] - biases[1]).to(like))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        weight = self.weight_low + torch.sigmoid(self.proj(self.pool(x))) * self.weight_span
        share = torch.sigmoid(self.proj(torch.mean(x, dim=[-2, -1], keepdim=True))).reshape(b, c)
        return dynamic_depthwise_conv_export(x, weight, self.bias_low + share * self.bias_span)


# --------------------------------------------------------------------------------------------------
# Entry point
# --------------------------------------------------------------------------------------------------
def prepare_for_export(model: TransXNet) -> nn.Module:
    """Return an eval-mode copy of `model` ready to trace with a dynamic batch.

    IDConv switches to its batch-independent formulation (ONNX `Conv.group` is static), and the
    affine layers that ONNX Runtime cannot fuse are folded (module docstring). The copy computes the
    same function as `model`, at any input size.
    """
    prepared = copy.deepcopy(model).eval()
    prepared.set_dynamic_conv_impl("export")
    with torch.no_grad():
        for block in (m for m in prepared.modules() if isinstance(m, Block)):
            _fold_ste(block.token_mixer)
            if block.token_mixer.local_unit.num_groups == 2:
                block.token_mixer.local_unit = TwoGroupIDConv(block.token_mixer.local_unit)
            if isinstance(block.mlp, MSFFN) and isinstance(block.mlp.dwconv, MultiScaleDWConv):
                _fold_msffn(block)
    return prepared
