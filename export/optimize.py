"""Inference-time rewrites applied to a copy of the model before tracing.

Each rewrite is exact (the same function; only float rounding differs) and exists because ONNX
Runtime runs the rewritten graph faster. ONNX Runtime folds a BatchNorm into the conv *before* it,
but a BatchNorm that follows a GELU survives as its own pass over the activations (on CPU it becomes
an NCHWc depthwise 1x1 Conv), and so does LayerScale (a grouped 1x1 Conv). Folding them here, in
float64, into the 1x1 convs that follow them removes those passes without changing the function:

- MS-FFN: `norm` (BN), `fc2`'s BN and `layer_scale_2` fold into the `fc2` conv; `norm2`'s affine
  folds into `fc1`; `fc1`'s BN and the depthwise residual fold into the multi-scale depthwise convs
  plus a constant per-position offset (see `FoldedMSFFN`).
- STE (`DMixer.proj`): the BNs after each GELU fold into the next 1x1 conv, the last BN into the
  conv before it.

The export's verification compares the ONNX file against the untouched model, and
`tests/export/test_optimize.py` compares the prepared model against the original, so a rewrite that
changed the numbers would fail both.
"""

from __future__ import annotations

import copy

import torch
import torch.nn.functional as F
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
class FoldedMSFFN(nn.Module):
    """MS-FFN with its affine layers folded, for one static spatial size.

    The original computes, with z = BN1(GELU(fc1(x))),
        fc2_bn(fc2(norm(GELU(dwconv(z) + z))))
    and the block then applies LayerScale. Here:
    - `fc1` carries the preceding GroupNorm's affine (exact: it is an unpadded 1x1 conv);
    - BN1 (z = a*y + b) and the residual `+ z` fold into the depthwise convs: the residual is a
      1 added to each kernel's centre tap, `a` scales the kernels, and the shift `b` becomes a
      constant map `offset` = conv biases + b * (sum of the kernel taps that land inside the image
      at each position). The map is not uniform because the convs zero-pad *after* BN1, which is
      why BN1 cannot fold into the kernels' bias; it depends only on the spatial size, so it is
      computed once here and the module refuses any other size.
    - `norm`, fc2's BN and LayerScale fold into `fc2` (exact: an unpadded 1x1 conv).
    - The four depthwise convs (kernels 1/3/5/7 over channel chunks) become one depthwise conv with
      the largest kernel, the smaller kernels zero-padded at its centre: the same taps, and no
      Split/Concat around them (ORT: ~2.7 ms less per T image at batch 1).
    """

    def __init__(
        self,
        mlp: MSFFN,
        input_affine: tuple[torch.Tensor, torch.Tensor] | None,
        output_affine: tuple[torch.Tensor, torch.Tensor] | None,
        spatial_size: tuple[int, int],
    ) -> None:
        super().__init__()
        fc1 = mlp.fc1[0]
        self.fc1 = fc1 if input_affine is None else _fold_input_affine(fc1, *input_affine)
        self.act1 = nn.GELU()
        scale, shift = _bn_affine(mlp.fc1[2])
        channels = list(mlp.dwconv.channels)
        size = max(conv.kernel_size[0] for conv in mlp.dwconv.proj)
        kernels = []
        offsets = []
        start = 0
        height, width = spatial_size
        for conv, chans in zip(mlp.dwconv.proj, channels, strict=True):
            weight, bias = _conv_params(conv)
            k = weight.shape[-1]
            if (size - k) % 2:
                raise ValueError(f"cannot centre a {k}x{k} kernel in {size}x{size}: scales must be odd")
            weight = weight.clone()
            weight[:, 0, k // 2, k // 2] += 1.0  # the residual `+ z`
            a, b = scale[start : start + chans], shift[start : start + chans]
            start += chans
            # Constant part: conv of (b inside the image, 0 in the padding) plus the conv bias.
            inside = b.view(1, -1, 1, 1).expand(1, chans, height, width)
            offsets.append(F.conv2d(inside, weight, bias, padding=k // 2, groups=chans))
            border = (size - k) // 2
            kernels.append(F.pad(weight * a.view(-1, 1, 1, 1), (border, border, border, border)))
        dim = sum(channels)
        self.dwconv = nn.Conv2d(dim, dim, size, padding=size // 2, groups=dim, bias=False)
        self.dwconv.weight = nn.Parameter(torch.cat(kernels).to(fc1.weight.dtype), requires_grad=False)
        self.register_buffer("offset", torch.cat(offsets, dim=1).to(fc1.weight.dtype), persistent=False)
        self.act2 = nn.GELU()
        fc2 = _fold_input_affine(mlp.fc2[0], *_bn_affine(mlp.norm))
        fc2 = _fold_output_affine(fc2, *_bn_affine(mlp.fc2[1]))
        self.fc2 = fc2 if output_affine is None else _fold_output_affine(fc2, *output_affine)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if tuple(x.shape[-2:]) != tuple(self.offset.shape[-2:]):
            raise ValueError(
                f"FoldedMSFFN was prepared for {tuple(self.offset.shape[-2:])} inputs, "
                f"got {tuple(x.shape[-2:])}"
            )
        y = self.dwconv(self.act1(self.fc1(x)))
        return self.fc2(self.act2(y + self.offset))


def _fold_msffn(block: Block, spatial_size: tuple[int, int]) -> None:
    """Swap `block.mlp` for `FoldedMSFFN`; `norm2` loses its affine, `layer_scale_2` becomes Identity."""
    norm2 = block.norm2
    input_affine = None
    if norm2.affine:
        input_affine = (norm2.weight.detach().double(), norm2.bias.detach().double())
        block.norm2 = nn.GroupNorm(norm2.num_groups, norm2.num_channels, eps=norm2.eps, affine=False)
    ls = block.layer_scale_2
    output_affine = (ls.weight.detach().double().flatten(), ls.bias.detach().double())
    block.mlp = FoldedMSFFN(block.mlp, input_affine, output_affine, spatial_size)
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
def _block_input_sizes(model: TransXNet) -> dict[Block, tuple[int, int]]:
    """Spatial size each block sees at the model's `image_size` (one dummy forward)."""
    sizes: dict[Block, tuple[int, int]] = {}

    def record(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        sizes.setdefault(module, (int(args[0].shape[-2]), int(args[0].shape[-1])))  # type: ignore[arg-type]

    hooks = [block.register_forward_pre_hook(record) for block in model.modules() if isinstance(block, Block)]
    try:
        with torch.no_grad():
            model(torch.zeros(1, 3, model.image_size, model.image_size))
    finally:
        for hook in hooks:
            hook.remove()
    return sizes


def prepare_for_export(model: TransXNet) -> nn.Module:
    """Return an eval-mode copy of `model` ready to trace with a dynamic batch at `model.image_size`.

    IDConv switches to its batch-independent formulation (ONNX `Conv.group` is static), and the
    affine layers that ONNX Runtime cannot fuse are folded (module docstring). The copy computes the
    same function as `model` for `image_size` x `image_size` inputs; other sizes raise.
    """
    prepared = copy.deepcopy(model).eval()
    prepared.set_dynamic_conv_impl("export")
    sizes = _block_input_sizes(prepared)
    with torch.no_grad():
        for block, size in sizes.items():
            _fold_ste(block.token_mixer)
            if isinstance(block.mlp, MSFFN) and isinstance(block.mlp.dwconv, MultiScaleDWConv):
                _fold_msffn(block, size)
    return prepared
