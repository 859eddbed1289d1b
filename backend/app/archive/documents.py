"""Parsing uploaded or local files into archive documents: text plus chapter marks.

Formats: plain text (``.txt``), Markdown (``.md``, parsed with markdown-it-py), Word
(``.docx``, python-docx) and HTML (``.html``/``.htm``, Beautiful Soup). The document text is what
the archive stores and gives back on reconstruction: for ``.txt`` and ``.md`` the file itself
(less a Project Gutenberg header and licence), for ``.docx`` and ``.html`` the paragraphs'
text joined by blank lines.

Untrusted input stays bounded: a ``.docx`` is checked before python-docx reads it (the sizes in
its zip directory, then every part unpacked as a bounded stream, its XML parts parsed without
entities, DTDs or a tree), and the parsers that build hundreds of bytes of objects per tag,
block or line stop at a count (:data:`MAX_DOCX_TAGS`, :data:`MAX_HTML_TAGS`,
:data:`MAX_MARKDOWN_TOKENS`, :data:`MAX_MARKDOWN_LINES`). What is too big raises
:class:`~app.errors.DocumentTooLarge` (HTTP 413), what is malformed
:class:`~app.errors.InvalidDocument` (HTTP 422), each naming the file, the part and the limit.
"""

from __future__ import annotations

import io
import lzma
import re
import unicodedata
import zipfile
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from lxml import etree  # type: ignore[import-untyped]

from app.config import ArchiveSettings
from app.errors import DocumentTooLarge, InvalidDocument, UnsupportedDocument

if TYPE_CHECKING:
    from markdown_it.token import Token

#: Extensions the archive ingests, and the format each one is parsed as.
FORMATS: dict[str, str] = {
    ".txt": "text", ".md": "markdown", ".markdown": "markdown", ".docx": "docx",
    ".html": "html", ".htm": "html",
}
#: Bytes at the start of a text file inspected for NUL bytes (the usual binary test).
_SNIFF_BYTES = 8192
#: Longest archive key (a file name or relative path), in characters.
MAX_NAME_CHARS = 255
_DRIVE = re.compile(r"[A-Za-z]:")
#: Longest heading line, in characters; longer lines are prose.
_MAX_HEADING_CHARS = 100
#: Default of ``parse_document``'s ``max_expanded_bytes``: ARCHIVE_MAX_EXPANDED_BYTES's default.
DEFAULT_MAX_EXPANDED_BYTES: int = ArchiveSettings.model_fields["max_expanded_bytes"].default
#: Most tags (each ``<``, closing tags included) in all the parts of a ``.docx``: python-docx
#: holds an lxml tree of them (measured: 900,000 tags, 175 MB and 8 s). Word writes some 20 to
#: 60 tags a paragraph (an estimate), so this is a book of 15,000 paragraphs or more.
MAX_DOCX_TAGS = 1_000_000
#: Most tags (each ``<``) in an ``.html`` file: Beautiful Soup builds about a kilobyte of
#: Python objects per tag (measured: 500,000 paragraphs, 575 MB and 20 s), so 200,000 is about
#: 230 MB and 8 s, and a book of 50,000 paragraphs with some inline markup.
MAX_HTML_TAGS = 200_000
#: Most block tokens of a Markdown file (about 3 per paragraph, 5 per list item; 450 bytes
#: each): 300,000 is a book of 100,000 paragraphs, about 135 MB.
MAX_MARKDOWN_TOKENS = 300_000
#: Most lines of a Markdown file: markdown-it keeps five numbers per line (about 100 bytes).
MAX_MARKDOWN_LINES = 1_000_000
#: Most parts (zip members) of a ``.docx``; Word writes a few dozen plus one per image.
_MAX_DOCX_PARTS = 10_000
#: Bytes unpacked at a time while checking a ``.docx``.
_UNPACK_CHUNK = 64 * 1024

