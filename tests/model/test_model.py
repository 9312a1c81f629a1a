"""TransXNet port: parity with the official implementation, parameters, input sizes, IDConv forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from model import VARIANTS, create_model, resolve_variant
from model.ops import (
    dynamic_depthwise_conv_export,
    dynamic_depthwise_conv_grouped,
    mix_groups_export,
    mix_groups_softmax,
)
from model.transxnet import relative_pos_enc_shapes
from tests.conftest import REFERENCE

OFFICIAL_PARAMS = {"transxnet_t": 12_834_808, "transxnet_s": 26_864_068, "transxnet_b": 48_009_002}


def rel(a: torch.Tensor | np.ndarray, b: torch.Tensor | np.ndarray) -> float:
    a = np.asarray(a, dtype=np.float64)
    b = np.asarray(b, dtype=np.float64)
    return float(np.linalg.norm(a - b) / np.linalg.norm(b))


@pytest.fixture(scope="module")
def reference_t(make_checkpoint):
    net = create_model("t")
    net.load_state_dict(make_checkpoint.make_state_dict("t", seed=0), strict=True)
    return net


def all_outputs(net, x: torch.Tensor) -> dict[str, torch.Tensor]:
    with torch.inference_mode():
        stages = net.forward_features(x)
        out = {f"stage{i + 1}": s for i, s in enumerate(stages)}
        out["pooled"] = net.forward_head(stages[-1], pre_logits=True)
        out["logits"] = net.forward_head(stages[-1])
        assert torch.equal(out["logits"], net(x))
    return out


@pytest.mark.parametrize("impl", ["grouped", "export"])
def test_outputs_match_official_implementation(reference_t, expected_t, impl):
    reference_t.set_dynamic_conv_impl(impl)
    try:
        out = all_outputs(reference_t, torch.from_numpy(expected_t["inputs"]))
    finally:
        reference_t.set_dynamic_conv_impl("grouped")
    for name in ("logits", "pooled", "stage1", "stage2", "stage3", "stage4"):
        assert out[name].shape == expected_t[name].shape, name
        assert rel(out[name], expected_t[name]) <= 1e-5, name


def test_reference_samples_are_distinguishable(expected_t):
    # The comparison above would not catch a model that mixes samples if the two were alike.
    a, b = expected_t["logits"]
    assert np.linalg.norm(a - b) / np.linalg.norm(a) > 0.1


@pytest.mark.parametrize("variant", sorted(VARIANTS))
def test_parameter_count_equals_official(variant):
    net = create_model(variant)
    assert sum(p.numel() for p in net.parameters()) == OFFICIAL_PARAMS[variant]


@pytest.mark.parametrize("short", ["t", "s", "b"])
def test_state_dict_keys_and_shapes_equal_official(short):
    rows = []
    for line in (REFERENCE / f"keys_{short}.tsv").read_text().splitlines():
        name, shape = line.split("\t")
        rows.append((name, tuple(int(s) for s in shape.split("x")) if shape else ()))
    sd = create_model(short).state_dict()
    assert [(k, tuple(v.shape)) for k, v in sd.items()] == rows


def test_image_size_384_builds_the_b384_relative_position_tables():
    net = create_model("b", image_size=384)
    shapes = [tuple(p.shape) for p in net.relative_pos_enc]
    # 384/4 = 96 tokens a side; keys/values pooled by sr 8, 4, 2, 1 over 96, 48, 24, 12.
    assert shapes == [(1, 2, 9216, 144), (1, 4, 2304, 144), (1, 8, 576, 144), (1, 16, 144, 144)]
    assert shapes == relative_pos_enc_shapes(VARIANTS["transxnet_b"], 384)


@pytest.mark.parametrize("shape", [(3, 3, 224, 224), (2, 3, 256, 256), (2, 3, 192, 288)])
def test_batch_equals_samples_run_one_by_one(reference_t, shape):
    x = torch.from_numpy(np.random.default_rng(7).standard_normal(shape).astype(np.float32))
    with torch.inference_mode():
        batched = reference_t(x)
        single = torch.cat([reference_t(x[i : i + 1]) for i in range(shape[0])])
    assert batched.shape == (shape[0], 1000)
    assert rel(batched, single) <= 1e-6


@pytest.mark.parametrize("size", [(256, 256), (192, 288)])
def test_other_input_sizes_resize_position_tables_bicubically(reference_t, make_checkpoint, size):
    """A 224-built model run at another size must equal a model built for that size whose tables were
    bicubically resized (align_corners=False) up front: the official code's runtime behaviour."""
    h, w = size
    x = torch.from_numpy(np.random.default_rng(3).standard_normal((2, 3, h, w)).astype(np.float32))
    sd = make_checkpoint.make_state_dict("t", seed=0)
    resized = create_model("t")
    side_h, side_w = -(-h // 4), -(-w // 4)
    for i, heads_sr in enumerate(zip(VARIANTS["transxnet_t"].num_heads, (8, 4, 2, 1), strict=True)):
        _, sr = heads_sr
        size_q = side_h * side_w
        size_kv = -(-side_h // sr) * -(-side_w // sr)
        sd[f"relative_pos_enc.{i}"] = torch.nn.functional.interpolate(
            sd[f"relative_pos_enc.{i}"], size=(size_q, size_kv), mode="bicubic", align_corners=False
        )
        side_h, side_w = -(-side_h // 2), -(-side_w // 2)
    resized.relative_pos_enc = torch.nn.ParameterList(
        torch.nn.Parameter(sd[f"relative_pos_enc.{i}"]) for i in range(4)
    )
    resized.load_state_dict(sd, strict=True)
    with torch.inference_mode():
        got = reference_t(x)
        want = resized(x)
    assert got.shape == (2, 1000)
    assert rel(got, want) <= 1e-6
    # ...and the tables really matter: dropping them changes the output.
    with torch.no_grad():
        resized.relative_pos_enc[0].zero_()
        assert rel(resized(x), want) > 1e-4


@pytest.mark.parametrize(
    "shape", [(1, 24, 56, 56), (3, 48, 28, 28), (2, 112, 14, 14), (4, 224, 7, 7), (2, 8, 9, 13)]
)
def test_exportable_idconv_equals_grouped(shape):
    g = torch.Generator().manual_seed(sum(shape))
    b, c, _, _ = shape
    x = torch.randn(shape, generator=g)
    weight = torch.randn(b, c, 7, 7, generator=g)
    bias = torch.randn(b, c, generator=g)
    grouped = dynamic_depthwise_conv_grouped(x, weight, bias)
    exported = dynamic_depthwise_conv_export(x, weight, bias)
    assert exported.shape == grouped.shape
    assert rel(exported, grouped) <= 1e-6


@pytest.mark.parametrize("groups", [2, 3, 4])
@pytest.mark.parametrize("magnitude", [1.0, 1000.0])
def test_export_group_mix_equals_softmax_mix(groups, magnitude):
    # S and B use 3 and 4 groups; large logits would overflow an exp without the max subtraction.
    g = torch.Generator().manual_seed(groups)
    logits = torch.randn(3, groups, 24, 7, 7, generator=g) * magnitude
    values = torch.randn(groups, 24, 7, 7, generator=g)
    reference = mix_groups_softmax(logits, values)
    mixed = mix_groups_export(logits, values)
    assert torch.isfinite(mixed).all()
    assert rel(mixed, reference) <= 1e-6


def test_set_dynamic_conv_impl_rejects_unknown():
    with pytest.raises(ValueError, match="grouped"):
        create_model("t").set_dynamic_conv_impl("fast")  # type: ignore[arg-type]


@pytest.mark.parametrize(
    ("name", "canonical"), [("t", "transxnet_t"), ("S", "transxnet_s"), ("transxnet_b", "transxnet_b")]
)
def test_variant_names(name, canonical):
    assert resolve_variant(name) == canonical


def test_unknown_variant_names_the_valid_ones():
    with pytest.raises(ValueError, match=r"transxnet_t.*transxnet_s.*transxnet_b"):
        create_model("transxnet_xl")


def test_create_model_returns_eval_mode():
    net = create_model("t")
    assert not net.training
    assert all(not m.training for m in net.modules())
