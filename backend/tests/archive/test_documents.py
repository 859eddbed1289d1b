"""Parsing: formats, titles, chapter detection, the Gutenberg header and licence, bad input."""

from __future__ import annotations

import io

import pytest

from app.archive.documents import chapter_key, parse_document, text_chapters
from app.errors import InvalidDocument, UnsupportedDocument

from .conftest import ALICE, SHERLOCK

GUTENBERG = """The Project Gutenberg eBook of A Small Tale

This eBook is for the use of anyone anywhere in the United States...

Title: A Small Tale

Author: Nobody

*** START OF THE PROJECT GUTENBERG EBOOK A SMALL TALE ***




CHAPTER 1. The Door

The door was green.

CHAPTER 2. The Key

The key was gold.



*** END OF THE PROJECT GUTENBERG EBOOK A SMALL TALE ***

Updated editions will replace the previous one... the Project Gutenberg License.
"""


def test_alice_has_its_twelve_chapters_with_titles() -> None:
    document = parse_document(ALICE.name, ALICE.read_bytes())
    titles = [m.title for m in document.chapters]
    assert len(titles) == 12
    assert titles[0] == "CHAPTER I. Down the Rabbit-Hole"
    assert titles[6] == "CHAPTER VII. A Mad Tea-Party"
    # Chapter XII's title stands on its own line below the heading.
    assert titles[11] == "CHAPTER XII. Alice's Evidence"
    assert document.title == "Alice's Adventures in Wonderland"
    assert document.text == ALICE.read_text(encoding="utf-8")
    for mark in document.chapters:
        assert document.text[mark.start:].startswith("CHAPTER")


def test_sherlock_has_its_twelve_stories_not_the_contents_or_part_numbers() -> None:
    document = parse_document(SHERLOCK.name, SHERLOCK.read_bytes())
    titles = [m.title for m in document.chapters]
    assert len(titles) == 12, titles
    assert titles[0] == "I. A SCANDAL IN BOHEMIA"
    assert titles[4] == "V. THE FIVE ORANGE PIPS"
    assert titles[11] == "XII. THE ADVENTURE OF THE COPPER BEECHES"
    assert document.title == "The Adventures of Sherlock Holmes"
    # The first story starts after the table of contents, which stays front matter.
    assert "Contents" in document.text[:document.chapters[0].start]


def test_gutenberg_header_and_licence_are_left_out() -> None:
    document = parse_document("tale.txt", GUTENBERG.encode())
    assert document.title == "A Small Tale"
    assert document.text.startswith("CHAPTER 1. The Door")
    assert document.text.endswith("The key was gold.")
    assert "Gutenberg" not in document.text and "License" not in document.text
    assert [m.title for m in document.chapters] == ["CHAPTER 1. The Door", "CHAPTER 2. The Key"]


@pytest.mark.parametrize("heading", ["Chapter 3: The Storm", "CHAPTER THREE", "Part IV",
                                     "Prologue", "II. THE RETURN"])
def test_heading_forms(heading: str) -> None:
    text = f"Some opening.\n\n{heading}\n\nIt rained all night."
    assert [m.title for m in text_chapters(text)] == [heading]


@pytest.mark.parametrize("line", ["I. went home early", "   IV. INDENTED CAPS",
                                  "Chapter and verse were quoted at length by everyone."])
def test_prose_is_not_a_heading(line: str) -> None:
    assert text_chapters(f"Opening.\n\n{line}\n\nMore.") == ()


def test_markdown_uses_the_source_and_its_headings() -> None:
    source = "# My Novel\n\n## The Start\n\nIt began.\n\n## The End\n\nIt ended.\n"
    document = parse_document("novel.md", source.encode())
    assert document.text == source
    assert document.title == "My Novel"
    assert [(m.title, source[m.start:m.start + 12]) for m in document.chapters] == [
        ("The Start", "## The Start"), ("The End", "## The End\n\n")]


def test_docx_paragraphs_and_heading_styles() -> None:
    import docx

    word = docx.Document()
    word.add_heading("The Lighthouse", level=0)
    word.add_heading("One", level=1)
    word.add_paragraph("The keeper climbed the stairs.")
    word.add_heading("Two", level=1)
    word.add_paragraph("The lamp went out.")
    buffer = io.BytesIO()
    word.save(buffer)
    document = parse_document("lighthouse.docx", buffer.getvalue())
    assert document.title == "The Lighthouse"
    assert document.text == "One\n\nThe keeper climbed the stairs.\n\nTwo\n\nThe lamp went out."
    assert [m.title for m in document.chapters] == ["One", "Two"]
    assert document.text[document.chapters[1].start:].startswith("Two")


def test_html_blocks_title_and_headings() -> None:
    html = """<html><head><title>Night Train</title><style>p{}</style></head><body>
    <h1>Departure</h1><p>The train left   at <b>midnight</b>.<br>Late.</p><script>x()</script>
    <h1>Arrival</h1><ul><li>A station</li><li>A fog</li></ul></body></html>"""
    document = parse_document("train.html", html.encode())
    assert document.title == "Night Train"
    assert document.text == ("Departure\n\nThe train left at midnight. Late.\n\nArrival\n\n"
                             "A station\n\nA fog")
    assert [m.title for m in document.chapters] == ["Departure", "Arrival"]


@pytest.mark.parametrize(("name", "data", "error", "words"), [
    ("empty.txt", b"", InvalidDocument, "empty"),
    ("blank.md", b"   \n\n  ", InvalidDocument, "no text"),
    ("image.txt", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR", InvalidDocument, "binary"),
    ("latin1.txt", "café crème".encode("latin-1"), InvalidDocument, "UTF-8"),
    ("story.pdf", b"%PDF-1.4", UnsupportedDocument, ".txt, .md, .docx and .html"),
    ("noext", b"text", UnsupportedDocument, "no extension"),
    ("broken.docx", b"PK\x03\x04 not really a zip", InvalidDocument, "not a valid .docx"),
    ("fake.docx", b"plain text", InvalidDocument, "not a valid .docx"),
    ("controls.txt", bytes(range(1, 32)) * 20, InvalidDocument, "binary"),
])
def test_bad_input_has_a_clear_error(name: str, data: bytes, error: type, words: str) -> None:
    with pytest.raises(error) as raised:
        parse_document(name, data)
    assert words in raised.value.message
    assert raised.value.param == "file"


def test_name_is_the_relative_path_given_and_never_climbs() -> None:
    assert parse_document("drafts/notes.txt", b"Hello there.").file == "drafts/notes.txt"
    assert parse_document("/etc/notes.txt", b"Hello there.").file == "etc/notes.txt"
    with pytest.raises(InvalidDocument, match=r"'\.\.' part"):
        parse_document("../../etc/notes.txt", b"Hello there.")


def test_chapter_key_ignores_numbering_case_and_quotes() -> None:
    assert chapter_key("V. THE FIVE ORANGE PIPS") == chapter_key("the five orange pips")
    assert chapter_key("IX. THE ADVENTURE OF THE ENGINEER’S THUMB") == (
        "the adventure of the engineer's thumb")
    assert chapter_key("CHAPTER XII. Alice's Evidence") == "alice's evidence"
    assert chapter_key("CHAPTER XII") == "chapter xii"
    assert chapter_key("I Remember") == "i remember"
