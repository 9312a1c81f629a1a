"""TransXNet in plain PyTorch: `create_model`, `load_checkpoint` and the variants' configs."""

from model.checkpoint import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from model.transxnet import (
    VARIANTS,
    TransXNet,
    TransXNetConfig,
    create_model,
    load_checkpoint,
    resolve_variant,
)

__all__ = [
    "VARIANTS",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "TransXNet",
    "TransXNetConfig",
    "UnsafeCheckpointError",
    "create_model",
    "load_checkpoint",
    "read_checkpoint",
    "resolve_variant",
]
