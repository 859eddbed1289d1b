"""The whole corpus archived (once per store mode): retrieval on questions with known answers,
exact reconstruction, chapters in the listing."""

from __future__ import annotations

import pytest

from app.archive.service import Archive
from app.schemas.archive import ArchiveFilters

from .conftest import ALICE, SHERLOCK

#: (question, file, chapter that holds the answer).
KNOWN_ANSWERS = [
    ("the letter signed K.K.K.", SHERLOCK.name, "V. THE FIVE ORANGE PIPS"),
    ("a goose with a precious blue stone in its crop", SHERLOCK.name,
     "VII. THE ADVENTURE OF THE BLUE CARBUNCLE"),
    ("a man paid to copy out the Encyclopaedia Britannica", SHERLOCK.name,
     "II. THE RED-HEADED LEAGUE"),
    ("a swamp adder climbs down the bell-pull through the ventilator", SHERLOCK.name,
     "VIII. THE ADVENTURE OF THE SPECKLED BAND"),
    ("tea party with the March Hare, the Hatter and a sleeping Dormouse", ALICE.name,
     "CHAPTER VII. A Mad Tea-Party"),
    ("the Knave of Hearts is tried for stealing the tarts", ALICE.name,
     "CHAPTER XI. Who Stole the Tarts?"),
]


@pytest.mark.parametrize(("question", "file", "chapter"), KNOWN_ANSWERS,
                         ids=[q[:24] for q, _, _ in KNOWN_ANSWERS])
def test_known_answers_are_retrieved(corpus_archive: Archive, question: str, file: str,
                                     chapter: str) -> None:
    passages = corpus_archive.search(question, 3)
    assert (passages[0].file, passages[0].chapter) == (file, chapter), [
        (p.chapter, p.score) for p in passages]
    assert passages[0].score > passages[-1].score or len(passages) == 1 or (
        passages[0].score == passages[-1].score)


def test_the_kkk_passage_names_the_letter(corpus_archive: Archive) -> None:
    passages = corpus_archive.search("a letter signed K.K.K.", 5)
    pips = [p for p in passages if p.chapter == "V. THE FIVE ORANGE PIPS"]
    assert pips and any("K. K. K." in p.text for p in pips)


def test_filters_narrow_the_corpus(corpus_archive: Archive) -> None:
    in_alice = corpus_archive.search("a detective examines a letter", 5,
                                     ArchiveFilters(file=ALICE.name))
    assert len(in_alice) == 5 and {p.file for p in in_alice} == {ALICE.name}
    pips = corpus_archive.search("a letter", 5, ArchiveFilters(chapter="The Five Orange Pips"))
    assert {p.chapter for p in pips} == {"V. THE FIVE ORANGE PIPS"}


@pytest.mark.parametrize("path", [ALICE, SHERLOCK], ids=["alice", "sherlock"])
def test_files_are_rebuilt_exactly(corpus_archive: Archive, path) -> None:
    text = corpus_archive.file_text(path.name)
    assert text.text == path.read_text(encoding="utf-8")


def test_listing_has_both_works_and_their_chapters(corpus_archive: Archive) -> None:
    files = {f.file: f for f in corpus_archive.files().files}
    assert set(files) == {ALICE.name, SHERLOCK.name}
    assert len(files[ALICE.name].chapters) == len(files[SHERLOCK.name].chapters) == 12
    assert files[SHERLOCK.name].title == "The Adventures of Sherlock Holmes"
    stats = corpus_archive.stats()
    assert stats.chunks == sum(f.chunks for f in files.values()) > 1000
