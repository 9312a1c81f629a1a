"""ImageNet class names and user label files."""

from __future__ import annotations

from pathlib import Path

import pytest

from export.labels import LabelFileError, imagenet_labels, load_labels, parse_labels

#: Independent copy of timm's synset list and WordNet lemmas (see the file's header line).
SYNSET_LEMMAS = Path(__file__).resolve().parents[1] / "fixtures" / "imagenet1k_synset_lemmas.tsv"

#: The classes whose first lemma is shared with another class, and the qualified names we use.
QUALIFIED = {134: "crane (bird)", 517: "crane (machine)", 638: "maillot (tights)", 639: "maillot (tank suit)"}


def _reference_rows() -> list[tuple[int, str, str]]:
    rows = []
    for line in SYNSET_LEMMAS.read_text(encoding="utf-8").splitlines():
        if line.startswith("#"):
            continue
        index, synset, lemmas = line.split("\t")
        rows.append((int(index), synset, lemmas))
    return rows


def test_imagenet_has_1000_unique_labels() -> None:
    labels = imagenet_labels()
    assert len(labels) == 1000
    assert len(set(labels)) == 1000


@pytest.mark.parametrize(
    ("index", "name"),
    [(0, "tench"), (1, "goldfish"), (207, "golden retriever"), (281, "tabby"), (999, "toilet tissue")],
)
def test_known_imagenet_indices(index: int, name: str) -> None:
    assert imagenet_labels()[index] == name


def test_imagenet_labels_are_first_lemmas_of_timms_synsets_in_order() -> None:
    rows = _reference_rows()
    assert [index for index, _, _ in rows] == list(range(1000))
    labels = imagenet_labels()
    for index, synset, lemmas in rows:
        first = lemmas.split(", ")[0]
        expected = QUALIFIED.get(index, first)
        assert labels[index] == expected, f"class {index} ({synset}, {lemmas!r})"
        assert labels[index].startswith(first)


def test_custom_label_file_round_trips(tmp_path: Path) -> None:
    names = ("cat", "dog", "rainbow trout", "crème brûlée")
    path = tmp_path / "labels.txt"
    path.write_text("\n".join(names) + "\n\n", encoding="utf-8")  # trailing blank lines are fine
    assert load_labels(path) == names
    assert load_labels(path, num_classes=4) == names


def test_whitespace_crlf_and_bom_are_tolerated() -> None:
    assert parse_labels("\ufeff cat \r\ndog\r\n") == ("cat", "dog")


def test_blank_line_in_the_middle_names_the_line() -> None:
    with pytest.raises(LabelFileError, match="line 2 is blank"):
        parse_labels("cat\n\ndog\n")


def test_duplicate_label_names_both_lines() -> None:
    with pytest.raises(LabelFileError, match=r"'dog' on line 3 repeats line 2"):
        parse_labels("cat\ndog\ndog\n")


def test_wrong_count_for_the_model_is_an_error() -> None:
    with pytest.raises(LabelFileError, match="2 labels for a model with 3 classes"):
        parse_labels("cat\ndog\n", num_classes=3)


def test_empty_file_is_an_error(tmp_path: Path) -> None:
    path = tmp_path / "empty.txt"
    path.write_text("\n\n", encoding="utf-8")
    with pytest.raises(LabelFileError, match="no labels"):
        load_labels(path)


def test_missing_label_file_names_the_path(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match=r"nothere\.txt"):
        load_labels(tmp_path / "nothere.txt")
