"""`prepare_for_export` computes the untouched model's function and removes what it claims to fold.

The reference is the original model itself with the seeded reference checkpoint (LayerScale 0.2-0.6
and non-trivial BN statistics, so every folded layer changes the output), run on the official
grouped IDConv path.
"""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from export.optimize import FoldedMSFFN, PlainGroupNorm, TwoGroupIDConv, prepare_for_export
from model.transxnet import MSFFN, Block, IDConv, MultiScaleDWConv, TransXNet, create_model

REFERENCE_DIR = Path(__file__).resolve().parents[1] / "fixtures" / "reference"


def _relative_error(out: torch.Tensor, ref: torch.Tensor) -> float:
    return float((out - ref).norm() / ref.norm())


def _outputs(net: nn.Module, images: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.no_grad():
        stages = net.forward_features(images)
        pooled = net.forward_head(stages[-1], pre_logits=True)
        logits = net.classifier[2](pooled[:, :, None, None]).flatten(1)
    return {"logits": logits, "pooled": pooled, **{f"stage{i + 1}": s for i, s in enumerate(stages)}}


@pytest.fixture(scope="module")
def reference_model() -> TransXNet:
    sys.path.insert(0, str(REFERENCE_DIR))
    try:
        from make_checkpoint import make_state_dict
    finally:
        sys.path.remove(str(REFERENCE_DIR))
    net = create_model("t")
    net.load_state_dict(make_state_dict("t", 0))
    return net.eval()


@pytest.fixture(scope="module")
def prepared_model(reference_model: TransXNet) -> nn.Module:
    return prepare_for_export(reference_model)


@pytest.mark.parametrize("batch", [1, 3])
def test_prepared_model_matches_original(
    reference_model: TransXNet, prepared_model: nn.Module, batch: int
) -> None:
    images = torch.randn(batch, 3, 224, 224, generator=torch.Generator().manual_seed(batch))
    ref = _outputs(reference_model, images)
    out = _outputs(prepared_model, images)
    for name, tensor in ref.items():
        tolerance = 1e-5 if name in ("logits", "pooled") else 1e-4
        assert _relative_error(out[name], tensor) <= tolerance, name


def test_original_model_is_untouched(reference_model: TransXNet, prepared_model: nn.Module) -> None:
    assert prepared_model is not reference_model
    blocks = [m for m in reference_model.modules() if isinstance(m, Block)]
    assert all(isinstance(b.mlp, MSFFN) for b in blocks)
    assert all(b.norm2.affine for b in blocks)
    assert {m.impl for m in reference_model.modules() if hasattr(m, "impl")} == {"grouped"}


def test_two_group_idconvs_fold_their_softmax(prepared_model: nn.Module) -> None:
    # T's IDConvs all have two groups: no IDConv is left to run the general mix
    mixers = [b.token_mixer.local_unit for b in prepared_model.modules() if isinstance(b, Block)]
    assert mixers and all(isinstance(m, TwoGroupIDConv) for m in mixers)
    assert not any(isinstance(m, IDConv) for m in prepared_model.modules())


def test_idconvs_with_more_groups_keep_the_export_formulation() -> None:
    net = create_model("s")  # 3 and 4 kernel groups
    prepared = prepare_for_export(net)
    impls = {m.impl for m in prepared.modules() if isinstance(m, IDConv)}
    assert impls == {"export"}
    images = torch.randn(1, 3, 224, 224, generator=torch.Generator().manual_seed(3))
    with torch.no_grad():
        assert _relative_error(prepared(images), net.eval()(images)) <= 1e-5


def test_msffn_affines_are_folded(prepared_model: nn.Module) -> None:
    blocks = [m for m in prepared_model.modules() if isinstance(m, Block)]
    assert blocks
    for block in blocks:
        assert isinstance(block.mlp, FoldedMSFFN)
        assert not any(isinstance(m, nn.BatchNorm2d) for m in block.mlp.modules())
        assert isinstance(block.layer_scale_2, nn.Identity)
        assert isinstance(block.norm2, PlainGroupNorm)


def test_msffn_is_two_branches_with_their_largest_kernel(prepared_model: nn.Module) -> None:
    for block in (m for m in prepared_model.modules() if isinstance(m, Block)):
        convs = [branch.dwconv for branch in block.mlp.branches]
        assert [conv.kernel_size for conv in convs] == [(3, 3), (7, 7)]  # scales 1/3 and 5/7
        assert all(conv.groups == conv.in_channels for conv in convs)
        assert [b.fc1.out_channels for b in block.mlp.branches] == [conv.in_channels for conv in convs]


def test_msffn_refuses_scales_it_has_no_branch_for() -> None:
    mlp = MSFFN(8, 32)
    mlp.dwconv = MultiScaleDWConv(32, scales=(1, 3, 5, 9))
    with pytest.raises(ValueError, match="do not match the branches"):
        FoldedMSFFN(mlp.eval(), None, None)


def test_ste_batchnorms_are_folded(prepared_model: nn.Module) -> None:
    for block in (m for m in prepared_model.modules() if isinstance(m, Block)):
        assert not any(isinstance(m, nn.BatchNorm2d) for m in block.token_mixer.proj)


def test_only_batchnorms_after_a_conv_remain(prepared_model: nn.Module) -> None:
    """What is left is conv -> BN (ConvBN), which ONNX Runtime folds into the conv itself."""
    remaining = [name for name, m in prepared_model.named_modules() if isinstance(m, nn.BatchNorm2d)]
    assert remaining
    assert all(name.endswith(".bn") for name in remaining), remaining


def test_prepared_model_matches_original_at_another_image_size(
    reference_model: TransXNet, prepared_model: nn.Module
) -> None:
    # Nothing folded depends on the spatial size (no per-position constants), so 192 x 256 works.
    images = torch.randn(2, 3, 192, 256, generator=torch.Generator().manual_seed(7))
    with torch.no_grad():
        assert _relative_error(prepared_model(images), reference_model(images)) <= 1e-5
