"""The documentation's client examples, run as pasted against a real service.

Every ```bash line starting with `curl` and every ```python block that talks to localhost:8000 (HTTP)
or localhost:8001 (gRPC) in the README and docs/ is run against `python -m app` serving the exported
T (the reference checkpoint), from a directory that holds what the examples name: `tests/` (the
sample photos) and a `cat.jpg` and `dog.png`. The only edits are the addresses (free ports instead of
8000 and 8001) and, for curl, `-S -f`, so an HTTP error is a curl error on stderr instead of being
printed like an answer.

The perf_analyzer lines too: the `python -m tests.support.perf_analyzer ...` lines that set it up and
write its data files run first, as pasted (with this venv's python); each `perf_analyzer` line then
runs with short measurement windows appended (`QUICK`), since its default windows are seconds each.
"""

from __future__ import annotations

import os
import re
import shlex
import shutil
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from tests.support import perf_analyzer
from tests.support.processes import ServiceProcess, free_port, service_process

ROOT = Path(__file__).resolve().parents[2]
DOCUMENTS = ("README.md", "docs/service.md", "docs/v2.md", "docs/deploy.md")
ADDRESS = "localhost:8000"
GRPC_ADDRESS = "localhost:8001"
PERF_TOOL = "python -m tests.support.perf_analyzer"
#: Appended to each documented perf_analyzer line: windows of a few requests instead of seconds.
QUICK = "--measurement-mode count_windows --measurement-request-count 5 --stability-percentage 100"
PHOTOS = ROOT / "tests" / "fixtures" / "preprocess" / "photos"

pytestmark = pytest.mark.slow


@dataclass(frozen=True)
class Example:
    document: str
    line: int  # 1-based, where the command or block starts
    #: "bash" (one curl command), "python" (one whole block), "perf" (one perf_analyzer command) or
    #: "perf-setup" (one `python -m tests.support.perf_analyzer` command, run before the "perf" ones)
    language: str
    code: str

    @property
    def id(self) -> str:
        return f"{self.document}:{self.line}"


def _blocks(text: str) -> Iterator[tuple[int, str, list[str]]]:
    """(first code line number, language, lines) of each fenced code block."""
    lines = text.splitlines()
    index = 0
    while index < len(lines):
        fence = re.match(r"^```(\w+)\s*$", lines[index])
        index += 1
        if not fence:
            continue
        start, body = index, []
        while index < len(lines) and lines[index].rstrip() != "```":
            body.append(lines[index])
            index += 1
        index += 1
        yield start + 1, fence.group(1), body


def collect_examples() -> list[Example]:
    examples = []
    for document in DOCUMENTS:
        for start, language, body in _blocks((ROOT / document).read_text()):
            if language == "python" and any(ADDRESS in line or GRPC_ADDRESS in line for line in body):
                examples.append(Example(document, start, "python", "\n".join(body)))
            elif language == "bash":
                offset = 0
                while offset < len(body):
                    command, first = body[offset], offset
                    while command.endswith("\\") and offset + 1 < len(body):
                        offset += 1
                        command = command[:-1] + " " + body[offset].strip()
                    offset += 1
                    if command.startswith("curl ") and ADDRESS in command:
                        examples.append(Example(document, start + first, "bash", command))
                    elif command.startswith("perf_analyzer "):
                        examples.append(Example(document, start + first, "perf", command))
                    elif PERF_TOOL in command:
                        examples.append(Example(document, start + first, "perf-setup", command))
    return examples


EXAMPLES = collect_examples()
CLIENT_EXAMPLES = [e for e in EXAMPLES if e.language in ("bash", "python")]
PERF_EXAMPLES = [e for e in EXAMPLES if e.language == "perf"]


def test_the_documents_have_the_examples_this_test_runs() -> None:
    """A guard against this test silently running nothing after a docs reshuffle."""
    kinds = {(e.document, e.language) for e in EXAMPLES}
    assert ("README.md", "bash") in kinds and ("README.md", "python") in kinds
    assert ("docs/service.md", "bash") in kinds and ("docs/service.md", "python") in kinds
    assert ("docs/v2.md", "python") in kinds
    assert ("docs/v2.md", "perf") in kinds and ("docs/v2.md", "perf-setup") in kinds
    grpc_examples = [e for e in EXAMPLES if e.language == "python" and GRPC_ADDRESS in e.code]
    assert {e.document for e in grpc_examples} >= {"README.md", "docs/v2.md"}
    assert {" -i grpc" in e.code for e in PERF_EXAMPLES} == {True, False}  # both endpoints
    assert len(EXAMPLES) >= 20, [e.id for e in EXAMPLES]


@dataclass(frozen=True)
class Served:
    service: ServiceProcess
    grpc_address: str

    @property
    def address(self) -> str:
        return self.service.base.removeprefix("http://")

    def addressed(self, code: str) -> str:
        """`code` with the documented addresses replaced by this server's."""
        return code.replace(ADDRESS, self.address).replace(GRPC_ADDRESS, self.grpc_address)


