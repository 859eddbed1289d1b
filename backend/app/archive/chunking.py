"""Structure-aware chunking: chapters, then paragraphs, then sentences, then words.

A document is cut into chapter sections (a chunk never spans two chapters). Inside a section,
whole paragraphs are packed into chunks of at most ``chunk_tokens`` tokens; a paragraph too long
for one chunk is cut at sentence boundaries (pysbd), and a sentence too long at word
boundaries. Each chunk after the first of its section starts with an overlap: the end of the
previous chunk, at most ``overlap_tokens`` tokens, begun at a sentence start where one fits,
else at a word.

Front matter (text before the first chapter heading) shorter than a quarter of a chunk, such
as a lone title line, joins the first chapter instead of making a tiny chunk of its own.

The chunks tile the document: chunk ``i``'s new text is ``text[own_start:end]`` and those
pieces, in order, concatenate to the document text exactly (whitespace between paragraphs
included), which is how the archive reconstructs a file.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache
from itertools import pairwise

import pysbd

from app.archive.documents import ChapterMark, Document

CountTokens = Callable[[str], int]

#: Ends of blank-line runs: where a new paragraph (with its leading indentation) begins.
_PARAGRAPH_START = re.compile(r"\n[ \t\r\f\v]*\n\s*")
_WORD_START = re.compile(r"(?<=\s)\S")
#: Front matter below this share of a chunk joins the first chapter's first chunk.
_SHORT_FRONT_MATTER = 0.25
#: A sentence start: after end punctuation (and closing quotes or brackets) and whitespace.
_SENTENCE_START = re.compile(r"(?:(?<=[.!?…]\s)|(?<=[.!?…][\"'”’)\]]\s))(?=\S)")


@dataclass(frozen=True)
class Chunk:
    """One chunk of a document.

    Attributes:
        index: position in the document, from 0.
        text: ``document.text[start:end]``: the overlap, then the chunk's new text.
        start: character offset where the chunk (overlap included) begins.
        own_start: character offset where its new text begins (``start`` when no overlap).
        end: character offset where it ends (exclusive).
        chapter: heading of its chapter (``""`` for front matter before the first heading).
        chapter_number: 1-based ordinal of its chapter in the document (0: front matter).
        tokens: tokens of ``text`` counted by the embedding model's tokenizer.
    """

    index: int
    text: str
    start: int
    own_start: int
    end: int
    chapter: str
    chapter_number: int
    tokens: int


@dataclass(frozen=True)
class _Unit:
    start: int
    end: int
    tokens: int
    #: A piece of a word cut by characters: chunked alone, without overlap.
    solo: bool = False


@lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def sections(document: Document) -> list[tuple[int, int, str, int]]:
    """(start, end, chapter heading, chapter number) of each section of ``document``: front
    matter (when it has text) then one per chapter; together they cover the text. Front matter
    that is only whitespace joins the first chapter."""
    text = document.text
    marks = [m for m in document.chapters if 0 <= m.start < len(text)]
    bounds: list[tuple[int, str, int]] = [(0, "", 0)]
    for number, mark in enumerate(marks, start=1):
        bounds.append((mark.start, mark.title, number))
    result = []
    for i, (start, title, number) in enumerate(bounds):
        end = bounds[i + 1][0] if i + 1 < len(bounds) else len(text)
        if end <= start:
            continue
        if number == 0 and not text[start:end].strip() and end < len(text):
            continue
        result.append((start, end, title, number))
    if result and result[0][0] > 0:
        first = result[0]
        result[0] = (0, first[1], first[2], first[3])
    return result


def _paragraph_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans that tile ``[start, end)``, one per paragraph with its trailing blank lines."""
    starts = [start] + [m.end() for m in _PARAGRAPH_START.finditer(text, start, end)
                        if m.end() < end]
    spans = [(a, b) for a, b in pairwise([*starts, end]) if b > a]
    return spans