_ROMAN = r"[IVXLCDM]+"
_NUMBER_WORDS = (
    "one|two|three|four|five|six|seven|eight|nine|ten|eleven|twelve|thirteen|fourteen|"
    "fifteen|sixteen|seventeen|eighteen|nineteen|twenty"
)
#: "CHAPTER I. Down the Rabbit-Hole", "Chapter 3: The Storm", "BOOK TWO", "Part IV".
_CHAPTER_WORD = re.compile(
    rf"^(?:chapter|book|part)\s+(?:\d+|{_ROMAN}|{_NUMBER_WORDS})\b\.?:?\s*(?P<title>.*)$",
    re.IGNORECASE,
)
#: "I. A SCANDAL IN BOHEMIA": a Roman numeral, a dot and an upper-case title, flush left.
_NUMERAL_CAPS = re.compile(rf"^{_ROMAN}\.\s+(?P<title>[^a-z]*[A-Z][^a-z]*)$")
_STANDALONE = re.compile(
    r"^(?:prologue|epilogue|introduction|preface|afterword)\.?$", re.IGNORECASE
)
_PARAGRAPH_BREAK = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_GUTENBERG_START = re.compile(
    r"^\*{3}\s*START OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK[^\n]*\n",
    re.IGNORECASE | re.MULTILINE,
)
_GUTENBERG_END = re.compile(
    r"^\*{3}\s*END OF (?:THE|THIS) PROJECT GUTENBERG E-?BOOK", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_END_LINE = re.compile(
    r"^End of (?:the )?Project Gutenberg", re.IGNORECASE | re.MULTILINE
)
_GUTENBERG_TITLE = re.compile(r"^Title:[ \t]*(?P<title>.+?)\s*$", re.MULTILINE)
#: "[Alice's Adventures in Wonderland by Lewis Carroll 1865]" (NLTK's Gutenberg selection).
_BRACKET_TITLE = re.compile(r"^\[(?P<title>.+?)(?: by [^\]]+)?\]$")


@dataclass(frozen=True)
class ChapterMark:
    """Where a chapter starts in a document's text.

    ``start`` is a character offset (the first character of the heading); ``title`` the
    heading as written, whitespace collapsed (e.g. ``CHAPTER XII. Alice's Evidence``).
    """

    start: int
    title: str


@dataclass(frozen=True)
class Document:
    """A parsed file.

    Attributes:
        file: the archive key: the file's name or path relative to the folder ingested
            (e.g. ``carroll-alice.txt``, ``drafts/notes.md``).
        title: the work's title (from the file, else the file name without extension).
        text: the text the archive stores and reconstructs (characters).
        chapters: chapter starts in ascending order; text before the first is front matter.
        format: ``text``, ``markdown``, ``docx`` or ``html``.
        voice: the author's own writing (a sample of their voice, :mod:`app.voice`), not part
            of a story.
    """

    file: str
    title: str
    text: str
    chapters: tuple[ChapterMark, ...]
    format: str
    voice: bool = False


def archive_name(name: str) -> str:
    """The archive key of a file name or relative path, as given: ``a/notes.md`` and
    ``b/notes.md`` are two files. Backslashes count as slashes; a leading ``/`` or drive
    (``C:``), ``.`` and empty parts are dropped, and each part is stripped.

    Raises:
        InvalidDocument: nothing is left of the name, a part is ``..``, or the key is longer
            than ``MAX_NAME_CHARS``.
    """
    parts = [part.strip() for part in name.replace("\\", "/").split("/")]
    if parts and _DRIVE.fullmatch(parts[0]):
        parts = parts[1:]
    parts = [part for part in parts if part not in ("", ".")]
    if not parts:
        raise InvalidDocument(f"The file name {name!r} is empty; give the file a name.",
                              param="file")
    if ".." in parts:
        raise InvalidDocument(f"The file name {name!r} has a '..' part; give a name or a "
                              "path inside the folder (e.g. drafts/notes.md).", param="file")
    key = "/".join(parts)
    if len(key) > MAX_NAME_CHARS:
        raise InvalidDocument(f"The file name {key[:40]!r}... is {len(key)} characters; the "
                              f"archive takes names up to {MAX_NAME_CHARS}.", param="file")
    return key


def document_format(name: str) -> str:
    """The format of ``name`` by its extension.

    Raises:
        UnsupportedDocument: the extension is not one of ``FORMATS``.
    """
    suffix = PurePath(name).suffix.lower()
    if suffix not in FORMATS:
        shown = suffix or "no extension"
        raise UnsupportedDocument(
            f"{name!r} has {shown}; the archive takes .txt, .md, .docx and .html files.",
            param="file", extension=suffix, supported=sorted(FORMATS),
        )
    return FORMATS[suffix]


def parse_document(name: str, data: bytes, *,
                   max_expanded_bytes: int = DEFAULT_MAX_EXPANDED_BYTES) -> Document:
    """Parse the bytes of a file named ``name`` into a :class:`Document`.

    ``max_expanded_bytes`` bounds what a ``.docx`` unpacks to (all its parts, in bytes;
    ARCHIVE_MAX_EXPANDED_BYTES); the other formats are parsed as they are (their size is the
    caller's to bound: ARCHIVE_MAX_UPLOAD_BYTES).

    Raises:
        UnsupportedDocument: unknown extension (HTTP 415).
        InvalidDocument: empty, binary, not UTF-8, corrupt ``.docx`` (not a zip, a part that
            does not unpack, XML that is not well-formed or declares a DTD), or no text
            (HTTP 422).
        DocumentTooLarge: a ``.docx`` that unpacks to more than ``max_expanded_bytes`` or has
            more than ``_MAX_DOCX_PARTS`` parts or :data:`MAX_DOCX_TAGS` tags; an ``.html``
            file of more than :data:`MAX_HTML_TAGS` tags; a Markdown file of more than
            :data:`MAX_MARKDOWN_TOKENS` blocks or :data:`MAX_MARKDOWN_LINES` lines (HTTP 413).
    """
    file = archive_name(name)
    kind = document_format(file)
    if not data:
        raise InvalidDocument(f"{file!r} is empty (0 bytes).", param="file")
    stem = PurePath(file).stem
    if kind == "docx":
        _check_package(file, data, max_expanded_bytes)
        document = _parse_docx(file, data, stem)
    else:
        text = _decode(file, data)
        if kind == "markdown":
            document = _parse_markdown(file, text, stem)
        elif kind == "html":
            document = _parse_html(file, text, stem)
        else:
            document = _parse_text(file, text, stem)
    if not document.text.strip():
        raise InvalidDocument(f"{file!r} has no text to archive.", param="file")
    return document


def _decode(file: str, data: bytes) -> str:
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        raise InvalidDocument(
            f"{file!r} is UTF-16 text; save it as UTF-8 and upload it again.", param="file")
    if b"\x00" in data[:_SNIFF_BYTES]:
        raise InvalidDocument(
            f"{file!r} looks binary (it contains NUL bytes), not text; upload a text file.",
            param="file",
        )
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as error:
        raise InvalidDocument(
            f"{file!r} is not valid UTF-8 (byte 0x{data[error.start]:02x} at offset "
            f"{error.start}); save it as UTF-8 and upload it again.",
            param="file", offset=error.start,
        ) from error
    controls = sum(
        1 for ch in text[:_SNIFF_BYTES]
        if unicodedata.category(ch) == "Cc" and ch not in "\t\n\r\f\v"
    )
    if controls > max(8, len(text[:_SNIFF_BYTES]) // 100):
        raise InvalidDocument(
            f"{file!r} looks binary ({controls} control characters in its first "
            f"{_SNIFF_BYTES} characters), not text; upload a text file.", param="file",
        )
    return text


def _collapse(text: str) -> str:
    return " ".join(text.split())


# --- plain text ---------------------------------------------------------------------------------


def _paragraphs(text: str) -> Iterator[tuple[int, int]]:
    """(start, end) of each paragraph's non-blank text, in order (one at a time: a text of
    millions of short paragraphs needs no list of them)."""
    start = 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if text[start:match.start()].strip():
            yield _lstripped(text, start, match.start())
        start = match.end()
    if text[start:].strip():
        yield _lstripped(text, start, len(text))


def _lstripped(text: str, start: int, end: int) -> tuple[int, int]:
    block = text[start:end]
    return start + len(block) - len(block.lstrip()), end


def _heading(block: str, next_block: str | None) -> tuple[str, bool] | None:
    """(title, takes the next block) when ``block`` is a chapter heading, else ``None``."""
    if "\n" in block.strip() or len(block.strip()) > _MAX_HEADING_CHARS:
        return None
    line = _collapse(block)
    match = _CHAPTER_WORD.match(line)
    if match:
        if match.group("title"):
            return line, False
        # "CHAPTER XII" alone, its title on the next short line ("Alice's Evidence").
        if next_block is not None:
            follower = next_block.strip()
            if "\n" not in follower and 0 < len(follower) <= 60 and follower[-1] not in ".!?'\"”’":
                return f"{line}. {_collapse(follower)}", True
        return line, False
    if not block[:1].isspace() and _NUMERAL_CAPS.match(line):
        return line, False
    if _STANDALONE.match(line):
        return line, False
    return None


def text_chapters(text: str) -> tuple[ChapterMark, ...]:
    """Chapter headings of plain text: ``CHAPTER I. Title`` (any case, Arabic, Roman or
    spelled-out numbers; the title may stand on the next line), ``I. UPPER-CASE TITLE`` flush
    left, and Prologue/Epilogue-style headings, each alone in its paragraph."""
    spans = _paragraphs(text)
    marks: list[ChapterMark] = []
    skip = False
    current = next(spans, None)
    while current is not None:
        start, end = current
        upcoming = next(spans, None)
        current = upcoming
        if skip:
            skip = False
            continue
        following = text[upcoming[0]:upcoming[1]] if upcoming is not None else None
        # Keep the heading's leading indentation out of the block test but in the offset.
        line_start = text.rfind("\n", 0, start) + 1
        found = _heading(text[line_start:end], following)
        if found is not None:
            title, skip = found
            marks.append(ChapterMark(start, title))
    return tuple(marks)


def _gutenberg_body(text: str) -> tuple[int, int, str | None]:
    """(start, end, title) of the text between Project Gutenberg's START and END markers;
    the whole text when there are none."""
    start_match = _GUTENBERG_START.search(text)
    if start_match is None:
        return 0, len(text), None
    title_match = _GUTENBERG_TITLE.search(text, 0, start_match.start())
    start = start_match.end()
    end_match = _GUTENBERG_END.search(text, start)
    end = end_match.start() if end_match else len(text)
    last_line = _GUTENBERG_END_LINE.search(text, start, end)
    if last_line is not None:
        end = last_line.start()
    while start < end and text[start].isspace():
        start += 1
    while end > start and text[end - 1].isspace():
        end -= 1
    return start, end, title_match.group("title") if title_match else None


def _first_line_title(text: str) -> str | None:
    """The title line of a text: a bracketed ``[Title by Author Year]`` line, or a first
    paragraph of one short line that is not a sentence or a chapter heading."""
    span = next(_paragraphs(text), None)
    if span is None:
        return None
    first = text[span[0]:span[1]].strip()
    bracket = _BRACKET_TITLE.match(first)
    if bracket:
        return bracket.group("title").strip()
    if ("\n" in first or len(first) > _MAX_HEADING_CHARS or first[-1] in ".!?,;:"
            or _heading(first, None)):
        return None
    return first


def _parse_text(file: str, text: str, stem: str) -> Document:
    start, end, title = _gutenberg_body(text)
    body = text[start:end]
    return Document(file, title or _first_line_title(body) or stem, body, text_chapters(body),
                    "text")


# --- markdown, docx, html -----------------------------------------------------------------------


def _chapter_level(levels: list[int]) -> tuple[int | None, bool]:
    """(heading level of chapters, whether the first heading is the title) for a document
    whose headings have ``levels`` in order: a lone top heading above others is the title."""
    if not levels:
        return None, False
    top = min(levels)
    if levels.count(top) == 1 and levels[0] == top and len(levels) > 1:
        return min(level for level in levels[1:]), True
    return top, False


class _TokenBudget(list["Token"]):
    """markdown-it's token list, refusing the token after :data:`MAX_MARKDOWN_TOKENS`."""

    def __init__(self, file: str) -> None:
        super().__init__()
        self.file = file

    def append(self, token: Token) -> None:
        if len(self) >= MAX_MARKDOWN_TOKENS:
            raise DocumentTooLarge(
                f"{self.file!r} has more than {MAX_MARKDOWN_TOKENS} Markdown blocks (paragraphs, "
                "headings, list items); split it into smaller files.", param="file",
                limit_blocks=MAX_MARKDOWN_TOKENS)
        super().append(token)


def _markdown_blocks(file: str, text: str) -> list[Token]:
    """The block tokens of ``text`` (CommonMark). Inline markup is not parsed: only headings
    are needed, and the inline parser is where CommonMark's pathological inputs are (a file of
    ``[`` or ``\\`` took minutes and gigabytes)."""
    from markdown_it import MarkdownIt
    from markdown_it.rules_core import StateCore

    lines = text.count("\n") + text.count("\r") - text.count("\r\n") + 1
    if lines > MAX_MARKDOWN_LINES:
        raise DocumentTooLarge(
            f"{file!r} has {lines} lines; the archive reads Markdown files of up to "
            f"{MAX_MARKDOWN_LINES} lines. Split it into smaller files.", param="file",
            size_lines=lines, limit_lines=MAX_MARKDOWN_LINES)
    md = MarkdownIt("commonmark").disable("inline")
    state = StateCore(text, md, {})
    state.tokens = _TokenBudget(file)
    md.core.process(state)
    return state.tokens


def _line_starts(text: str, lines: list[int]) -> dict[int, int]:
    """Character offset of each line number in ``lines`` (ascending), lines counted as
    markdown-it counts them (``\\r\\n``, ``\\r`` and ``\\n`` each end one)."""
    wanted = iter(lines)
    starts: dict[int, int] = {}
    line = next(wanted, None)
    if line == 0:
        starts[0] = 0
        line = next(wanted, None)
    if line is None:
        return starts
    for number, match in enumerate(re.finditer(r"\r\n?|\n", text), start=1):
        while line == number:
            starts[line] = match.end()
            line = next(wanted, None)
        if line is None:
            break
    return starts


def _parse_markdown(file: str, text: str, stem: str) -> Document:
    tokens = _markdown_blocks(file, text)
    found: list[tuple[int, int, str]] = []
    for i, token in enumerate(tokens):
        if token.type == "heading_open" and token.map is not None:
            title = _collapse(tokens[i + 1].content) if i + 1 < len(tokens) else ""
            found.append((int(token.tag[1:]), token.map[0], title))
    starts = _line_starts(text, sorted({line for _, line, _ in found}))
    headings = [(level, starts[line], title) for level, line, title in found]
    level, titled = _chapter_level([h[0] for h in headings])
    title = headings[0][2] if titled else stem
    marks = tuple(ChapterMark(start, name) for lvl, start, name in headings[int(titled):]
                  if lvl == level and name)
    return Document(file, title or stem, text, marks, "markdown")


def _joined(blocks: list[tuple[str, int | None]], file: str, stem: str,
            title: str | None, kind: str) -> Document:
    """A document from (text, heading level or None) blocks joined by blank lines."""
    levels = [lvl for _, lvl in blocks if lvl is not None]
    level, titled = _chapter_level(levels)
    parts: list[str] = []
    marks: list[ChapterMark] = []
    offset, first_heading = 0, True
    for block, lvl in blocks:
        if lvl is not None:
            if titled and first_heading:
                title = title or block
            elif lvl == level:
                marks.append(ChapterMark(offset, block))
            first_heading = False
        parts.append(block)
        offset += len(block) + 2
    return Document(file, title or stem, "\n\n".join(parts), tuple(marks), kind)


class _RefuseDoctype:
    """lxml parser target that builds nothing and refuses a DTD (as defusedxml does: Word never
    writes one, and a DTD is how entity expansion and external entities get in)."""

    def __init__(self, file: str, part: str) -> None:
        self.file, self.part = file, part

    def doctype(self, *_: object) -> None:
        raise InvalidDocument(
            f"{self.file!r} is not a valid .docx file: its part {self.part!r} declares a DTD "
            "(<!DOCTYPE>), which Word never writes; save it again from a word processor.",
            param="file", part=self.part)

    def close(self) -> None:
        return None


def _check_package(file: str, data: bytes, limit: int) -> None:
    """Check a ``.docx`` before python-docx unpacks and parses it: the unpacked sizes in the
    zip's directory (at most ``limit`` bytes in all), then every part unpacked as a bounded
    stream (a directory that understates a size is caught by the count and by the CRC), its
    tags counted and its XML parts (``.xml``, ``.rels``) parsed without building a tree.

    Raises:
        InvalidDocument: not a zip, a part that does not unpack, XML that is not well-formed
            or declares a DTD.
        DocumentTooLarge: more than ``limit`` bytes unpacked, ``_MAX_DOCX_PARTS`` parts or
            :data:`MAX_DOCX_TAGS` tags.
    """
    try:
        package = zipfile.ZipFile(io.BytesIO(data))
    except (zipfile.BadZipFile, zipfile.LargeZipFile, NotImplementedError, ValueError,
            EOFError, OSError) as error:  # NotImplementedError: "zip file version 14.7"
        raise InvalidDocument(
            f"{file!r} is not a valid .docx file (it is not a zip archive); save it again "
            "from a word processor.", param="file") from error
    with package:
        parts = [info for info in package.infolist() if not info.is_dir()]
        if len(parts) > _MAX_DOCX_PARTS:
            raise DocumentTooLarge(
                f"{file!r} has {len(parts)} parts; the archive reads .docx files of up to "
                f"{_MAX_DOCX_PARTS} parts.", param="file", limit_parts=_MAX_DOCX_PARTS)
        declared = sum(info.file_size for info in parts)
        if declared > limit:
            raise DocumentTooLarge(
                f"{file!r} unpacks to {declared} bytes; the archive unpacks .docx files up to "
                f"{limit} bytes (ARCHIVE_MAX_EXPANDED_BYTES). Split the document or remove "
                "large images.", param="file", expanded_bytes=declared, limit_bytes=limit)
        unpacked = tags = 0
        for info in parts:
            part = info.filename[:200]
            xml = info.filename.endswith((".xml", ".rels"))
            parser = etree.XMLParser(target=_RefuseDoctype(file, part), resolve_entities=False,
                                     no_network=True, load_dtd=False, huge_tree=False)
            try:
                with package.open(info) as stream:
                    while chunk := stream.read(_UNPACK_CHUNK):
                        unpacked += len(chunk)
                        tags += chunk.count(b"<")
                        # CPython's zipfile stops a part at the size its directory
                        # declares (then a wrong CRC fails it); this count does not rely on it.
                        if unpacked > limit:
                            raise DocumentTooLarge(
                                f"{file!r} unpacks to more than {limit} bytes (more than its "
                                "zip directory says); the archive unpacks .docx files up to "
                                f"{limit} bytes (ARCHIVE_MAX_EXPANDED_BYTES).", param="file",
                                limit_bytes=limit)
                        if tags > MAX_DOCX_TAGS:
                            raise DocumentTooLarge(
                                f"{file!r} has more than {MAX_DOCX_TAGS} XML tags; split it "
                                "into smaller documents.", param="file",
                                limit_tags=MAX_DOCX_TAGS)
                        if xml:
                            parser.feed(chunk)
                if xml:
                    parser.close()
            except etree.XMLSyntaxError as error:
                line, column = error.position
                raise InvalidDocument(
                    f"{file!r} is not a valid .docx file: its part {part!r} is not well-formed "
                    f"XML (line {line}, column {column}); save it again from a word processor.",
                    param="file", part=part) from error
            except (zipfile.BadZipFile, zipfile.LargeZipFile, zlib.error, lzma.LZMAError,
                    EOFError, NotImplementedError, RuntimeError, ValueError, OSError) as error:
                # Bad CRC, a truncated or unknown compression, an encrypted part.
                raise InvalidDocument(
                    f"{file!r} is not a valid .docx file: its part {part!r} does not unpack "
                    f"({type(error).__name__}); save it again from a word processor.",
                    param="file", part=part) from error


def _style_names(word: Any) -> tuple[dict[str, str], str]:
    """({paragraph style id: name}, the default paragraph style's name), read once: python-docx
    looks a paragraph's style up by scanning every style, twice per paragraph (0.75 ms each
    with Word's 160 styles: minutes for a long document). Same answers: an unknown id, or
    one of another type, is the default style."""
    from docx.enum.style import WD_STYLE_TYPE

    names: dict[str, str] = {}
    for style in word.styles:
        if style.element.type == WD_STYLE_TYPE.PARAGRAPH and style.style_id is not None:
            names.setdefault(style.style_id, style.name or "")
    default = word.styles.default(WD_STYLE_TYPE.PARAGRAPH)
    return names, (default.name or "") if default is not None else ""


def _parse_docx(file: str, data: bytes, stem: str) -> Document:
    """The paragraphs of a ``.docx`` already checked by :func:`_check_package`."""
    import docx
    from docx.opc.exceptions import PackageNotFoundError
    from docx.oxml.exceptions import InvalidXmlError
    from docx.oxml.ns import qn

    blocks: list[tuple[str, int | None]] = []
    try:
        word = docx.Document(io.BytesIO(data))
        title = (word.core_properties.title or "").strip() or None
        styles, default_style = _style_names(word)
        # The body's paragraphs one at a time (``word.paragraphs`` is a list of proxies: a
        # third of the memory for a million empty paragraphs).
        body = word.element.body
        for paragraph in body.iterchildren(qn("w:p")) if body is not None else ():
            text = paragraph.text.strip()
            if not text:
                continue
            style = styles.get(paragraph.style or "", default_style)
            if style == "Title":
                title = title or _collapse(text)
                continue
            match = re.match(r"Heading (\d)", style)
            blocks.append((_collapse(text) if match else text,
                           int(match.group(1)) if match else None))
    except (zipfile.BadZipFile, PackageNotFoundError, InvalidXmlError, etree.LxmlError,
            KeyError, ValueError, TypeError, AttributeError) as error:
        # A package python-docx cannot read though every part unpacked and parsed: a missing
        # part or relationship, an element or attribute it does not accept.
        raise InvalidDocument(
            f"{file!r} is not a valid .docx file ({type(error).__name__}); save it again "
            "from a word processor.", param="file",
        ) from error
    return _joined(blocks, file, stem, title, "docx")


_BLOCK_TAGS = ("h1", "h2", "h3", "h4", "h5", "h6", "p", "li", "pre", "blockquote", "dt", "dd",
               "td", "th", "figcaption")


def _parse_html(file: str, text: str, stem: str) -> Document:
    from bs4 import BeautifulSoup

    tags = text.count("<")
    if tags > MAX_HTML_TAGS:
        raise DocumentTooLarge(
            f"{file!r} has {tags} tags; the archive reads HTML files of up to "
            f"{MAX_HTML_TAGS} tags. Split it into smaller files.", param="file",
            size_tags=tags, limit_tags=MAX_HTML_TAGS)
    soup = BeautifulSoup(text, "lxml")
    title = _collapse(soup.title.get_text()) if soup.title is not None else None
    for tag in soup(["head", "script", "style", "noscript", "template"]):
        tag.decompose()
    for br in soup("br"):
        br.replace_with("\n")
    blocks: list[tuple[str, int | None]] = []
    for element in soup.find_all(_BLOCK_TAGS):
        if element.find_parent(_BLOCK_TAGS) is not None:
            continue
        if element.name == "pre":
            content = element.get_text().strip("\n")
        else:
            content = _collapse(element.get_text())
        if content:
            level = int(element.name[1]) if re.fullmatch(r"h\d", element.name) else None
            blocks.append((content, level))
    if not blocks:
        blocks = [(line, None) for line in (_collapse(p) for p in
                  re.split(r"\n\s*\n", soup.get_text("\n"))) if line]
    return _joined(blocks, file, stem, title, "html")


_KEY_PREFIX = re.compile(
    rf"^(?:(?:chapter|book|part)\s+(?:\d+|{_ROMAN}|{_NUMBER_WORDS})\b|{_ROMAN}\b|\d+\b)[.:]?\s*",
    re.IGNORECASE,
)


def chapter_key(title: str) -> str:
    """A chapter title reduced for matching: numbering prefix removed, case folded,
    typographic quotes made plain, punctuation runs made single spaces.

    ``"V. THE FIVE ORANGE PIPS"``, ``"The Five Orange Pips"`` and ``"CHAPTER V: the five
    orange pips"`` all give ``"the five orange pips"``. A title that is only numbering
    (``"CHAPTER XII"``) keeps it: ``"chapter xii"``.
    """
    plain = title.replace("’", "'").replace("‘", "'").replace("“", '"').replace("”", '"')
    plain = _collapse(plain)
    stripped = _KEY_PREFIX.sub("", plain, count=1)
    # A bare Roman "I" is also the pronoun: only strip it when a dot or colon followed it.
    if re.match(rf"^{_ROMAN}\b(?![.:])", plain, re.IGNORECASE) and not re.match(
            r"^(?:chapter|book|part)\b", plain, re.IGNORECASE):
        stripped = plain
    key = re.sub(r"[^\w']+", " ", (stripped or plain).casefold()).strip()
    return key
