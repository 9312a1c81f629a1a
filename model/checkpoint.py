"""Generic checkpoint reading: file formats and layouts, nothing model-specific.

Checkpoints met in the wild are timm training files (`{'state_dict': ..., 'epoch', 'arch', ...}`,
sometimes with `state_dict_ema` or under `model`), bare state dicts, DistributedDataParallel saves
(`module.` prefixes) and `.safetensors`. Pickles are read with `weights_only=True`: a file that would
run code while loading is refused, never executed.
"""

from __future__ import annotations

import logging
import pickle
import pickletools
import zipfile
from collections.abc import Mapping
from pathlib import Path

import torch

log = logging.getLogger(__name__)

#: Containers tried in order when the file is a training checkpoint rather than a bare state dict.
STATE_DICT_KEYS = ("state_dict", "model", "state_dict_ema", "model_ema")
EMA_KEYS = ("state_dict_ema", "model_ema")


class CheckpointError(Exception):
    """Base class for a checkpoint that cannot be used."""


class CheckpointFormatError(CheckpointError):
    """The file is not a readable checkpoint (corrupt, truncated, or some other kind of file)."""


class UnsafeCheckpointError(CheckpointError):
    """The pickle holds objects beyond tensors and plain containers; it was refused, not executed."""


class CheckpointMismatchError(CheckpointError):
    """The checkpoint's keys or shapes do not match the model (usually the wrong variant)."""


def read_checkpoint(path: str | Path, *, use_ema: bool = False) -> dict[str, torch.Tensor]:
    """Read a checkpoint file and return its state dict, unwrapped and with `module.` stripped.

    `use_ema` prefers the EMA weights when the file holds both (timm's `--use-ema`); a file holding
    only EMA weights is used either way.
    """
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"checkpoint not found: {path}")
    if path.suffix == ".safetensors":
        obj: object = _read_safetensors(path)
    else:
        obj = _read_pickle(path)
    return clean_state_dict(_unwrap(obj, path, use_ema=use_ema))


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointFormatError(f"{path} is not a readable .safetensors file: {exc}") from exc


def _read_pickle(path: Path) -> object:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as exc:
        if "unsupported global" in str(exc).lower() or _pickle_calls_code(path):
            raise UnsafeCheckpointError(
                f"{path} holds pickled objects other than tensors and was refused (weights_only=True): "
                "loading it could run arbitrary code. Re-save its state dict with torch.save(model."
                "state_dict()) or convert it to .safetensors from a trusted environment."
            ) from exc
        raise CheckpointFormatError(f"{path} is not a PyTorch checkpoint: {exc}") from exc
    except MemoryError:
        raise
    except Exception as exc:  # garbage makes the unpickler raise anything (KeyError, struct.error, ...)
        raise CheckpointFormatError(
            f"{path} is not a readable PyTorch checkpoint (corrupt, truncated or another kind of file): "
            f"{type(exc).__name__}: {exc}"
        ) from exc


#: Opcodes that import or call something: harmless in a torch checkpoint only for torch's own
#: rebuild functions, which the weights-only unpickler accepts; in a refused file they mean code.
_CODE_OPCODES = frozenset({"GLOBAL", "STACK_GLOBAL", "REDUCE", "INST", "OBJ", "NEWOBJ", "NEWOBJ_EX"})


def _pickle_calls_code(path: Path) -> bool:
    """Whether a refused plain pickle imports or calls objects (scanned, never executed)."""
    if zipfile.is_zipfile(path):
        return False  # torch's zip format: the unpickler's message names the offending global itself
    try:
        with path.open("rb") as f:
            return any(op.name in _CODE_OPCODES for op, _, _ in pickletools.genops(f))
    except Exception:  # not a parseable pickle at all: a format problem, not a code one
        return False


def _unwrap(obj: object, path: Path, *, use_ema: bool) -> Mapping[str, object]:
    if not isinstance(obj, Mapping):
        raise CheckpointFormatError(f"{path} holds a {type(obj).__name__}, not a state dict")
    if obj and all(isinstance(v, torch.Tensor) for v in obj.values()):
        return obj
    keys = (*EMA_KEYS, *STATE_DICT_KEYS) if use_ema else STATE_DICT_KEYS
    for key in keys:
        inner = obj.get(key)
        if isinstance(inner, Mapping) and inner:
            if key in EMA_KEYS and not use_ema:
                log.info("%s holds only EMA weights (%r); using them", path, key)
            return inner
    raise CheckpointFormatError(
        f"{path} holds no state dict: expected tensors at the top level or under one of "
        f"{', '.join(STATE_DICT_KEYS)}; found keys {sorted(map(str, obj))[:8]}"
    )


def clean_state_dict(state_dict: Mapping[str, object]) -> dict[str, torch.Tensor]:
    """Strip DistributedDataParallel's `module.` prefix and drop non-tensor entries."""
    cleaned = {}
    for key, value in state_dict.items():
        if not isinstance(value, torch.Tensor):
            continue
        cleaned[key.removeprefix("module.")] = value
    return cleaned
