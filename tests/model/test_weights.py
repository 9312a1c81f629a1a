"""The release-weight table: the official facts, the lookups, and the consumers that must read it."""

from __future__ import annotations

import dataclasses
import re
from pathlib import Path

import pytest

from model import VARIANTS, create_model, weights
from model.weights import PRETRAINED_CFGS, PretrainedCfg, default_cfg, eval_cfg, pretrained_cfg

README = Path(__file__).resolve().parents[2] / "README.md"

#: Written out from the official repository (README table, release v1.0, `models/transxnet.py`'s
#: `_cfg(crop_pct=...)`), independently of the table under test.
OFFICIAL = {
    ("transxnet_t", 224): ("transx-t.pth.tar", 0.9, 81.6),
    ("transxnet_s", 224): ("transx-s.pth.tar", 0.9, 83.8),
    ("transxnet_b", 224): ("transx-b.pth.tar", 0.95, 84.6),
    ("transxnet_b", 384): ("transx-b-384.pth.tar", 0.95, None),
}


def test_table_holds_exactly_the_official_releases() -> None:
    got = {(c.variant, c.image_size): (c.file_name, c.crop_pct, c.top1) for c in PRETRAINED_CFGS}
    assert got == OFFICIAL
    for cfg in PRETRAINED_CFGS:
        assert cfg.url == f"https://github.com/LMMMEng/TransXNet/releases/download/v1.0/{cfg.file_name}"
        assert (cfg.interpolation, cfg.num_classes) == ("bicubic", 1000)
        assert cfg.mean == (0.485, 0.456, 0.406) and cfg.std == (0.229, 0.224, 0.225)  # timm's ImageNet


def test_every_variant_has_a_default_release_at_224() -> None:
    assert {c.variant for c in PRETRAINED_CFGS} == set(VARIANTS)
    for variant in VARIANTS:
        assert default_cfg(variant).image_size == 224


def test_tags_name_the_resolution() -> None:
    assert [c.tag for c in PRETRAINED_CFGS] == [
        "transxnet_t.in1k",
        "transxnet_s.in1k",
        "transxnet_b.in1k",
        "transxnet_b.in1k_384",
    ]


def test_pretrained_cfg_is_exact_and_lists_the_releases_otherwise() -> None:
    assert pretrained_cfg("transxnet_b", 384).file_name == "transx-b-384.pth.tar"
    with pytest.raises(ValueError, match=r"transxnet_t at image size 384.*transxnet_b at 384") as info:
        pretrained_cfg("transxnet_t", 384)
    assert "random init" in str(info.value)


def test_eval_cfg_falls_back_to_the_variants_transform() -> None:
    assert eval_cfg("transxnet_b", 384) is pretrained_cfg("transxnet_b", 384)
    assert eval_cfg("transxnet_t", 288) is pretrained_cfg("transxnet_t", 224)
    with pytest.raises(ValueError, match="transxnet_custom"):
        eval_cfg("transxnet_custom", 224)


def test_create_model_takes_its_class_count_from_the_table(monkeypatch: pytest.MonkeyPatch) -> None:
    assert create_model("t").num_classes == 1000
    table = tuple(dataclasses.replace(c, num_classes=10) for c in PRETRAINED_CFGS)
    monkeypatch.setattr(weights, "PRETRAINED_CFGS", table)
    net = create_model("t")
    assert net.num_classes == 10 and net.classifier[2].out_channels == 10
    assert create_model("t", num_classes=7).num_classes == 7  # an explicit count still wins


def test_readme_model_table_agrees_with_the_weight_table() -> None:
    """The README's Model table is for people; it must not drift from the table code reads."""
    lines = README.read_text(encoding="utf-8").splitlines()
    rows = [line for line in lines if line.startswith("| `transxnet")]
    for cfg in PRETRAINED_CFGS:
        row = next((r for r in rows if f"[{cfg.file_name}]({cfg.url})" in r), None)
        assert row is not None, cfg.file_name
        cells = [c.strip() for c in row.strip("|").split("|")]
        assert str(cfg.crop_pct) in cells, (cfg.tag, cells)
        if cfg.top1 is not None:
            assert str(cfg.top1) in cells, (cfg.tag, cells)
        assert re.match(rf"`{cfg.variant}`", cells[0])


def test_rows_are_frozen() -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        PRETRAINED_CFGS[0].crop_pct = 0.5  # type: ignore[misc]
    assert isinstance(PRETRAINED_CFGS[0], PretrainedCfg)
