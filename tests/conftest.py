"""Session-wide fixtures shared by the model, export and service tests.

Expensive artefacts (the reference checkpoint, an exported TransXNet-T) are built once per test
session here and shared, so the suite stays fast enough to run often.
"""

from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pytest

FIXTURES = Path(__file__).parent / "fixtures"
REFERENCE = FIXTURES / "reference"


def _make_checkpoint_module():
    sys.path.insert(0, str(REFERENCE))
    try:
        import make_checkpoint
    finally:
        sys.path.remove(str(REFERENCE))
    return make_checkpoint


@pytest.fixture(scope="session")
def make_checkpoint():
    """The reference script that fills the official keys with seeded values (official file layout)."""
    return _make_checkpoint_module()


@pytest.fixture(scope="session")
def expected_t() -> dict[str, np.ndarray]:
    """What the official implementation outputs for `make_state_dict('t', seed=0)`."""
    with np.load(REFERENCE / "expected_t.npz") as data:
        return {k: data[k] for k in data.files}


@pytest.fixture(scope="session")
def reference_checkpoint_t(tmp_path_factory, make_checkpoint) -> Path:
    """The seeded T checkpoint saved as the release files are: {'state_dict', 'epoch', 'arch', 'version'}."""
    import torch

    path = tmp_path_factory.mktemp("ckpt") / "transx-t-reference.pth.tar"
    sd = make_checkpoint.make_state_dict("t", seed=0)
    torch.save({"epoch": 299, "arch": "transxnet_t", "state_dict": sd, "version": 2}, path)
    return path


@pytest.fixture(scope="session")
def exported_t(tmp_path_factory, reference_checkpoint_t):
    """TransXNet-T with the reference checkpoint, exported once through the real pipeline (with its
    verification, including the official outputs); returns the `ExportResult`."""
    from export.pipeline import export_model

    out = tmp_path_factory.mktemp("onnx") / "transxnet_t.onnx"
    return export_model(
        "t",
        checkpoint=str(reference_checkpoint_t),
        output=out,
        expected=REFERENCE / "expected_t.npz",
    )


@pytest.fixture(scope="session")
def exported_t_path(exported_t) -> Path:
    return exported_t.path
