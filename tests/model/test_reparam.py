"""Each module's `reparameterize()` computes the function of the module it rewrites, finds the layers
it folds by type, and refuses a layout it does not know instead of folding the wrong layer.

References are the unrewritten modules themselves (official grouped IDConv path) on random inputs,
with BatchNorm statistics, norm affines and LayerScales randomised so that every folded layer
changes the output; the whole-model tests use the seeded reference checkpoint.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

from model import create_model
from model.reparam import (
    FoldedMSFFN,
    PlainGroupNorm,
    ReparameterizeError,
    TwoGroupIDConv,
    fold_batchnorms,
    split_group_norm,
)
from model.transxnet import MSFFN, Block, DMixer, IDConv, LayerScale, MultiScaleDWConv, TransXNet

TOLERANCE = 1e-5


def _rel(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out.double() - ref.double()).norm() / ref.double().norm())


def _randomise(module: nn.Module, seed: int) -> nn.Module:
    """Non-trivial BatchNorm statistics, norm affines and LayerScales, in eval mode."""
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for m in module.modules():
            if isinstance(m, nn.BatchNorm2d):
                m.running_mean.copy_(torch.randn(m.num_features, generator=g) * 0.3)
                m.running_var.copy_(torch.rand(m.num_features, generator=g) * 1.5 + 0.5)
            if isinstance(m, nn.BatchNorm2d | nn.GroupNorm) and m.affine:
                m.weight.copy_(1 + 0.3 * torch.randn(m.weight.shape, generator=g))
                m.bias.copy_(0.3 * torch.randn(m.bias.shape, generator=g))
            if isinstance(m, LayerScale):
                m.weight.copy_(torch.rand(m.weight.shape, generator=g) * 0.4 + 0.2)
                m.bias.copy_(0.1 * torch.randn(m.bias.shape, generator=g))
    return module.eval()


def _images(shape: tuple[int, ...], seed: int = 0) -> torch.Tensor:
    return torch.randn(shape, generator=torch.Generator().manual_seed(seed))


def _no_batchnorm(module: nn.Module) -> bool:
    return not any(isinstance(m, nn.BatchNorm2d) for m in module.modules())


# --------------------------------------------------------------------------------------------------
# One module at a time
# --------------------------------------------------------------------------------------------------
@pytest.mark.parametrize(("dim", "size"), [(48, 14), (224, 7)])
def test_dmixer_rewrite_is_exact_and_folds_the_ste_batchnorms(dim: int, size: int) -> None:
    mixer = _randomise(DMixer(dim, kernel_size=7, num_groups=2, num_heads=2, sr_ratio=2), seed=dim)
    x = _images((2, dim, size, size))
    with torch.no_grad():
        ref = mixer(x)
        rewritten = copy.deepcopy(mixer).reparameterize()
        out = rewritten(x)
    assert _rel(out, ref) <= TOLERANCE
    assert _no_batchnorm(rewritten.proj)
    assert isinstance(rewritten.local_unit, TwoGroupIDConv)


def test_two_group_idconv_folds_its_softmax_exactly() -> None:
    idconv = _randomise(IDConv(24, kernel_size=7, num_groups=2), seed=1)
    x = _images((3, 24, 14, 14))
    with torch.no_grad():
        ref = idconv(x)  # official grouped form
        rewritten = idconv.reparameterize()
        out = rewritten(x)
    assert isinstance(rewritten, TwoGroupIDConv)
    assert idconv.impl == "grouped"  # the original module is left as it was
    assert _rel(out, ref) <= TOLERANCE


@pytest.mark.parametrize("groups", [3, 4])
def test_idconv_with_more_groups_switches_to_the_export_formulation(groups: int) -> None:
    idconv = _randomise(IDConv(16, kernel_size=7, num_groups=groups), seed=groups)
    x = _images((2, 16, 9, 13))
    with torch.no_grad():
        ref = idconv(x)
        rewritten = idconv.reparameterize()
        out = rewritten(x)
    assert rewritten is idconv and idconv.impl == "export"
    assert _rel(out, ref) <= TOLERANCE


def test_msffn_rewrite_is_exact_with_the_affines_around_it() -> None:
    mlp = _randomise(MSFFN(32, 128), seed=2)
    g = torch.Generator().manual_seed(5)
    affine_in = (1 + 0.3 * torch.randn(32, generator=g).double(), torch.randn(32, generator=g).double())
    affine_out = (torch.rand(32, generator=g).double() + 0.2, 0.1 * torch.randn(32, generator=g).double())
    x = _images((2, 32, 14, 14))

    def around(t: torch.Tensor, affine: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
        scale, shift = (a.float().view(1, -1, 1, 1) for a in affine)
        return t * scale + shift

    with torch.no_grad():
        ref = around(mlp(around(x, affine_in)), affine_out)
        folded = mlp.reparameterize(affine_in, affine_out)
        out = folded(x)
        plain = mlp.reparameterize()(x)
        unfolded = mlp(x)
    assert isinstance(folded, FoldedMSFFN) and _no_batchnorm(folded)
    assert _rel(out, ref) <= TOLERANCE
    assert _rel(plain, unfolded) <= TOLERANCE
    assert [b.dwconv.kernel_size for b in folded.branches] == [(3, 3), (7, 7)]  # scales 1/3 and 5/7


@pytest.mark.parametrize("groups", [1, 2])
def test_group_norm_split_into_affine_free_norm_and_affine(groups: int) -> None:
    norm = _randomise(nn.GroupNorm(groups, 16), seed=groups)
    plain, affine = split_group_norm(norm)
    assert affine is not None
    assert isinstance(plain, PlainGroupNorm) == (groups == 1)
    x = _images((2, 16, 5, 7)) * 3 + 1
    scale, shift = (a.float().view(1, -1, 1, 1) for a in affine)
    with torch.no_grad():
        assert _rel(plain(x) * scale + shift, norm(x)) <= TOLERANCE
    assert split_group_norm(nn.GroupNorm(1, 16, affine=False))[1] is None


def test_layer_scale_affine_is_its_forward() -> None:
    scale_layer = _randomise(LayerScale(12), seed=3)
    x = _images((2, 12, 4, 4))
    scale, shift = scale_layer.affine()
    with torch.no_grad():
        expected = x * scale.float().view(1, -1, 1, 1) + shift.float().view(1, -1, 1, 1)
        assert _rel(scale_layer(x), expected) <= 1e-6


@pytest.mark.parametrize(("groups", "heads", "sr"), [(2, 1, 8), (3, 5, 2), (4, 8, 1)])
def test_block_rewrite_is_exact(groups: int, heads: int, sr: int) -> None:
    dim = 40 * heads if heads > 1 else 48
    block = _randomise(Block(dim, 7, groups, heads, sr, mlp_ratio=4), seed=groups)
    x = _images((2, dim, 16, 16))
    side = 16
    pos = 0.1 * _images((1, heads, side * side, math.ceil(side / sr) ** 2), seed=9)
    with torch.no_grad():
        ref = block(x, pos)
        rewritten = copy.deepcopy(block).reparameterize()
        out = rewritten(x, pos)
        again = rewritten.reparameterize()(x, pos)  # a second call changes nothing
    assert _rel(out, ref) <= TOLERANCE
    assert torch.equal(again, out)
    assert isinstance(rewritten.mlp, FoldedMSFFN)
    assert isinstance(rewritten.layer_scale_2, nn.Identity) and isinstance(rewritten.norm2, PlainGroupNorm)


# --------------------------------------------------------------------------------------------------
# Layer order: found by type, refused when unknown
# --------------------------------------------------------------------------------------------------
def _ste(layers: list[nn.Module]) -> nn.Sequential:
    return _randomise(nn.Sequential(*layers), seed=len(layers))


def test_ste_batchnorms_are_found_by_type_when_the_layers_move() -> None:
    """The BatchNorms moved to right after the convs: each now folds into the conv before it."""
    dim, inner = 32, 16
    seq = _ste(
        [
            nn.Conv2d(dim, dim, 3, padding=1, groups=dim),
            nn.BatchNorm2d(dim),
            nn.GELU(),
            nn.Conv2d(dim, inner, 1),
            nn.BatchNorm2d(inner),
            nn.GELU(),
            nn.Conv2d(inner, dim, 1),
            nn.BatchNorm2d(dim),
        ]
    )
    x = _images((2, dim, 9, 9))
    with torch.no_grad():
        ref = seq(x)
        folded = copy.deepcopy(seq)
        assert fold_batchnorms(folded, "ste") == 3
        assert _rel(folded(x), ref) <= TOLERANCE
    assert _no_batchnorm(folded)


def test_a_batchnorm_with_no_conv_to_fold_into_is_refused_and_nothing_changes() -> None:
    dim = 16
    seq = _ste(
        [
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.BatchNorm2d(dim),  # foldable: a 1x1 conv follows
            nn.Conv2d(dim, dim, 1),
            nn.GELU(),
            nn.BatchNorm2d(dim),  # not foldable: a padded 3x3 conv follows
            nn.Conv2d(dim, dim, 3, padding=1),
        ]
    )
    before = [type(m) for m in seq]
    with pytest.raises(ReparameterizeError, match=r"ste\[5\].*GELU before and Conv2d after"):
        fold_batchnorms(seq, "ste")
    assert [type(m) for m in seq] == before  # no partial fold


def test_dmixer_refuses_a_reordered_ste_it_cannot_fold() -> None:
    mixer = _randomise(DMixer(32, kernel_size=7, num_groups=2, num_heads=1, sr_ratio=1), seed=4)
    # a GELU inserted between the first BatchNorm and the 1x1 conv it folds into
    mixer.proj = nn.Sequential(*mixer.proj[:3], nn.GELU(), *mixer.proj[3:])
    with pytest.raises(ReparameterizeError, match=r"DMixer\.proj\[2\]"):
        mixer.reparameterize()
    assert sum(isinstance(m, nn.BatchNorm2d) for m in mixer.proj) == 3  # none folded


@pytest.mark.parametrize(
    ("part", "layers"),
    [
        ("fc1", lambda m: nn.Sequential(m.fc1[0], m.fc1[2], m.fc1[1])),  # BN before GELU
        ("fc2", lambda m: nn.Sequential(m.fc2[1], m.fc2[0])),  # BN before the conv
    ],
)
def test_msffn_refuses_a_layer_order_its_fold_does_not_assume(part: str, layers) -> None:
    mlp = _randomise(MSFFN(8, 32), seed=6)
    setattr(mlp, part, layers(mlp))
    with pytest.raises(ReparameterizeError, match=rf"MSFFN\.{part}: the exact rewrite expects"):
        mlp.reparameterize()


def test_msffn_refuses_scales_it_has_no_branch_for() -> None:
    mlp = MSFFN(8, 32)
    mlp.dwconv = MultiScaleDWConv(32, scales=(1, 3, 5, 9))
    with pytest.raises(ReparameterizeError, match="do not match the branches"):
        mlp.eval().reparameterize()


def test_idconv_refuses_a_projection_it_does_not_know() -> None:
    idconv = IDConv(16, kernel_size=7, num_groups=2)
    idconv.proj = nn.Sequential(idconv.proj[1], idconv.proj[0])
    with pytest.raises(ReparameterizeError, match=r"IDConv\.proj"):
        idconv.reparameterize()


# --------------------------------------------------------------------------------------------------
# The whole model
# --------------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def reference_model(make_checkpoint) -> TransXNet:
    net = create_model("t")
    net.load_state_dict(make_checkpoint.make_state_dict("t", 0))
    return net.eval()


@pytest.fixture(scope="module")
def reparameterized(reference_model: TransXNet) -> TransXNet:
    return copy.deepcopy(reference_model).reparameterize()


@pytest.mark.parametrize("batch", [1, 3])
def test_reparameterized_model_matches_original(
    reference_model: TransXNet, reparameterized: TransXNet, batch: int
) -> None:
    images = _images((batch, 3, 224, 224), seed=batch)
    with torch.no_grad():
        ref = reference_model.forward_outputs(images)
        out = reparameterized.forward_outputs(images)
    for name in ref._fields:
        tolerance = 1e-5 if name in ("logits", "pooled") else 1e-4
        assert _rel(getattr(out, name), getattr(ref, name)) <= tolerance, name


def test_reparameterized_model_matches_original_at_another_image_size(
    reference_model: TransXNet, reparameterized: TransXNet
) -> None:
    # Nothing folded depends on the spatial size (no per-position constants), so 192 x 256 works.
    images = _images((2, 3, 192, 256), seed=7)
    with torch.no_grad():
        assert _rel(reparameterized(images), reference_model(images)) <= 1e-5


def test_reparameterized_t_has_no_general_idconv_and_only_conv_bns(reparameterized: TransXNet) -> None:
    """T's IDConvs all have two groups; what is left of the BatchNorms is conv -> BN (ConvBN),
    which ONNX Runtime folds into the conv itself."""
    assert not any(isinstance(m, IDConv) for m in reparameterized.modules())
    remaining = [name for name, m in reparameterized.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert remaining and all(name.endswith(".bn") for name in remaining), remaining
    blocks = [m for m in reparameterized.modules() if isinstance(m, Block)]
    assert len(blocks) == 18 and all(isinstance(b.mlp, FoldedMSFFN) for b in blocks)


def test_reparameterize_s_keeps_the_export_formulation_for_more_groups() -> None:
    net = create_model("s")  # 3 and 4 kernel groups in stages 3 and 4
    ref = copy.deepcopy(net)
    net.reparameterize()
    assert {m.impl for m in net.modules() if isinstance(m, IDConv)} == {"export"}
    images = _images((1, 3, 96, 96), seed=3)  # a small input keeps S cheap; the size is not the point
    with torch.no_grad():
        assert _rel(net(images), ref(images)) <= 1e-5


def test_forward_outputs_is_forward_and_the_heads(reference_model: TransXNet) -> None:
    images = _images((2, 3, 224, 224), seed=11)
    with torch.inference_mode():
        out = reference_model.forward_outputs(images)
        stages = reference_model.forward_features(images)
        assert torch.equal(out.logits, reference_model(images))
        assert torch.equal(out.pooled, reference_model.forward_head(stages[-1], pre_logits=True))
        assert all(torch.equal(a, b) for a, b in zip(out[2:], stages, strict=True))
