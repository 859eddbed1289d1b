"""Parsing: formats, titles, chapter detection, the Gutenberg header and licence, bad input."""

from __future__ import annotations

import io
import struct
import time
import tracemalloc
from collections.abc import Callable, Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.archive import documents
from app.archive.documents import (
    MAX_DOCX_TAGS,
    MAX_HTML_TAGS,
    MAX_MARKDOWN_LINES,
    chapter_key,
    parse_document,
    text_chapters,
)
from app.config import Settings
from app.errors import DocumentTooLarge, InvalidDocument, UnsupportedDocument
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.hash_embedder import hash_embedder

from .conftest import ALICE, SHERLOCK, wait_archive
from .crafted import MiB, body, crafted_docx, spaces

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


# --- crafted files: bombs, malformed XML, wrong types (issue 12, row 5) -------------------------

def test_docx_zip_bomb_is_refused_by_its_directory_before_unpacking() -> None:
    bomb = crafted_docx(spaces(2048))  # word/document.xml: 2 GiB of spaces, 2 MB zipped
    assert len(bomb) < 3 * MiB
    with pytest.raises(DocumentTooLarge) as raised:
        parse_document("bomb.docx", bomb)
    assert "ARCHIVE_MAX_EXPANDED_BYTES" in raised.value.message
    assert raised.value.details["expanded_bytes"] > 2048 * MiB
    assert raised.value.param == "file"


def test_docx_that_understates_its_size_is_refused_when_read() -> None:
    raw, crc, _ = spaces(2048)
    with pytest.raises(InvalidDocument) as raised:  # read up to the 1000 bytes it declares
        parse_document("liar.docx", crafted_docx((raw, crc, 1000)))
    assert "'word/document.xml' does not unpack" in raised.value.message


@pytest.mark.parametrize(("xml", "words"), [
    (b"<w:document", "'word/document.xml' is not well-formed XML (line 1, column 12)"),
    (body("<w:p><w:r><w:t>open</w:p>"), "'word/document.xml' is not well-formed XML"),
    (b"", "'word/document.xml' is not well-formed XML"),
    # billion laughs, in text and in an attribute: refused at the DTD, nothing expanded
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY a "aaaaaaaaaa"><!ENTITY b "&a;&a;&a;&a;&a;'
     b'&a;&a;&a;&a;&a;"><!ENTITY c "&b;&b;&b;&b;&b;&b;&b;&b;&b;&b;">]>'
     + body('<w:p><w:pPr><w:pStyle w:val="&c;"/></w:pPr><w:r><w:t>&c;</w:t></w:r></w:p>'),
     "'word/document.xml' declares a DTD"),
    # an external entity
    (b'<?xml version="1.0"?><!DOCTYPE d [<!ENTITY x SYSTEM "file:///etc/passwd">]>'
     + body("<w:p><w:r><w:t>&x;</w:t></w:r></w:p>"), "declares a DTD"),
], ids=["unclosed-root", "mismatched-tags", "empty", "billion-laughs", "external-entity"])
def test_malformed_or_entity_laden_docx_xml_is_a_clear_error(xml: bytes, words: str) -> None:
    with pytest.raises(InvalidDocument) as raised:
        parse_document("bad.docx", crafted_docx(xml))
    assert words in raised.value.message
    assert raised.value.param == "file"


def test_docx_of_a_zip_version_python_cannot_read_is_a_clear_error() -> None:
    package = bytearray(crafted_docx())
    entry = package.index(b"PK\x01\x02")  # the first central directory entry
    package[entry + 6:entry + 8] = struct.pack("<H", 126)  # "version needed to extract": 12.6
    with pytest.raises(InvalidDocument, match="not a zip archive"):
        parse_document("future.docx", bytes(package))


def test_docx_python_docx_cannot_read_is_a_clear_error() -> None:
    # Well-formed parts, but the main document's root is not a w:document.
    with pytest.raises(InvalidDocument, match=r"not a valid \.docx"):
        parse_document("odd.docx", crafted_docx(b"<root/>"))


def test_docx_with_too_many_tags_is_refused_unparsed() -> None:
    many = crafted_docx(body("<w:p/>" * (MAX_DOCX_TAGS + 1)))  # 6 MB of XML, 40 KB zipped
    with pytest.raises(DocumentTooLarge, match="XML tags"):
        parse_document("many.docx", many)


def test_long_docx_parses_in_linear_time() -> None:
    # python-docx's style lookup scanned every style per paragraph: 20,000 paragraphs took
    # 15 s (31 s profiled); read once, it is a fraction of a second.
    paragraphs = "".join(f'<w:p><w:pPr><w:pStyle w:val="{"Heading1" if i % 100 == 0 else "x"}"/>'
                         f"</w:pPr><w:r><w:t>Line {i}.</w:t></w:r></w:p>" for i in range(20_000))
    started = time.perf_counter()
    document = parse_document("long.docx", crafted_docx(body(paragraphs)))
    assert time.perf_counter() - started < 5
    assert len(document.chapters) == 200 and document.chapters[1].title == "Line 100."
    assert document.text.endswith("Line 19999.")


@pytest.mark.parametrize(("name", "data", "error", "words"), [
    ("many.html", b"<b>" * (MAX_HTML_TAGS + 1), DocumentTooLarge, "HTML files of up to"),
    ("lines.md", b"\n" * MAX_MARKDOWN_LINES, DocumentTooLarge, "Markdown files of up to"),
    ("image.md", b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(64), InvalidDocument, "binary"),
    ("word.html", None, InvalidDocument, "binary"),  # a .docx named .html
    ("story.docx", b"<html><body><p>Not Word.</p></body></html>", InvalidDocument,
     "not a zip archive"),
    ("utf16.md", "# Title\n\nText.".encode("utf-16"), InvalidDocument, "UTF-16"),
    ("latin1.html", "<p>café</p>".encode("latin-1"), InvalidDocument, "UTF-8"),
], ids=["html-tags", "md-lines", "png-as-md", "docx-as-html", "html-as-docx",
        "utf16", "latin1"])
