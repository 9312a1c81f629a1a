"""Class names that travel with the exported model (ONNX metadata, Triton's `labels.txt`).

`imagenet_classes.txt` holds the ImageNet-1k names in class-index order, one per line. Source: the
timm 1.0.31 wheel on PyPI, `timm/data/_info/imagenet_synsets.txt` (the 1000 synsets in index order)
joined with `imagenet_synset_to_lemma.txt`, keeping each synset's first lemma ("tench, Tinca tinca"
-> "tench"), which is also what torchvision's `_IMAGENET_CATEGORIES` lists. WordNet gives two pairs
of classes the same first lemma; as duplicate names make a classification answer ambiguous, they
carry a qualifier from their WordNet definitions: 134 "crane (bird)", 517 "crane (machine)",
638 "maillot (tights)", 639 "maillot (tank suit)".
"""

from __future__ import annotations

import functools
from importlib import resources
from pathlib import Path

IMAGENET_NUM_CLASSES = 1000
_IMAGENET_FILE = "imagenet_classes.txt"


class LabelFileError(ValueError):
    """A label file that cannot name the model's classes; the message points at the offending line."""


def parse_labels(text: str, *, source: str = "labels", num_classes: int | None = None) -> tuple[str, ...]:
    """One label per line, in class-index order.

    Surrounding whitespace and trailing blank lines are dropped; a blank line before the last label
    is an error (it would shift every later index), and so is a repeated label (answers would be
    ambiguous). `num_classes` checks the count against the model's head.
    """
    lines = [line.strip() for line in text.removeprefix("\ufeff").splitlines()]
    while lines and not lines[-1]:
        lines.pop()
    if not lines:
        raise LabelFileError(f"{source}: no labels (expected one class name per line)")
    first_seen: dict[str, int] = {}
    for number, label in enumerate(lines, start=1):
        if not label:
            raise LabelFileError(
                f"{source}: line {number} is blank; every line before the last label must name a class, "
                "as the line number is the class index"
            )
        if label in first_seen:
            raise LabelFileError(
                f"{source}: label {label!r} on line {number} repeats line {first_seen[label]}; "
                "make class names unique, e.g. with a qualifier in parentheses"
            )
        first_seen[label] = number
    if num_classes is not None and len(lines) != num_classes:
        raise LabelFileError(f"{source}: {len(lines)} labels for a model with {num_classes} classes")
    return tuple(lines)


def load_labels(path: str | Path, *, num_classes: int | None = None) -> tuple[str, ...]:
    """A user's label file (UTF-8, one class name per line); see `parse_labels` for the rules."""
    file = Path(path).expanduser()
    if not file.is_file():
        raise FileNotFoundError(f"label file not found: {file}")
    return parse_labels(file.read_text(encoding="utf-8"), source=str(file), num_classes=num_classes)


@functools.cache
def imagenet_labels() -> tuple[str, ...]:
    """The 1000 ImageNet-1k class names in index order (see the module docstring for their origin)."""
    text = resources.files(__package__).joinpath(_IMAGENET_FILE).read_text(encoding="utf-8")
    return parse_labels(text, source=_IMAGENET_FILE, num_classes=IMAGENET_NUM_CLASSES)
