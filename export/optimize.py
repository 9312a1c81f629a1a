"""Inference-time rewrites applied to a copy of the model before tracing.

Each rewrite is exact (the same function; only float rounding differs) and exists because ONNX
Runtime runs the rewritten graph faster. ONNX Runtime folds a BatchNorm into the conv *before* it,
but a BatchNorm that follows a GELU survives as its own pass over the activations (on CPU it becomes
an NCHWc depthwise 1x1 Conv), and so does LayerScale (a grouped 1x1 Conv). Folding them here, in
float64, into the 1x1 convs that follow them removes those passes without changing the function:

- MS-FFN: `norm` (BN), `fc2`'s BN and `layer_scale_2` fold into the `fc2` conv; `norm2`'s affine
  folds into `fc1`; the depthwise residual folds into the depthwise kernels, and the multi-scale
  depthwise conv becomes one branch per scale with no Split/Concat (see `FoldedMSFFN`, also for
  why `fc1`'s BN stays).
- STE (`DMixer.proj`): the BNs after each GELU fold into the next 1x1 conv, the last BN into the
  conv before it.

The export's verification compares the ONNX file against the untouched model, and
`tests/export/test_optimize.py` compares the prepared model against the original, so a rewrite that
changed the numbers would fail both.
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from model.transxnet import MSFFN, Block, DMixer, MultiScaleDWConv, TransXNet


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


def _pointwise_conv(weight: torch.Tensor, bias: torch.Tensor, like: nn.Conv2d) -> nn.Conv2d:
    """A fresh 1x1 conv (with bias) holding folded float64 parameters cast back to `like`'s dtype."""
    out_chans, in_chans = weight.shape[:2]
    conv = nn.Conv2d(in_chans, out_chans, kernel_size=1, bias=True)
    dtype, device = like.weight.dtype, like.weight.device
    conv.weight = nn.Parameter(weight.to(dtype=dtype, device=device), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype=dtype, device=device), requires_grad=False)
    return conv


def _check_pointwise(conv: nn.Conv2d) -> None:
    if conv.kernel_size != (1, 1) or conv.groups != 1 or conv.stride != (1, 1) or conv.padding != (0, 0):
        raise ValueError(f"expected a plain 1x1 conv, got {conv}")


def _fold_input_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """conv(scale * x + shift) as one conv. Exact only for an unpadded 1x1 conv: a padded conv
    would see the shift inside the image but zeros in the padding."""
    _check_pointwise(conv)
    weight, bias = _conv_params(conv)
    return _pointwise_conv(weight * scale.view(1, -1, 1, 1), bias + weight[:, :, 0, 0] @ shift, conv)


def _fold_output_affine(conv: nn.Conv2d, scale: torch.Tensor, shift: torch.Tensor) -> nn.Conv2d:
    """scale * conv(x) + shift as one conv (any 1x1 conv)."""
    _check_pointwise(conv)
    weight, bias = _conv_params(conv)
    return _pointwise_conv(weight * scale.view(-1, 1, 1, 1), bias * scale + shift, conv)


# --------------------------------------------------------------------------------------------------
# MS-FFN
# --------------------------------------------------------------------------------------------------
def _depthwise_conv(weight: torch.Tensor, bias: torch.Tensor, dtype: torch.dtype) -> nn.Conv2d:
    """A depthwise conv holding float64 `weight` (C, 1, K, K) and `bias` (C,) cast to `dtype`."""
    chans, _, size, _ = weight.shape
    conv = nn.Conv2d(chans, chans, size, padding=size // 2, groups=chans)
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter(bias.to(dtype), requires_grad=False)
    return conv


class _ScaleBranch(nn.Module):
    """One scale of the folded MS-FFN: fc1 -> GELU -> affine -> depthwise KxK -> GELU -> fc2,
    over that scale's chunk of hidden channels only."""

    def __init__(self, fc1: nn.Conv2d, affine: nn.Conv2d, dwconv: nn.Conv2d | None, fc2: nn.Conv2d) -> None:
        super().__init__()
        self.fc1, self.act1, self.affine = fc1, nn.GELU(), affine
        self.dwconv = dwconv if dwconv is not None else nn.Identity()
        self.act2, self.fc2 = nn.GELU(), fc2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act2(self.dwconv(self.affine(self.act1(self.fc1(x))))))


