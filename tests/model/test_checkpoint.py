"""Checkpoint loading: every layout met in the wild loads strictly; bad files fail clearly."""

from __future__ import annotations

import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from model import (
    CheckpointFormatError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    create_model,
    load_checkpoint,
)


@pytest.fixture(scope="module")
def state_dict_t(make_checkpoint) -> dict[str, torch.Tensor]:
    return make_checkpoint.make_state_dict("t", seed=0)


def logits_of(net, expected_t) -> np.ndarray:
    with torch.inference_mode():
        return net(torch.from_numpy(expected_t["inputs"])).numpy()


def assert_reference(net, expected_t):
    got = logits_of(net, expected_t)
    assert np.linalg.norm(got - expected_t["logits"]) / np.linalg.norm(expected_t["logits"]) <= 1e-5


LAYOUTS = {
    "timm": lambda sd: {"epoch": 299, "arch": "transxnet_t", "state_dict": sd, "version": 2},
    "plain": lambda sd: sd,
    "module": lambda sd: {"state_dict": {"module." + k: v for k, v in sd.items()}},
    "model": lambda sd: {"model": sd, "epoch": 3},
    "ema_only": lambda sd: {"state_dict_ema": sd, "epoch": 3},
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_every_layout_loads_strictly_and_reproduces_official_logits(
    tmp_path, state_dict_t, expected_t, layout
):
    path = tmp_path / "ckpt.pth.tar"
    torch.save(LAYOUTS[layout](state_dict_t), path)
    net = create_model("t", checkpoint=path)
    assert_reference(net, expected_t)


def test_safetensors_loads(tmp_path, state_dict_t, expected_t):
    path = tmp_path / "transx-t.safetensors"
    save_file({k: v.contiguous() for k, v in state_dict_t.items()}, str(path))
    assert_reference(create_model("t", checkpoint=path), expected_t)


def test_use_ema_prefers_ema_weights(tmp_path, state_dict_t, expected_t):
    noisy = {k: v + 1.0 if v.is_floating_point() else v for k, v in state_dict_t.items()}
    path = tmp_path / "both.pth.tar"
    torch.save({"state_dict": noisy, "state_dict_ema": state_dict_t}, path)
    net = create_model("t")
    load_checkpoint(net, path, use_ema=True)
    assert_reference(net, expected_t)
    load_checkpoint(net, path)  # default: the training weights
    assert not np.allclose(logits_of(net, expected_t), expected_t["logits"], rtol=1e-3)


def test_missing_file_names_the_path(tmp_path):
    missing = tmp_path / "nope" / "transx-t.pth.tar"
    with pytest.raises(FileNotFoundError, match=str(missing)):
        create_model("t", checkpoint=missing)


def test_wrong_variant_lists_mismatches_and_names_the_checkpoints_variant(tmp_path, make_checkpoint):
    path = tmp_path / "transx-s.pth.tar"
    torch.save({"state_dict": make_checkpoint.make_state_dict("s", seed=0)}, path)
    with pytest.raises(CheckpointMismatchError) as info:
        create_model("t", checkpoint=path)
    message = str(info.value)
    assert "looks like transxnet_s" in message
    assert "patch_embed.proj.conv.weight: checkpoint (64, 3, 7, 7) vs model (48, 3, 7, 7)" in message
    assert "unexpected" in message


def test_missing_keys_fail_strict_load(tmp_path, state_dict_t):
    partial = dict(state_dict_t)
    del partial["classifier.2.weight"]
    path = tmp_path / "partial.pth"
    torch.save(partial, path)
    with pytest.raises(CheckpointMismatchError, match=r"missing: classifier\.2\.weight"):
        create_model("t", checkpoint=path)


def test_checkpoint_for_another_image_size_resizes_position_tables(tmp_path, state_dict_t):
    path = tmp_path / "t224.pth"
    torch.save(state_dict_t, path)
    net = create_model("t", image_size=256, checkpoint=path)
    assert tuple(net.relative_pos_enc[0].shape) == (1, 1, 4096, 64)


@pytest.mark.parametrize(
    "content",
    [b"", b"not a checkpoint at all", b"PK\x03\x04truncated zip"]
    + [np.random.default_rng(seed).bytes(4096) for seed in range(16)],
    ids=["empty", "text", "truncated-zip"] + [f"random-{seed}" for seed in range(16)],
)
def test_corrupt_file_is_reported_as_such(tmp_path, content):
    path = tmp_path / "bad.pth.tar"
    path.write_bytes(content)
    with pytest.raises(CheckpointFormatError, match="not a"):
        create_model("t", checkpoint=path)


def test_truncated_real_checkpoint_is_reported(tmp_path, state_dict_t):
    path = tmp_path / "cut.pth.tar"
    torch.save({"state_dict": state_dict_t}, path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(CheckpointFormatError):
        create_model("t", checkpoint=path)


def test_corrupt_safetensors_is_reported(tmp_path):
    path = tmp_path / "bad.safetensors"
    path.write_bytes(b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage")
    with pytest.raises(CheckpointFormatError, match="safetensors"):
        create_model("t", checkpoint=path)


def test_non_state_dict_pickle_is_reported(tmp_path):
    path = tmp_path / "list.pth"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointFormatError, match="not a state dict"):
        create_model("t", checkpoint=path)


class _Exploit:
    """Unpickling this would create a file: proof of code execution."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (self.marker,))


def test_pickle_that_would_run_code_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    with path.open("wb") as f:
        pickle.dump({"state_dict": {"x": _Exploit(marker)}}, f)
    torch.save({"state_dict": {"w": torch.zeros(1)}, "payload": _Exploit(marker)}, tmp_path / "evil2.pth")
    for candidate in (path, tmp_path / "evil2.pth"):
        with pytest.raises(UnsafeCheckpointError, match="refused"):
            create_model("t", checkpoint=candidate)
    assert not marker.exists()
