"""A small Dockerfile reader for the tests: stages, instructions, ARG defaults, ENV, exec-form CMDs.

Why not a library: the tests need exactly what Docker's own parser does with line continuations,
comment lines inside a continued instruction, `FROM ... AS name` and JSON exec form, and no more.
"""

from __future__ import annotations

import json
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path

_FROM = re.compile(r"^(?:--platform=\S+\s+)?(?P<image>\S+)(?:\s+AS\s+(?P<name>\S+))?$", re.IGNORECASE)


@dataclass(frozen=True)
class Instruction:
    """One instruction with its continuation lines joined (as Docker sees it)."""

    keyword: str
    args: str
    line: int
    #: The comment lines directly above it (hadolint's ignore pragmas live there).
    comments: tuple[str, ...] = ()

    def exec_form(self) -> list[str]:
        """The JSON array of an exec-form CMD/ENTRYPOINT/HEALTHCHECK ... CMD; ValueError if shell form."""
        text = self.args.strip()
        if self.keyword == "HEALTHCHECK":
            text = re.sub(r"^(?:--\S+\s+)*", "", text)
            if not text.upper().startswith("CMD "):
                raise ValueError(f"line {self.line}: HEALTHCHECK without CMD: {self.args}")
            text = text[4:]
        value = json.loads(text)
        if not (isinstance(value, list) and all(isinstance(v, str) for v in value)):
            raise ValueError(f"line {self.line}: {self.keyword} is not in exec form: {self.args}")
        return value

    def run_script(self) -> str:
        """A RUN's shell text without its leading `--mount=...`/`--network=...` flags."""
        return re.sub(r"^(?:--\S+\s+)+", "", self.args.strip())


@dataclass
class Stage:
    """One `FROM` and the instructions up to the next one."""

    image: str
    name: str | None
    line: int
    instructions: list[Instruction] = field(default_factory=list)

    def find(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def arg_defaults(self) -> dict[str, str]:
        defaults = {}
        for inst in self.find("ARG"):
            name, _, default = inst.args.partition("=")
            defaults[name.strip()] = default.strip()
        return defaults

    def env(self) -> dict[str, str]:
        """ENV values in `KEY=value` form, later ones winning, as the image ends up with them."""
        values: dict[str, str] = {}
        for inst in self.find("ENV"):
            for pair in shlex.split(inst.args):
                key, sep, value = pair.partition("=")
                if not sep:
                    raise ValueError(f"line {inst.line}: use ENV KEY=value, not the legacy form")
                values[key] = value
        return values


def parse_dockerfile(path: Path) -> list[Stage]:
    """Stages in file order; instructions before the first FROM (global ARGs) are not kept."""
    stages: list[Stage] = []
    comments: list[str] = []
    pending: list[str] = []
    start = 0
    for number, raw in enumerate(path.read_text().splitlines(), start=1):
        stripped = raw.strip()
        if stripped.startswith("#"):
            # Comment lines inside a continued instruction are dropped by Docker, too.
            if not pending:
                comments.append(stripped)
            continue
        if not stripped:
            if not pending:
                comments = []
            continue
        if not pending:
            start = number
        if stripped.endswith("\\"):
            pending.append(stripped[:-1].strip())
            continue
        pending.append(stripped)
        text = " ".join(part for part in pending if part)
        pending = []
        keyword, _, args = text.partition(" ")
        inst = Instruction(keyword.upper(), args.strip(), start, tuple(comments))
        comments = []
        if inst.keyword == "FROM":
            match = _FROM.match(inst.args)
            if match is None:
                raise ValueError(f"line {start}: cannot read FROM {inst.args!r}")
            stages.append(Stage(match["image"], match["name"], start))
        elif stages:
            stages[-1].instructions.append(inst)
    return stages


def stage_named(stages: list[Stage], name: str) -> Stage:
    for stage in stages:
        if stage.name == name:
            return stage
    raise KeyError(f"no stage named {name!r}; stages: {[s.name for s in stages]}")