@pytest.fixture(scope="module")
def served_t(exported_t_path: Path) -> Iterator[Served]:
    grpc_port = free_port()
    with service_process(exported_t_path, grpc_port=str(grpc_port)) as service:
        yield Served(service, f"127.0.0.1:{grpc_port}")


@pytest.fixture(scope="module")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the examples expect next to them: the repository's tests/ and a cat.jpg and dog.png."""
    path = tmp_path_factory.mktemp("docs-examples")
    (path / "tests").symlink_to(ROOT / "tests", target_is_directory=True)
    with Image.open(PHOTOS / "chelsea.png") as cat:
        cat.convert("RGB").save(path / "cat.jpg", quality=90)
    shutil.copy(PHOTOS / "coffee.png", path / "dog.png")
    return path


def _printed_claims(code: str) -> list[str]:
    """Outputs an example states exactly: `print(...)  # (2, 448) ...` (not `# e.g. ...`)."""
    claims = []
    for line in code.splitlines():
        match = re.match(r"^\s*print\(.*\)\s+#\s*(.+)$", line)
        if match and not match.group(1).startswith("e.g."):
            claims.append(match.group(1).strip())
    return claims


def _run(args: list[str], cwd: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, cwd=cwd, capture_output=True, text=True, timeout=120, check=False)


@pytest.mark.parametrize("example", CLIENT_EXAMPLES, ids=[e.id for e in CLIENT_EXAMPLES])
def test_example_runs_as_documented(example: Example, served_t: Served, workdir: Path) -> None:
    code = served_t.addressed(example.code)
    if example.language == "python":
        done = _run([sys.executable, "-c", code], workdir)
        assert done.returncode == 0, f"{example.id} failed:\n{done.stderr[-3000:]}"
        for claim in _printed_claims(example.code):
            assert claim in done.stdout, f"{example.id} says it prints {claim!r}; it printed {done.stdout!r}"
        return

    if shutil.which("curl") is None:
        pytest.skip("curl is not installed")
    code = code.replace("curl -s ", "curl -sSf ", 1)
    outputs = re.findall(r"-o (\S+)", code)
    for name in outputs:
        (workdir / name).unlink(missing_ok=True)
    done = _run(["bash", "-c", code], workdir)
    # `| head -c N` hangs up on curl (error 23, writing); any other curl error is a failure.
    errors = [line for line in done.stderr.splitlines() if line.startswith("curl:") and "(23)" not in line]
    assert not errors, f"{example.id}: {errors}\n{done.stdout[:2000]}"
    assert done.stdout.strip() or outputs, f"{example.id} printed nothing"
    assert '{"error"' not in done.stdout, f"{example.id}: {done.stdout[:2000]}"
    for name in outputs:
        with np.load(workdir / name) as arrays:
            assert "pooled" in arrays.files and arrays["pooled"].shape[1] == 448, (example.id, arrays.files)


def _with_this_python(command: str) -> str:
    return command.replace(PERF_TOOL, f"{shlex.quote(sys.executable)} -m tests.support.perf_analyzer")


@pytest.fixture(scope="module")
def perf_env(workdir: Path) -> dict[str, str]:
    """The documented set-up lines run as pasted (the `eval` one must put perf_analyzer on PATH);
    the environment they give."""
    analyzer = perf_analyzer.install()
    missing = analyzer.missing_libraries()
    if missing:
        pytest.skip(f"perf_analyzer needs {missing}: install Debian's libb64-0d (scripts/_system.sh)")
    for example in (e for e in EXAMPLES if e.language == "perf-setup"):
        command = _with_this_python(example.code)
        if command.startswith("eval "):
            command += " && command -v perf_analyzer"
        done = _run(["bash", "-c", command], workdir)
        assert done.returncode == 0, f"{example.id} failed:\n{done.stderr[-3000:]}"
        if command.startswith("eval "):
            assert done.stdout.strip() == str(analyzer.binary), example.id
    env = analyzer.env()
    env["PATH"] = f"{analyzer.binary.parent}{os.pathsep}{env['PATH']}"
    return env


@pytest.mark.parametrize("example", PERF_EXAMPLES, ids=[e.id for e in PERF_EXAMPLES])
def test_perf_analyzer_line_runs_as_documented(
    example: Example, served_t: Served, workdir: Path, perf_env: dict[str, str]
) -> None:
    command = f"{served_t.addressed(example.code)} {QUICK}"
    done = subprocess.run(
        ["bash", "-c", command],
        cwd=workdir,
        env=perf_env,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    output = done.stdout + done.stderr
    assert done.returncode == 0, f"{example.id}:\n{output[-3000:]}"
    assert "error" not in output.lower(), f"{example.id}:\n{output[-3000:]}"
    rates = perf_analyzer.throughputs(output)
    assert rates and all(rate > 0 for rate in rates), f"{example.id}:\n{output[-3000:]}"
