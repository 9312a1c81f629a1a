"""Compact JSON encoding that never holds the GIL for long.

`json.dumps` is C code that keeps the GIL for the whole call: a 2-million-value response took about
a second, and moving it to a worker thread did not help, because the event loop's thread cannot run
Python while the encoder holds the lock. Here long lists (tensor data) are encoded in slices of
`CHUNK_VALUES`, each one C call of a few tens of milliseconds; between them the worker thread runs
Python bytecode, so the interpreter hands the GIL to the event loop at its switch interval. The bytes
are exactly `json.dumps(value, separators=(",", ":"), ensure_ascii=False, allow_nan=False)`.
"""

from __future__ import annotations

import json
from typing import Any

#: Values per `json.dumps` call: about 20 ms of floats on these machines.
CHUNK_VALUES = 32_768

_compact = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode


def dumps(value: Any) -> bytes:
    """`value` as compact UTF-8 JSON; `ValueError` for NaN or infinity (JSON has neither)."""
    parts: list[str] = []
    _encode(value, parts)
    return "".join(parts).encode()


def _encode(value: Any, parts: list[str]) -> None:
    if isinstance(value, dict):
        parts.append("{")
        for index, (key, item) in enumerate(value.items()):
            if index:
                parts.append(",")
            parts.append(_compact(str(key)))
            parts.append(":")
            _encode(item, parts)
        parts.append("}")
    elif isinstance(value, list) and len(value) > CHUNK_VALUES:
        parts.append("[")
        for start in range(0, len(value), CHUNK_VALUES):
            if start:
                parts.append(",")
            parts.append(_compact(value[start : start + CHUNK_VALUES])[1:-1])
        parts.append("]")
    elif isinstance(value, list) and any(isinstance(item, dict) for item in value):
        # Records (one per image or output) hold the long lists: encode them one by one.
        parts.append("[")
        for index, item in enumerate(value):
            if index:
                parts.append(",")
            _encode(item, parts)
        parts.append("]")
    else:
        parts.append(_compact(value))
