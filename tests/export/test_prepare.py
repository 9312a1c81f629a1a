"""What the export takes from model/ without tracing: the export form of a copy, the model's output
face, and metadata drawn from the release-weight table (so no second copy of a fact can win)."""

from __future__ import annotations

import dataclasses

import pytest
import torch

from export.onnx_export import build_metadata, prepare_for_export
from model import TransXNetOutputs, create_model, weights
from model.transxnet import MSFFN, Block, IDConv
from runtime.metadata import OUTPUT_NAMES

LABELS = tuple(f"class {i}" for i in range(1000))


@pytest.fixture(scope="module")
def net_t():
    torch.manual_seed(0)
    return create_model("t")


def test_model_outputs_are_named_and_ordered_like_the_graph() -> None:
    assert TransXNetOutputs._fields == OUTPUT_NAMES


def test_prepare_for_export_rewrites_a_copy_and_leaves_the_model_alone(net_t) -> None:
    prepared = prepare_for_export(net_t)
    assert prepared is not net_t
    blocks = [m for m in net_t.modules() if isinstance(m, Block)]
    assert all(isinstance(b.mlp, MSFFN) and b.norm2.affine for b in blocks)
    assert {m.impl for m in net_t.modules() if isinstance(m, IDConv)} == {"grouped"}
    assert not any(isinstance(b.mlp, MSFFN) for b in prepared.modules() if isinstance(b, Block))


def test_metadata_preprocessing_is_the_weight_tables(net_t, monkeypatch: pytest.MonkeyPatch) -> None:
    meta = build_metadata(net_t, weights="random-init seed 0", labels=LABELS, opset=20)
    cfg = weights.eval_cfg("transxnet_t", 224)
    assert (meta.crop_pct, meta.interpolation, meta.mean, meta.std) == (
        cfg.crop_pct,
        cfg.interpolation,
        cfg.mean,
        cfg.std,
    )
    # change the table: the metadata follows it, so nothing else holds these values
    changed = dataclasses.replace(
        cfg, crop_pct=0.875, interpolation="bilinear", mean=(0.5, 0.5, 0.5), std=(0.25, 0.25, 0.25)
    )
    table = tuple(changed if c == cfg else c for c in weights.PRETRAINED_CFGS)
    monkeypatch.setattr(weights, "PRETRAINED_CFGS", table)
    meta = build_metadata(net_t, weights="random-init seed 0", labels=LABELS, opset=20)
    assert (meta.crop_pct, meta.interpolation, meta.mean, meta.std) == (
        0.875,
        "bilinear",
        (0.5, 0.5, 0.5),
        (0.25, 0.25, 0.25),
    )


def test_b_at_384_is_described_by_its_own_release() -> None:
    net = create_model("b", image_size=384)
    meta = build_metadata(net, weights="random-init seed 0", labels=LABELS, opset=20)
    assert (meta.variant, meta.image_size, meta.crop_pct, meta.resize_size) == ("transxnet_b", 384, 0.95, 404)
