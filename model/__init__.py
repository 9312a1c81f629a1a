"""TransXNet in plain PyTorch: `create_model`, `load_checkpoint`, the variants' configs and the table
of release weights (`model.weights`)."""

from model.checkpoint import (
    CheckpointError,
    CheckpointFormatError,
    CheckpointMismatchError,
    UnsafeCheckpointError,
    read_checkpoint,
)
from model.reparam import ReparameterizeError
from model.transxnet import (
    VARIANTS,
    TransXNet,
    TransXNetConfig,
    TransXNetOutputs,
    create_model,
    load_checkpoint,
    resolve_variant,
)
from model.weights import PRETRAINED_CFGS, PretrainedCfg, eval_cfg, pretrained_cfg

__all__ = [
    "PRETRAINED_CFGS",
    "VARIANTS",
    "CheckpointError",
    "CheckpointFormatError",
    "CheckpointMismatchError",
    "PretrainedCfg",
    "ReparameterizeError",
    "TransXNet",
    "TransXNetConfig",
    "TransXNetOutputs",
    "UnsafeCheckpointError",
    "create_model",
    "eval_cfg",
    "load_checkpoint",
    "pretrained_cfg",
    "read_checkpoint",
    "resolve_variant",
]
