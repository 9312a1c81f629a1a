"""Check that the GPU machine will have every package the service and the export need at run time.

    .venv/bin/python scripts/gpu/check_wheels.py      (scripts/gpu/prepare.sh runs it)

Walks pyproject.toml's runtime dependencies (and the export's) through the installed distributions'
own requirements (extras left out: uvicorn[standard]'s parts are optional at run time) and fails,
naming the package, when one is neither on the GPU machine (scripts/gpu/device_packages.txt) nor
carried (scripts/gpu/wheels.txt). Why: a dependency added to the service later (as fastapi-offline
was) would otherwise be found missing only on the GPU, in the middle of its scarce minutes.
"""

from __future__ import annotations

import re
import sys
from importlib import metadata
from pathlib import Path

import tomllib
from packaging.requirements import Requirement

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
#: Replaced on the GPU machine by the staged onnxruntime-gpu; torch's CUDA build is already there.
STAGED_OR_PRESENT = {"onnxruntime", "onnxruntime-gpu", "torch"}
#: Marker environment of the GPU machine's python3 (KINDS.md: Python 3.12.3, x86-64 Linux), no extra.
GPU_PYTHON = {"python_version": "3.12", "python_full_version": "3.12.3", "sys_platform": "linux", "extra": ""}


def normalise(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def listed(path: Path) -> set[str]:
    names = set()
    for raw in path.read_text().splitlines():
        line = raw.split("#", 1)[0].strip()
        if line:
            names.add(normalise(re.split(r"[=<>!~\[; ]", line, maxsplit=1)[0]))
    return names


def requirement_name(requirement: str) -> str | None:
    """The distribution a requirement names, or None when its marker excludes the GPU machine's
    Python 3.12 (e.g. exceptiongroup for < 3.11) or it belongs to an extra."""
    parsed = Requirement(requirement)
    if parsed.marker is not None and not parsed.marker.evaluate(GPU_PYTHON):
        return None
    return normalise(parsed.name)


def closure(roots: set[str]) -> dict[str, str]:
    """Every distribution reachable from `roots` through installed requirements: name -> who needs it."""
    needed: dict[str, str] = {root: "pyproject.toml" for root in roots}
    todo = list(roots)
    while todo:
        name = todo.pop()
        try:
            requires = metadata.requires(name) or []
        except metadata.PackageNotFoundError:
            continue  # not installed here: reported by the caller if it is not present there
        for requirement in requires:
            dep = requirement_name(requirement)
            if dep and dep not in needed:
                needed[dep] = name
                todo.append(dep)
    return needed


def main() -> int:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    roots = {requirement_name(r) for r in project["dependencies"]}
    roots |= {requirement_name(r) for r in project.get("optional-dependencies", {}).get("export", [])}
    roots.discard(None)
    carried = listed(HERE / "wheels.txt")
    present = listed(HERE / "device_packages.txt")
    missing = {
        name: parent
        for name, parent in closure({r for r in roots if r}).items()
        if name not in carried | present | STAGED_OR_PRESENT
    }
    requirements = [*project["dependencies"], *project.get("optional-dependencies", {}).get("export", [])]
    for requirement in map(Requirement, requirements):
        name = normalise(requirement.name)
        if requirement.specifier and name in present and name not in carried | STAGED_OR_PRESENT:
            # not fatal: KINDS.md does not give most versions; the run records them (gpu_env.py)
            print(f"note: {name}{requirement.specifier} is the GPU machine's own (version unknown here)")
    if missing:
        for name, parent in sorted(missing.items()):
            print(
                f"missing on the GPU machine: {name} (needed by {parent}); add it to scripts/gpu/wheels.txt"
            )
        return 1
    print(f"every runtime requirement is on the GPU machine or carried ({len(carried)} wheels)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