def test_wrong_or_oversized_text_files_are_clear_errors(
        name: str, data: bytes | None, error: type, words: str) -> None:
    with pytest.raises(error) as raised:
        parse_document(name, data if data is not None else crafted_docx())
    assert words in raised.value.message
    assert raised.value.param == "file"


@pytest.mark.parametrize("source", [b"[a" * MiB, b"\\" * (2 * MiB), b"&" * (2 * MiB),
                                    b"_a" * MiB, b"<" * (2 * MiB)],
                         ids=["brackets", "backslashes", "ampersands", "underscores", "angles"])
def test_pathological_markdown_inline_is_not_parsed(source: bytes) -> None:
    # Only block structure is parsed (headings); markdown-it's inline parser took minutes
    # and gigabytes on these (10 MiB of "[": 99 s, 1.1 GB; of "\": 31 s, 1.8 GB).
    started = time.perf_counter()
    document = parse_document("odd.md", source)
    assert time.perf_counter() - started < 2
    assert len(document.text) == len(source)


def test_markdown_of_too_many_blocks_is_refused(monkeypatch: pytest.MonkeyPatch) -> None:
    # 5 tokens a list item: a list of MAX_MARKDOWN_TOKENS // 5 items is the most it takes.
    monkeypatch.setattr(documents, "MAX_MARKDOWN_TOKENS", 1000)
    assert parse_document("list.md", b"- a\n" * 199).text.startswith("- a")
    with pytest.raises(DocumentTooLarge, match="more than 1000 Markdown blocks"):
        parse_document("list.md", b"- a\n" * 200)


def test_markdown_with_old_mac_line_ends_finds_its_headings() -> None:
    source = "Intro.\r# One\rText.\r# Two\rMore."
    document = parse_document("mac.md", source.encode())
    assert [(m.title, source[m.start:m.start + 5]) for m in document.chapters] == [
        ("One", "# One"), ("Two", "# Two")]


def test_deeply_nested_html_parses() -> None:
    document = parse_document("deep.html", b"<div>" * 30_000 + b"<p>Deep.</p>")
    assert document.text == "Deep."


def test_text_of_many_paragraphs_needs_no_list_of_them() -> None:
    data = b"a\n\n" * 100_000  # 300 KB: the list of paragraphs was 11 MB
    tracemalloc.start()
    try:
        document = parse_document("short.txt", data)
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert document.chapters == ()
    assert peak < 4 * MiB, peak


# --- the same files through the upload endpoint ---------------------------------------------------


@pytest.fixture(scope="module")
def upload_client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app on a scripted model, its archive on the hash embedder, .docx files unpacked up
    to 2 MiB (the template's parts are 0.8 MiB)."""
    state = tmp_path_factory.mktemp("uploads")
    settings = Settings(summary_cache_dir=state / "summaries", archive_db_path=state / "archive",
                        archive_max_expanded_bytes=2 * MiB, rate_limit_per_minute=0,
                        rate_limit_concurrent=0)
    with hash_embedder(), TestClient(create_app(settings, generator=FakeGenerator())) as client:
        assert wait_archive(client) == "ready"
        yield client


def _upload(client: TestClient, name: str, data: bytes) -> Any:
    return client.post("/api/v1/archive/files", files={"file": (name, data)})


@pytest.mark.parametrize(("name", "data", "status", "code", "words"), [
    ("bomb.docx", lambda: crafted_docx(spaces(2048)), 413, "document_too_large",
     "ARCHIVE_MAX_EXPANDED_BYTES"),
    # 2 MiB in a part python-docx never reads still counts against ARCHIVE_MAX_EXPANDED_BYTES
    ("padded.docx", lambda: crafted_docx(extra={"word/media/pad.bin": bytes(2 * MiB)}), 413,
     "document_too_large", f"up to {2 * MiB} bytes"),
    ("broken.docx", lambda: crafted_docx(b"<w:document"), 422, "invalid_document",
     "'word/document.xml' is not well-formed XML"),
    ("laughs.docx", lambda: crafted_docx(b'<!DOCTYPE d [<!ENTITY a "a">]><d>&a;</d>'), 422,
     "invalid_document", "declares a DTD"),
    ("word.html", crafted_docx, 422, "invalid_document", "binary"),
    ("many.html", lambda: b"<p>" * (MAX_HTML_TAGS + 1), 413, "document_too_large", "tags"),
], ids=["zip-bomb", "padded", "malformed-xml", "dtd", "docx-as-html", "html-tags"])
def test_crafted_uploads_are_clear_4xx(upload_client: TestClient, name: str,
                                       data: Callable[[], bytes], status: int, code: str,
                                       words: str) -> None:
    response = _upload(upload_client, name, data())
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["param"] == "file"
    assert words in error["message"]
    assert "lxml" not in response.text and "Traceback" not in response.text


def test_a_docx_within_the_limits_is_archived(upload_client: TestClient) -> None:
    fine = crafted_docx(extra={"word/media/pad.bin": bytes(MiB)})
    response = _upload(upload_client, "fine.docx", fine)
    assert response.status_code == 201, response.text
    assert upload_client.get("/api/v1/archive/files/fine.docx/text").json()["text"] == (
        "Hello there.")