class FoldedMSFFN(nn.Module):
    """MS-FFN as a sum of per-scale branches, with its affine layers folded.

    The original computes, with z = BN1(GELU(fc1(x))),
        fc2_bn(fc2(norm(GELU(dwconv(z) + z))))
    where `dwconv` applies kernels 1/3/5/7 to four chunks of the hidden channels (Split, four
    convs, Concat), and the block then applies LayerScale. Everything between fc1 and fc2 is per
    channel, so each chunk is an independent branch, and fc2 over the concatenation is the sum of
    fc2's column blocks over the chunks. Here each branch has its own slice of fc1 and of fc2 and
    only its own kernel: no Split or Concat copies, and each chunk pays for its own kernel's taps
    (a single conv with every kernel zero-padded to 7x7 does 49 taps per channel against 21 on
    average). ONNX Runtime folds the sum into the fc2 convs (Conv + Add fusion). Folded:
    - `fc1` carries the preceding GroupNorm's affine (exact: it is an unpadded 1x1 conv);
    - BN1 stays a per-channel affine, as a depthwise 1x1 conv (`affine`): it cannot fold into the
      zero-padded depthwise convs after it (a folded shift would need a constant per-position map,
      and adding one forces ONNX Runtime out of its blocked NCHWc layout and back);
    - the residual `+ z` is a 1 added to each depthwise kernel's centre tap; the kernel-1 chunk's
      depthwise conv is then itself a per-channel affine and folds into `affine` (no `dwconv`);
    - `norm`, fc2's BN and LayerScale fold into the `fc2` slices (exact: unpadded 1x1 convs), whose
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
        dtype = fc1.weight.dtype
        if input_affine is not None:
            fc1 = _fold_input_affine(fc1, *input_affine)
        fc1_weight, fc1_bias = _conv_params(fc1)
        bn_scale, bn_shift = _bn_affine(mlp.fc1[2])
        fc2 = _fold_input_affine(mlp.fc2[0], *_bn_affine(mlp.norm))
        fc2 = _fold_output_affine(fc2, *_bn_affine(mlp.fc2[1]))
        if output_affine is not None:
            fc2 = _fold_output_affine(fc2, *output_affine)
        fc2_weight, fc2_bias = _conv_params(fc2)
        branches, start = [], 0
        for conv, chans in zip(mlp.dwconv.proj, mlp.dwconv.channels, strict=True):
            rows = slice(start, start + chans)
            start += chans
            kernel, kernel_bias = _conv_params(conv)
            kernel = kernel.clone()
            size = kernel.shape[-1]
            kernel[:, 0, size // 2, size // 2] += 1.0  # the residual `+ z`
            scale, shift = bn_scale[rows], bn_shift[rows]
            dwconv = None
            if size == 1:  # k * (scale * g + shift) + b: one affine
                tap = kernel.flatten()
                scale, shift = tap * scale, tap * shift + kernel_bias
            else:
                dwconv = _depthwise_conv(kernel, kernel_bias, dtype)
            branches.append(
                _ScaleBranch(
                    _pointwise_conv(fc1_weight[rows], fc1_bias[rows], fc1),
                    _depthwise_conv(scale.view(-1, 1, 1, 1), shift, dtype),
                    dwconv,
                    _pointwise_conv(
                        fc2_weight[:, rows], fc2_bias if not branches else torch.zeros_like(fc2_bias), fc2
                    ),
                )
            )
        self.branches = nn.ModuleList(branches)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.branches[0](x)
        for branch in self.branches[1:]:
            out = out + branch(x)
        return out


def _fold_msffn(block: Block) -> None:
    """Swap `block.mlp` for `FoldedMSFFN`; `norm2` loses its affine, `layer_scale_2` becomes Identity."""
    norm2 = block.norm2
    input_affine = None
    if norm2.affine:
        input_affine = (norm2.weight.detach().double(), norm2.bias.detach().double())
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
            if isinstance(block.mlp, MSFFN) and isinstance(block.mlp.dwconv, MultiScaleDWConv):
                _fold_msffn(block)
    return prepared
