"""TransXNet (Lou et al., arXiv 2310.19380) in plain PyTorch: no mmcv, no timm.

Numerically identical to the official implementation (LMMMEng/TransXNet `models/transxnet.py`) and
parameter-for-parameter compatible with its release checkpoints: module names reproduce the
official ones, including mmcv's `ConvModule` parts (`conv`, `bn`).

One deliberate addition: every module has an exact inference form for export, which
`TransXNet.reparameterize()` switches to in one call (as timm's RepVGG and FastViT do). IDConv's
per-sample depthwise convolution is the main one: the official formulation folds the batch into the
conv groups (`groups=B*C`), which no ONNX exporter can trace with a dynamic batch (ONNX `Conv.group`
is a static attribute); the export formulation (`model.ops`) computes the same convolution with no
batch-dependent attribute. The other rewrites fold affine layers and merge branches
(`model.reparam`). Eager inference keeps the official forms.

Written bottom-up: leaf modules, block, network, checkpoint filter, factories.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import torch
import torch.nn.functional as F
from torch import nn

from model.checkpoint import CheckpointMismatchError, read_checkpoint
from model.ops import DYNAMIC_CONV, DYNAMIC_CONV_IMPLS, MIX_GROUPS, DynamicConvImpl
from model.reparam import (
    Affine,
    FoldedMSFFN,
    ReparameterizeError,
    TwoGroupIDConv,
    expect_layers,
    fold_batchnorms,
    split_group_norm,
)
from model.weights import default_cfg

log = logging.getLogger(__name__)


# --------------------------------------------------------------------------------------------------
# Leaf modules
# --------------------------------------------------------------------------------------------------
class ConvBN(nn.Module):
    """Conv2d -> BatchNorm2d -> optional GELU, named like mmcv's `ConvModule` (`conv`, `bn`) so the
    official checkpoints load; the conv has no bias because a norm follows (mmcv's `bias='auto'`)."""

    def __init__(
        self,
        in_chans: int,
        out_chans: int,
        kernel_size: int,
        stride: int = 1,
        padding: int = 0,
        groups: int = 1,
        act: bool = False,
    ) -> None:
        super().__init__()
        self.conv = nn.Conv2d(in_chans, out_chans, kernel_size, stride, padding, groups=groups, bias=False)
        self.bn = nn.BatchNorm2d(out_chans)
        self.act = nn.GELU() if act else nn.Identity()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.act(self.bn(self.conv(x)))


class PatchEmbed(nn.Module):
    """Strided conv + BN: the stem (7x7/4) and the downsampling between stages (3x3/2)."""

    def __init__(self, in_chans: int, embed_dim: int, patch_size: int, stride: int, padding: int) -> None:
        super().__init__()
        self.proj = ConvBN(in_chans, embed_dim, patch_size, stride, padding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x)


class OSRA(nn.Module):
    """Overlapping spatial-reduction attention: the D-Mixer's global half.

    Keys/values come from a depthwise strided conv (`sr`) plus a 3x3 local refinement; a learned
    relative position bias is added to the logits (resized bicubically when the input size differs).
    """

    def __init__(self, dim: int, num_heads: int = 1, sr_ratio: int = 1) -> None:
        super().__init__()
        if dim % num_heads:
            raise ValueError(f"dim {dim} must be divisible by num_heads {num_heads}")
        self.num_heads = num_heads
        self.scale = (dim // num_heads) ** -0.5
        self.q = nn.Conv2d(dim, dim, kernel_size=1)
        self.kv = nn.Conv2d(dim, dim * 2, kernel_size=1)
        if sr_ratio > 1:
            self.sr: nn.Module = nn.Sequential(
                ConvBN(dim, dim, sr_ratio + 3, sr_ratio, (sr_ratio + 3) // 2, groups=dim, act=True),
                ConvBN(dim, dim, 1, groups=dim),
            )
        else:
            self.sr = nn.Identity()
        self.local_conv = nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim)

    def forward(self, x: torch.Tensor, relative_pos_enc: torch.Tensor | None = None) -> torch.Tensor:
        b, c, h, w = x.shape
        heads = self.num_heads
        q = self.q(x).reshape(b, heads, c // heads, -1).transpose(-1, -2)
        kv = self.sr(x)
        kv = self.local_conv(kv) + kv
        k, v = torch.chunk(self.kv(kv), chunks=2, dim=1)
        k = k.reshape(b, heads, c // heads, -1)
        v = v.reshape(b, heads, c // heads, -1)
        attn = (q @ k) * self.scale
        if relative_pos_enc is not None:
            if attn.shape[2:] != relative_pos_enc.shape[2:]:
                relative_pos_enc = F.interpolate(
                    relative_pos_enc, size=attn.shape[2:], mode="bicubic", align_corners=False
                )
            attn = attn + relative_pos_enc
        attn = torch.softmax(attn, dim=-1)
        # (attn @ v^T)^T written as v @ attn^T: the result comes out channels-first, so no transposed
        # copy of it is made (ONNX Runtime folds the transposed operand into its GEMM instead).
        return (v @ attn.transpose(-1, -2)).reshape(b, c, h, w)


class IDConv(nn.Module):
    """Input-dependent depthwise convolution: the D-Mixer's local half.

    Each sample gets its own K x K kernel per channel, a softmax-weighted mix of `num_groups`
    learned kernels whose mixing weights come from the input pooled to K x K (the bias likewise from
    the global mean).
    """

    def __init__(self, dim: int, kernel_size: int = 3, reduction_ratio: int = 4, num_groups: int = 2) -> None:
        super().__init__()
        if num_groups < 2:
            raise ValueError(f"num_groups {num_groups} must be > 1")
        self.num_groups = num_groups
        self.kernel_size = kernel_size
        self.impl: DynamicConvImpl = "grouped"
        self.weight = nn.Parameter(torch.empty(num_groups, dim, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.empty(num_groups, dim))
        self.pool = nn.AdaptiveAvgPool2d(output_size=(kernel_size, kernel_size))
        self.proj = nn.Sequential(
            ConvBN(dim, dim // reduction_ratio, kernel_size=1, act=True),
            nn.Conv2d(dim // reduction_ratio, dim * num_groups, kernel_size=1),
        )
        nn.init.trunc_normal_(self.weight, std=0.02)
        nn.init.trunc_normal_(self.bias, std=0.02)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        b, c, _, _ = x.shape
        k, g = self.kernel_size, self.num_groups
        mix = MIX_GROUPS[self.impl]
        weight = mix(self.proj(self.pool(x)).reshape(b, g, c, k, k), self.weight)
        bias = mix(self.proj(torch.mean(x, dim=[-2, -1], keepdim=True)).reshape(b, g, c), self.bias)
        return DYNAMIC_CONV[self.impl](x, weight, bias)

    @torch.no_grad()
    def reparameterize(self) -> nn.Module:
        """The exact export form: with two kernel groups a `TwoGroupIDConv` (the softmax folded into
        the projection), otherwise this module switched to the batch-independent formulation."""
        if self.num_groups != 2:
            self.impl = "export"
            return self
        reduce, expand = expect_layers(self.proj, (ConvBN, nn.Conv2d), "IDConv.proj")
        return TwoGroupIDConv(
            pool=self.pool, reduce=reduce, expand=expand, weight=self.weight, bias=self.bias
        )


class DMixer(nn.Module):
    """Dual dynamic token mixer: channels split between IDConv and OSRA, concatenated, then the
    squeezed token enhancer (STE) as a residual."""

    def __init__(
        self, dim: int, kernel_size: int, num_groups: int, num_heads: int, sr_ratio: int, reduction: int = 8
    ) -> None:
        super().__init__()
        if dim % 2:
            raise ValueError(f"dim {dim} must be even")
        self.local_unit = IDConv(dim // 2, kernel_size=kernel_size, num_groups=num_groups)
        self.global_unit = OSRA(dim // 2, num_heads=num_heads, sr_ratio=sr_ratio)
        inner_dim = max(16, dim // reduction)
        self.proj = nn.Sequential(
            nn.Conv2d(dim, dim, kernel_size=3, padding=1, groups=dim),
            nn.GELU(),
            nn.BatchNorm2d(dim),
            nn.Conv2d(dim, inner_dim, kernel_size=1),
            nn.GELU(),
            nn.BatchNorm2d(inner_dim),
            nn.Conv2d(inner_dim, dim, kernel_size=1),
            nn.BatchNorm2d(dim),
        )

    def forward(self, x: torch.Tensor, relative_pos_enc: torch.Tensor | None = None) -> torch.Tensor:
        x1, x2 = torch.chunk(x, chunks=2, dim=1)
        x = torch.cat([self.local_unit(x1), self.global_unit(x2, relative_pos_enc)], dim=1)
        return self.proj(x) + x

    @torch.no_grad()
    def reparameterize(self) -> DMixer:
        """In place: the STE's BatchNorms folded into its convs (found by type, so a reordered STE
        folds correctly or refuses), and IDConv in its export form. OSRA's BatchNorms follow convs,
        which ONNX Runtime folds itself."""
        fold_batchnorms(self.proj, "DMixer.proj")
        if isinstance(self.local_unit, IDConv):
            self.local_unit = self.local_unit.reparameterize()
        return self


class MultiScaleDWConv(nn.Module):
    """Depthwise convs of kernel 1/3/5/7 over channel chunks (the first chunk takes the remainder)."""

    def __init__(self, dim: int, scales: Sequence[int] = (1, 3, 5, 7)) -> None:
        super().__init__()
        n = len(scales)
        self.channels = [dim - dim // n * (n - 1)] + [dim // n] * (n - 1)
        self.proj = nn.ModuleList(
            nn.Conv2d(ch, ch, kernel_size=s, padding=s // 2, groups=ch)
            for ch, s in zip(self.channels, scales, strict=True)
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        parts = torch.split(x, self.channels, dim=1)
        return torch.cat([conv(part) for conv, part in zip(self.proj, parts, strict=True)], dim=1)


class MSFFN(nn.Module):
    """Multi-scale feed-forward network: 1x1 expand, multi-scale depthwise (residual), 1x1 reduce."""

    def __init__(self, dim: int, hidden_dim: int) -> None:
        super().__init__()
        self.fc1 = nn.Sequential(
            nn.Conv2d(dim, hidden_dim, kernel_size=1, bias=False), nn.GELU(), nn.BatchNorm2d(hidden_dim)
        )
        self.dwconv = MultiScaleDWConv(hidden_dim)
        self.act = nn.GELU()
        self.norm = nn.BatchNorm2d(hidden_dim)
        self.fc2 = nn.Sequential(nn.Conv2d(hidden_dim, dim, kernel_size=1, bias=False), nn.BatchNorm2d(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.fc1(x)
        x = self.norm(self.act(self.dwconv(x) + x))
        return self.fc2(x)

    @torch.no_grad()
    def reparameterize(
        self, input_affine: Affine | None = None, output_affine: Affine | None = None
    ) -> FoldedMSFFN:
        """The exact export form, `FoldedMSFFN`: two branches, BatchNorms and residual folded.

        `input_affine` / `output_affine` (float64 per-channel scale, shift) are applied before /
        after this module by its caller (the block's GroupNorm affine and LayerScale) and fold in too.
        """
        fc1, _, hidden_bn = expect_layers(self.fc1, (nn.Conv2d, nn.GELU, nn.BatchNorm2d), "MSFFN.fc1")
        fc2, fc2_bn = expect_layers(self.fc2, (nn.Conv2d, nn.BatchNorm2d), "MSFFN.fc2")
        middle = (self.dwconv, self.act, self.norm)
        if not all(
            isinstance(m, t) for m, t in zip(middle, (MultiScaleDWConv, nn.GELU, nn.BatchNorm2d), strict=True)
        ):
            raise ReparameterizeError(
                "MSFFN: the exact rewrite expects dwconv, act, norm = MultiScaleDWConv, GELU, BatchNorm2d; "
                f"found {', '.join(type(m).__name__ for m in middle)}"
            )
        return FoldedMSFFN(
            fc1=fc1,
            hidden_bn=hidden_bn,
            dwconvs=list(self.dwconv.proj),
            norm=self.norm,
            fc2=fc2,
            fc2_bn=fc2_bn,
            input_affine=input_affine,
            output_affine=output_affine,
        )


class LayerScale(nn.Module):
    """Per-channel scale and shift, stored as the official grouped 1x1 conv weight (C, 1, 1, 1)."""

    def __init__(self, dim: int, init_value: float = 1e-5) -> None:
        super().__init__()
        self.weight = nn.Parameter(torch.full((dim, 1, 1, 1), init_value))
        self.bias = nn.Parameter(torch.zeros(dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, weight=self.weight, bias=self.bias, groups=x.shape[1])

    def affine(self) -> Affine:
        """This layer as a float64 per-channel (scale, shift), for folding into the conv before it."""
        return self.weight.detach().double().flatten(), self.bias.detach().double()


# --------------------------------------------------------------------------------------------------
# Block
# --------------------------------------------------------------------------------------------------
class Block(nn.Module):
    """DPE (7x7 depthwise, residual) -> GN(1) -> D-Mixer -> LayerScale -> GN(1) -> MS-FFN -> LayerScale."""

    def __init__(
        self,
        dim: int,
        kernel_size: int,
        num_groups: int,
        num_heads: int,
        sr_ratio: int,
        mlp_ratio: float,
        layer_scale_init_value: float = 1e-5,
    ) -> None:
        super().__init__()
        self.pos_embed = nn.Conv2d(dim, dim, kernel_size=7, padding=3, groups=dim)
        self.norm1 = nn.GroupNorm(1, dim)
        self.token_mixer = DMixer(dim, kernel_size, num_groups, num_heads, sr_ratio)
        self.norm2 = nn.GroupNorm(1, dim)
        self.mlp = MSFFN(dim, int(dim * mlp_ratio))
        self.layer_scale_1 = LayerScale(dim, layer_scale_init_value)
        self.layer_scale_2 = LayerScale(dim, layer_scale_init_value)

    def forward(self, x: torch.Tensor, relative_pos_enc: torch.Tensor | None = None) -> torch.Tensor:
        x = x + self.pos_embed(x)
        x = x + self.layer_scale_1(self.token_mixer(self.norm1(x), relative_pos_enc))
        return x + self.layer_scale_2(self.mlp(self.norm2(x)))

    @torch.no_grad()
    def reparameterize(self) -> Block:
        """In place: the token mixer in its export form, and the MS-FFN folded together with the
        affine of `norm2` before it and `layer_scale_2` after it (those become affine-free /
        Identity). `layer_scale_1` stays: the STE's residual sits between it and any conv.
        A second call changes nothing."""
        self.token_mixer = self.token_mixer.reparameterize()
        if isinstance(self.mlp, MSFFN):
            norm, input_affine = split_group_norm(self.norm2)
            self.mlp = self.mlp.reparameterize(input_affine, self.layer_scale_2.affine())
            self.norm2, self.layer_scale_2 = norm, nn.Identity()
        return self


# --------------------------------------------------------------------------------------------------
# Network
# --------------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class TransXNetConfig:
    """One variant's hyper-parameters (the official `arch_settings`); its release weights and their
    evaluation transform are in `model.weights`."""

    layers: tuple[int, int, int, int]
    embed_dims: tuple[int, int, int, int]
    num_groups: tuple[int, int, int, int]
    num_heads: tuple[int, int, int, int]
    mlp_ratios: tuple[int, int, int, int]
    sr_ratios: tuple[int, int, int, int] = (8, 4, 2, 1)
    kernel_size: int = 7


VARIANTS: dict[str, TransXNetConfig] = {
    "transxnet_t": TransXNetConfig(
        layers=(3, 3, 9, 3),
        embed_dims=(48, 96, 224, 448),
        num_groups=(2, 2, 2, 2),
        num_heads=(1, 2, 4, 8),
        mlp_ratios=(4, 4, 4, 4),
    ),
    "transxnet_s": TransXNetConfig(
        layers=(4, 4, 12, 4),
        embed_dims=(64, 128, 320, 512),
        num_groups=(2, 2, 3, 4),
        num_heads=(1, 2, 5, 8),
        mlp_ratios=(6, 6, 4, 4),
    ),
    "transxnet_b": TransXNetConfig(
        layers=(4, 4, 21, 4),
        embed_dims=(76, 152, 336, 672),
        num_groups=(2, 2, 4, 4),
        num_heads=(2, 4, 8, 16),
        mlp_ratios=(8, 8, 4, 4),
    ),
}


def relative_pos_enc_shapes(config: TransXNetConfig, image_size: int) -> list[tuple[int, int, int, int]]:
    """Shapes of the four relative position tables for a square `image_size` (official formula)."""
    side = math.ceil(image_size / 4)
    shapes = []
    for heads, sr in zip(config.num_heads, config.sr_ratios, strict=True):
        shapes.append((1, heads, side * side, math.ceil(side / sr) ** 2))
        side = math.ceil(side / 2)
    return shapes


class TransXNetOutputs(NamedTuple):
    """Everything one forward pass yields, in the order of the exported graph's outputs."""

    logits: torch.Tensor
    pooled: torch.Tensor
    stage1: torch.Tensor
    stage2: torch.Tensor
    stage3: torch.Tensor
    stage4: torch.Tensor


class TransXNet(nn.Module):
    """The TransXNet classifier.

    `forward_features` returns the four stage outputs (before any norm); `forward_head` applies the
    classifier GroupNorm and global average pool (`pre_logits=True` stops there, the pooled
    embedding) and then the 1x1 conv classifier; `forward_outputs` returns all of them from one
    pass (what the export traces). `reparameterize` switches to the exact export form.
    """

    def __init__(self, config: TransXNetConfig, image_size: int = 224, num_classes: int = 1000) -> None:
        super().__init__()
        self.config = config
        self.variant = next((name for name, cfg in VARIANTS.items() if cfg == config), "transxnet_custom")
        self.image_size = image_size
        self.num_classes = num_classes
        self.num_features = config.embed_dims[-1]
        self.patch_embed = PatchEmbed(3, config.embed_dims[0], patch_size=7, stride=4, padding=3)
        self.relative_pos_enc = nn.ParameterList(
            nn.Parameter(torch.zeros(shape)) for shape in relative_pos_enc_shapes(config, image_size)
        )
        network: list[nn.Module] = []
        for i, depth in enumerate(config.layers):
            network.append(
                nn.ModuleList(
                    Block(
                        config.embed_dims[i],
                        config.kernel_size,
                        config.num_groups[i],
                        config.num_heads[i],
                        config.sr_ratios[i],
                        config.mlp_ratios[i],
                    )
                    for _ in range(depth)
                )
            )
            if i < len(config.layers) - 1:
                network.append(
                    PatchEmbed(
                        config.embed_dims[i], config.embed_dims[i + 1], patch_size=3, stride=2, padding=1
                    )
                )
        self.network = nn.ModuleList(network)
        self.classifier = nn.Sequential(
            nn.GroupNorm(1, self.num_features),
            nn.AdaptiveAvgPool2d(1),
            nn.Conv2d(self.num_features, num_classes, kernel_size=1),
        )
        self.apply(_init_weights)

    def set_dynamic_conv_impl(self, impl: DynamicConvImpl) -> TransXNet:
        """Choose IDConv's formulation: 'grouped' (official, eager) or 'export' (dynamic-batch ONNX)."""
        if impl not in DYNAMIC_CONV_IMPLS:
            raise ValueError(f"unknown dynamic conv impl {impl!r}; choose one of {DYNAMIC_CONV_IMPLS}")
        for module in self.modules():
            if isinstance(module, IDConv):
                module.impl = impl
        return self

    def forward_features(self, x: torch.Tensor) -> list[torch.Tensor]:
        x = self.patch_embed(x)
        stages = []
        for idx, layer in enumerate(self.network):
            if idx % 2 == 0:  # a stage (odd indices are the downsampling embeddings)
                pos_enc = self.relative_pos_enc[idx // 2]
                for block in layer:
                    x = block(x, pos_enc)
                stages.append(x)
            else:
                x = layer(x)
        return stages

    def forward_head(self, x: torch.Tensor, pre_logits: bool = False) -> torch.Tensor:
        x = self.classifier[1](self.classifier[0](x))
        if pre_logits:
            return x.flatten(1)
        return self.classifier[2](x).flatten(1)

    def forward_outputs(self, x: torch.Tensor) -> TransXNetOutputs:
        """Logits, pooled embedding and the four stage maps from one pass (the head runs once)."""
        stages = self.forward_features(x)
        pooled = self.forward_head(stages[-1], pre_logits=True)
        logits = self.classifier[2](pooled[:, :, None, None]).flatten(1)
        return TransXNetOutputs(logits, pooled, *stages)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.forward_head(self.forward_features(x)[-1])

    @torch.no_grad()
    def reparameterize(self) -> TransXNet:
        """Switch every module, in place, to its exact export form; returns `self` in eval mode.

        The one place where IDConv's formulation and the folds meet: each block's token mixer (STE
        BatchNorms folded, IDConv batch-independent or, with two groups, its softmax folded) and
        MS-FFN (folded with its GroupNorm affine and LayerScale into two branches). The result
        computes the same function at any input size, float rounding aside, but only in eval mode
        and it no longer takes checkpoints: reparameterize a copy
        (`export.onnx_export.prepare_for_export`). A second call changes nothing.
        """
        self.eval()
        for block in [m for m in self.modules() if isinstance(m, Block)]:
            block.reparameterize()
        return self


def _init_weights(m: nn.Module) -> None:
    """The official initialisation (matters only without a checkpoint)."""
    if isinstance(m, nn.Conv2d):
        nn.init.trunc_normal_(m.weight, std=0.02)
        if m.bias is not None:
            nn.init.zeros_(m.bias)
    elif isinstance(m, nn.GroupNorm | nn.BatchNorm2d):
        nn.init.ones_(m.weight)
        nn.init.zeros_(m.bias)


# --------------------------------------------------------------------------------------------------
# Checkpoint filter
# --------------------------------------------------------------------------------------------------
def describe_checkpoint(state_dict: dict[str, torch.Tensor]) -> str:
    """Name the variant and image size a state dict looks like, for error messages."""
    stem = state_dict.get("patch_embed.proj.conv.weight")
    if stem is None:
        return "not a TransXNet checkpoint (no patch_embed.proj.conv.weight)"
    by_width = {cfg.embed_dims[0]: name for name, cfg in VARIANTS.items()}
    name = by_width.get(stem.shape[0])
    if name is None:
        return f"an unknown TransXNet width (stem {stem.shape[0]} channels)"
    table = state_dict.get("relative_pos_enc.0")
    if table is not None:
        side = math.isqrt(table.shape[2]) * 4
        return f"{name} (image_size {side})"
    return name


def checkpoint_filter_fn(state_dict: dict[str, torch.Tensor], model: TransXNet) -> dict[str, torch.Tensor]:
    """Adapt an official state dict to `model`: resize relative position tables built for another
    image size. The forward pass resizes them bicubically to the attention shape anyway, so doing it
    once here gives the same numbers as running the original model at the new size."""
    out = dict(state_dict)
    for i, param in enumerate(model.relative_pos_enc):
        key = f"relative_pos_enc.{i}"
        table = out.get(key)
        if table is None or table.shape == param.shape:
            continue
        if table.ndim != 4 or table.shape[:2] != param.shape[:2]:
            continue  # a different variant: leave it for the mismatch report
        out[key] = F.interpolate(table, size=param.shape[2:], mode="bicubic", align_corners=False)
        log.info(
            "resized %s from %s to %s for image_size %d",
            key,
            tuple(table.shape),
            tuple(param.shape),
            model.image_size,
        )
    return out


def load_checkpoint(
    model: TransXNet, path: str | Path, *, strict: bool = True, use_ema: bool = False
) -> TransXNet:
    """Load an official (or compatible) checkpoint into `model`.

    With `strict=True` any missing, unexpected or mis-shaped key raises `CheckpointMismatchError`
    listing the first differences and naming the variant the checkpoint looks like.
    """
    state_dict = checkpoint_filter_fn(read_checkpoint(path, use_ema=use_ema), model)
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k}: checkpoint {tuple(state_dict[k].shape)} vs model {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    if mismatched or (strict and (missing or unexpected)):
        problems = []
        for label, items in (
            ("shape mismatches", mismatched),
            ("missing", missing),
            ("unexpected", unexpected),
        ):
            if items:
                shown = "; ".join(items[:5]) + (f"; ... ({len(items)} in all)" if len(items) > 5 else "")
                problems.append(f"{label}: {shown}")
        raise CheckpointMismatchError(
            f"{path} does not fit {model.variant} at image_size {model.image_size}: the checkpoint looks "
            f"like {describe_checkpoint(state_dict)}. " + " | ".join(problems)
        )
    model.load_state_dict(state_dict, strict=strict)
    return model


# --------------------------------------------------------------------------------------------------
# Factories
# --------------------------------------------------------------------------------------------------
def resolve_variant(name: str) -> str:
    """Canonical variant name for 'transxnet_t' | 'transxnet-t' | 't' (any case); `ValueError` names
    the valid ones."""
    key = name.strip().lower().replace("-", "_")
    if key in VARIANTS:
        return key
    if f"transxnet_{key}" in VARIANTS:
        return f"transxnet_{key}"
    valid = ", ".join([*VARIANTS, *(v.rsplit("_", 1)[1] for v in VARIANTS)])
    raise ValueError(f"unknown TransXNet variant {name!r}; valid names: {valid}")


def create_model(
    name: str,
    *,
    checkpoint: str | Path | None = None,
    image_size: int = 224,
    num_classes: int | None = None,
) -> TransXNet:
    """Build a TransXNet variant in eval mode, optionally loading a checkpoint strictly.

    `num_classes` defaults to the variant's release (`model.weights`): 1000, ImageNet-1k.
    """
    variant = resolve_variant(name)
    if image_size < 32:
        raise ValueError(f"image_size {image_size} is too small; TransXNet downsamples by 32")
    if num_classes is None:
        num_classes = default_cfg(variant).num_classes
    model = TransXNet(VARIANTS[variant], image_size=image_size, num_classes=num_classes)
    if checkpoint is not None:
        load_checkpoint(model, checkpoint)
    return model.eval()
