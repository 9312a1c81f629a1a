"""What one image costs to preprocess, measured in a fresh interpreter: CPU seconds and the peak RSS
above the process's footprint just before the call (numpy, Pillow's C allocations, libwebp and
libtiff buffers included, which tracemalloc cannot see).

The tests use it for memory bounds (never for time: CPU seconds are reported, not asserted). Run as a
script it prints the table of the hostile corpus (tests/support/hostile.py), optionally against
another checkout of the code to compare before and after:

    .venv/bin/python -m tests.app.imaging.footprint [--root /path/to/other/checkout] [names...]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]

# Runs in the child: builds the preprocessor, warms Pillow's plugin registry up on a tiny PNG, then
# measures one call. The kernel's high-water mark of the RSS (VmHWM) is reset to the current RSS just
# before the call (clear_refs 5), so the peak is the call's own; ru_maxrss would not do, it survives
# exec and carries the parent's peak.
_CHILD = r"""
import json, sys, time
from PIL import Image
from app.errors import ServiceError
from app.imaging import ImagePreprocessor
from tests.support.metadata import make_metadata

path, max_bytes, max_pixels = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pre = ImagePreprocessor(make_metadata(), max_image_bytes=max_bytes, max_image_pixels=max_pixels)
import io
warm = io.BytesIO(); Image.new("RGB", (8, 8)).save(warm, "PNG"); pre(warm.getvalue())
Image.init()
data = open(path, "rb").read()

def status(field: str) -> int:
    with open("/proc/self/status") as lines:
        return next(int(line.split()[1]) * 1024 for line in lines if line.startswith(field + ":"))

with open("/proc/self/clear_refs", "w") as clear:
    clear.write("5")
before = status("VmRSS")
cpu, wall = time.process_time(), time.perf_counter()
try:
    pre(data)
    outcome = "ok"
except ServiceError as exc:
    outcome = f"{exc.code} {type(exc).__name__}: {exc.message}"
cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
peak = status("VmHWM")
print(json.dumps({"outcome": outcome, "cpu_s": cpu, "wall_s": wall, "peak_rss_delta": peak - before}))
"""


@dataclass(frozen=True)
class Footprint:
    outcome: str  # "ok" or "<error code> <error class>: <message>"
    cpu_s: float
    wall_s: float
    peak_rss_delta: int  # bytes above the RSS just before the call

    @property
    def code(self) -> str | None:
        """The error code, None when the image was served."""
        return None if self.outcome == "ok" else self.outcome.split()[0]


def measure(
    data: bytes,
    *,
    max_image_bytes: int = 20_000_000,
    max_image_pixels: int = 40_000_000,
    root: Path = ROOT,
    timeout_s: float = 300,
) -> Footprint:
    """Preprocess `data` once with the code under `root`, in a child interpreter of its own."""
    with tempfile.NamedTemporaryFile(suffix=".img") as handle:
        handle.write(data)
        handle.flush()
        result = subprocess.run(
            [sys.executable, "-c", _CHILD, handle.name, str(max_image_bytes), str(max_image_pixels)],
            cwd=root,
            env={"PYTHONPATH": str(root), "PATH": "/usr/bin:/bin", "OMP_NUM_THREADS": "1"},
            capture_output=True,
            text=True,
            timeout=timeout_s,
            check=False,
        )
    if result.returncode != 0:
        raise RuntimeError(f"measuring child failed ({result.returncode}): {result.stderr[-2000:]}")
    return Footprint(**json.loads(result.stdout.strip().splitlines()[-1]))


def main(argv: list[str] | None = None) -> None:
    from tests.support.hostile import hostile_cases

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("names", nargs="*", help="case names (default: all)")
    parser.add_argument("--root", type=Path, default=ROOT, help="checkout whose app/ is measured")
    parser.add_argument("--timeout", type=float, default=300)
    args = parser.parse_args(argv)
    cases = hostile_cases()
    for name in args.names or list(cases):
        data = cases[name].build()
        try:
            footprint = measure(data, root=args.root, timeout_s=args.timeout)
            row = (
                f"{footprint.cpu_s:8.2f} s cpu {footprint.wall_s:8.2f} s wall "
                f"{footprint.peak_rss_delta / 2**20:8.0f} MiB  {footprint.outcome[:110]}"
            )
        except subprocess.TimeoutExpired:
            row = f"timed out after {args.timeout:.0f} s"
        print(f"{name:40s} {row}", flush=True)


if __name__ == "__main__":
    main()
