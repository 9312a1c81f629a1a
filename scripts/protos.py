"""Compile the gRPC protocol's .proto files (app/v2/grpc/proto/) into the Python modules committed
beside them, with grpcio-tools (the dev extra pins its version, so the output is reproducible):

    .venv/bin/python scripts/protos.py             # rewrites app/v2/grpc/proto/*_pb2*.py
    .venv/bin/python scripts/protos.py --out DIR   # writes them under DIR instead (the tests compare)

The modules are committed so that the runtime image needs no compiler (grpcio-tools is dev-only).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PROTO_DIR = Path("app/v2/grpc/proto")


def proto_files() -> list[Path]:
    """The .proto files, relative to the repository root (their import paths)."""
    return sorted(path.relative_to(ROOT) for path in (ROOT / PROTO_DIR).glob("*.proto"))


def generate(out: Path) -> list[Path]:
    """Write the `_pb2.py` and `_pb2_grpc.py` modules under `out` (same layout as the repository);
    returns the files written. Raises `RuntimeError` with protoc's message if compilation fails."""
    from grpc_tools import protoc

    out.mkdir(parents=True, exist_ok=True)
    args = ["protoc", f"-I{ROOT}", f"--python_out={out}", f"--grpc_python_out={out}"]
    if protoc.main([*args, *(str(ROOT / path) for path in proto_files())]) != 0:
        raise RuntimeError("protoc failed on app/v2/grpc/proto/*.proto (its message is above)")
    return sorted((out / PROTO_DIR).glob("*_pb2*.py"))


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--out", type=Path, default=ROOT, help="where to write (default: the repository)")
    args = parser.parse_args()
    try:
        written = generate(args.out.resolve())
    except RuntimeError as exc:
        sys.exit(f"scripts/protos.py: {exc}")
    for path in written:
        print(path)


if __name__ == "__main__":
    main()