def _sentence_spans(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """Spans that tile ``[start, end)`` at pysbd's sentence boundaries."""
    cuts = {start + seg.start for seg in _segmenter().segment(text[start:end])}
    points = [start, *sorted(c for c in cuts if start < c < end), end]
    return [(a, b) for a, b in pairwise(points) if b > a]


def _word_spans(text: str, start: int, end: int, limit: int,
                count: CountTokens) -> list[tuple[int, int, bool]]:
    """Spans that tile ``[start, end)``, cut at word starts, each at most ``limit`` tokens; a
    word longer than that is cut by characters, and those pieces are flagged ``True`` (their
    token counts are not additive, so each becomes a chunk of its own)."""
    spans: list[tuple[int, int, bool]] = []
    words = [start] + [m.start() for m in _WORD_START.finditer(text, start, end)
                       if m.start() > start]
    i = 0
    while i < len(words):
        a = words[i]
        # The furthest word boundary j with count(text[a:boundary j]) <= limit.
        # The lambda runs inside _furthest, in this iteration.
        j = _furthest(lambda k: count(text[a:words[k] if k < len(words) else end]) <= limit,  # noqa: B023
                      i + 1, len(words))
        if j is None:
            b = words[i + 1] if i + 1 < len(words) else end
            spans += [(p, q, True) for p, q in _char_spans(text, a, b, limit, count)]
            i += 1
        else:
            spans.append((a, words[j] if j < len(words) else end, False))
            i = j
    return spans


def _furthest(fits: Callable[[int], bool], lo: int, hi: int) -> int | None:
    """The largest ``k`` in ``[lo, hi]`` with ``fits(k)`` (fits is monotone: true then
    false), or ``None``."""
    best = None
    while lo <= hi:
        mid = (lo + hi) // 2
        if fits(mid):
            best, lo = mid, mid + 1
        else:
            hi = mid - 1
    return best


def _char_spans(text: str, start: int, end: int, limit: int,
                count: CountTokens) -> list[tuple[int, int]]:
    """Spans that tile ``[start, end)`` by characters, each at most ``limit`` tokens (at
    least one character)."""
    spans, p = [], start
    while p < end:
        # The lambda runs inside _furthest, in this iteration.
        q = _furthest(lambda k: count(text[p:k]) <= limit, p + 1, end) or p + 1  # noqa: B023
        spans.append((p, q))
        p = q
    return spans


def _units(text: str, start: int, end: int, limit: int, count: CountTokens) -> list[_Unit]:
    """Paragraphs of a section, each cut finer when above ``limit`` tokens."""
    units = []
    for a, b in _paragraph_spans(text, start, end):
        tokens = count(text[a:b])
        if tokens <= limit:
            units.append(_Unit(a, b, tokens))
            continue
        for sa, sb in _sentence_spans(text, a, b):
            tokens = count(text[sa:sb])
            if tokens <= limit:
                units.append(_Unit(sa, sb, tokens))
            else:
                units += [_Unit(wa, wb, count(text[wa:wb]), solo)
                          for wa, wb, solo in _word_spans(text, sa, sb, limit, count)]
    return units


def _overlap_start(text: str, start: int, end: int, limit: int, count: CountTokens) -> int:
    """Where the overlap taken from ``text[start:end]`` begins: the earliest word start whose
    suffix has at most ``limit`` tokens, moved on to the first sentence start after it if
    there is one; ``end`` (no overlap) when not even the last word fits."""
    if limit <= 0:
        return end
    starts = {m.start() for m in _WORD_START.finditer(text, start, end)}
    if start < end and not text[start].isspace():
        starts.add(start)
    words = sorted(starts)
    # Suffix tokens shrink as the start moves right: find the leftmost start that fits.
    first = _furthest(lambda k: count(text[words[-1 - k]:end]) <= limit, 0, len(words) - 1)
    best = end if first is None else words[-1 - first]
    if best == end:
        return end
    sentence = _SENTENCE_START.search(text, best, end)
    if (best > start and not _SENTENCE_START.match(text, best) and sentence is not None
            and text[sentence.start():end].strip()):
        return sentence.start()
    return best


def _pack(text: str, units: list[_Unit], start: int, chunk_tokens: int, overlap_tokens: int,
          count: CountTokens) -> list[tuple[int, int, int]]:
    """(start, own_start, end) of the chunks of one section: units packed greedily, each
    chunk after the first opened with an overlap from the one before."""
    spans: list[tuple[int, int, int]] = []
    own_start, overlap, body_tokens = start, 0, 0
    body: list[_Unit] = []
    for unit in units:
        full = overlap + body_tokens + unit.tokens > chunk_tokens
        if body and (full or unit.solo or body[-1].solo):
            end = body[-1].end
            spans.append((start, own_start, end))
            limit = 0 if unit.solo or body[-1].solo else min(overlap_tokens,
                                                             chunk_tokens - unit.tokens)
            start = _overlap_start(text, start, end, limit, count)
            own_start = end
            overlap = count(text[start:own_start]) if start < own_start else 0
            body, body_tokens = [], 0
        body.append(unit)
        body_tokens += unit.tokens
    if body:
        spans.append((start, own_start, body[-1].end))
    return spans


def chunk_document(
    document: Document, count: CountTokens, chunk_tokens: int, overlap_tokens: int
) -> list[Chunk]:
    """Cut ``document`` into chunks of at most ``chunk_tokens`` tokens (overlap included).

    Args:
        document: the parsed document.
        count: token counter of the embedding model (tokens of a string, no special tokens);
            it must be additive across whitespace (WordPiece and BPE pre-tokenisers are).
        chunk_tokens: largest chunk, in tokens.
        overlap_tokens: largest overlap, in tokens (below ``chunk_tokens``).

    Returns:
        Chunks in document order; their ``text[own_start - start:]`` pieces concatenate to
        ``document.text``. A document of only whitespace gives no chunks.

    Raises:
        ValueError: ``overlap_tokens >= chunk_tokens`` or ``chunk_tokens < 1``.
    """
    if chunk_tokens < 1 or not 0 <= overlap_tokens < chunk_tokens:
        raise ValueError(f"need 0 <= overlap_tokens ({overlap_tokens}) < chunk_tokens "
                         f"({chunk_tokens})")
    text = document.text
    if not text.strip():
        return []
    chunks: list[Chunk] = []
    parts = sections(document)
    if (len(parts) > 1 and parts[0][3] == 0
            and count(text[parts[0][0]:parts[0][1]]) < chunk_tokens * _SHORT_FRONT_MATTER):
        # A title line alone would be a chunk that matches every query about the work.
        parts = [(0, *parts[1][1:]), *parts[2:]]
    for sec_start, sec_end, chapter, number in parts:
        for start, own_start, end in _pack(text, _units(text, sec_start, sec_end, chunk_tokens,
                                                        count), sec_start, chunk_tokens,
                                           overlap_tokens, count):
            chunk_text = text[start:end]
            chunks.append(Chunk(len(chunks), chunk_text, start, own_start, end, chapter, number,
                                count(chunk_text)))
    return chunks


def reconstruct(chunks: list[tuple[int, int, str]]) -> str:
    """The document text from ``(start, own_start, text)`` of each chunk, in chunk order."""
    return "".join(chunk_text[own_start - start:] for start, own_start, chunk_text in chunks)


def chapter_marks(chunks: list[tuple[int, str, int]]) -> tuple[ChapterMark, ...]:
    """Chapter marks recovered from ``(own_start, chapter, chapter_number)`` of each chunk in
    order (used to re-chunk an archived document without its source file)."""
    marks: list[ChapterMark] = []
    seen: set[int] = set()
    for own_start, chapter, number in chunks:
        if number > 0 and number not in seen:
            seen.add(number)
            marks.append(ChapterMark(own_start, chapter))
    return tuple(marks)
