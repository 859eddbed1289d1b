"""Trimming text to a token budget at paragraph, then sentence, boundaries.

Sentence boundaries come from pysbd (rule-based Sentence Boundary Disambiguation, Sadvilkar &
Neumann 2020), so abbreviations such as "Mr." do not cut a sentence in two.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import dataclass
from functools import lru_cache

import pysbd

CountTokens = Callable[[str], int]

_PARAGRAPH_BREAK = re.compile(r"\n\s*\n")


@dataclass(frozen=True)
class TrimResult:
    """Trimmed text, its token count and the boundary it was cut at.

    ``boundary`` is ``paragraph`` or ``sentence``; ``text`` is empty when not even one sentence
    fits. ``start``/``end`` are the character range of the original that the kept text covers
    (whitespace between kept pieces may be normalised to a blank line).
    """

    text: str
    tokens: int
    boundary: str
    start: int = 0
    end: int = 0


@lru_cache(maxsize=1)
def _segmenter() -> pysbd.Segmenter:
    return pysbd.Segmenter(language="en", clean=False, char_span=True)


def _paragraph_spans(text: str) -> list[tuple[int, int]]:
    spans, start = [], 0
    for match in _PARAGRAPH_BREAK.finditer(text):
        if match.start() > start:
            spans.append((start, match.start()))
        start = match.end()
    if start < len(text):
        spans.append((start, len(text)))
    return spans


def _sentence_spans(text: str, offset: int) -> list[tuple[int, int]]:
    spans = []
    for seg in _segmenter().segment(text):
        # pysbd's span end includes trailing whitespace; strip it so pieces join cleanly.
        end = seg.start + len(seg.sent.rstrip())
        if end > seg.start:
            spans.append((offset + seg.start, offset + end))
    return spans


def _fit(
    text: str, spans: list[tuple[int, int]], budget: int, count: CountTokens, keep_tail: bool
) -> tuple[int, int]:
    """Largest run of whole spans from one end of ``text`` whose slice fits ``budget`` tokens.

    Returns the kept ``(start, end)`` character range (``start == end`` when nothing fits).
    Spans are summed with their individual counts first, then the slice is counted exactly and
    shrunk one span at a time, because token counts are not exactly additive.
    """
    ordered = list(reversed(spans)) if keep_tail else spans
    taken = 0
    total = 0
    for start, end in ordered:
        cost = count(text[start:end]) + (1 if taken else 0)  # +1 for the separator
        if total + cost > budget:
            break
        total += cost
        taken += 1
    while taken:
        kept = ordered[:taken]
        lo, hi = (kept[-1][0], kept[0][1]) if keep_tail else (kept[0][0], kept[-1][1])
        if count(text[lo:hi]) <= budget:
            return lo, hi
        taken -= 1
    edge = len(text) if keep_tail else 0
    return edge, edge


def trim_to_budget(text: str, budget: int, count: CountTokens, *, keep_tail: bool) -> TrimResult:
    """Cut ``text`` to at most ``budget`` tokens at a paragraph, else sentence, boundary.

    ``keep_tail`` keeps the end of the text (story so far) instead of its start. Whole
    paragraphs are kept first; the paragraph at the cut is then filled sentence by sentence.
    Never cuts inside a sentence. ``budget`` and the returned ``tokens`` are in model tokens.
    """
    if budget <= 0:
        edge = len(text) if keep_tail else 0
        return TrimResult("", 0, "paragraph", edge, edge)
    paragraphs = _paragraph_spans(text)
    lo, hi = _fit(text, paragraphs, budget, count, keep_tail)
    kept = text[lo:hi]
    kept_tokens = count(kept) if kept else 0
    boundary = "paragraph"
    start, end = lo, hi
    # Fill what is left with sentences of the next paragraph at the cut.
    remaining = budget - kept_tokens - (1 if kept else 0)
    cut_paragraph = None
    if keep_tail:
        before = [p for p in paragraphs if p[1] <= lo]
        cut_paragraph = before[-1] if before else None
    else:
        after = [p for p in paragraphs if p[0] >= hi]
        cut_paragraph = after[0] if after else None
    if cut_paragraph and remaining > 0:
        p_lo, p_hi = cut_paragraph
        sentences = _sentence_spans(text[p_lo:p_hi], p_lo)
        s_lo, s_hi = _fit(text, sentences, remaining, count, keep_tail)
        if s_hi > s_lo:
            piece = text[s_lo:s_hi]
            candidate = f"{piece}\n\n{kept}" if keep_tail else f"{kept}\n\n{piece}"
            candidate = candidate.strip()
            candidate_tokens = count(candidate)
            if candidate_tokens <= budget:
                kept, kept_tokens, boundary = candidate, candidate_tokens, "sentence"
                start, end = (s_lo, hi if hi > lo else s_hi) if keep_tail else (
                    lo if hi > lo else s_lo, s_hi)
    if not kept:
        start = end = len(text) if keep_tail else 0
    return TrimResult(kept, kept_tokens, boundary, start, end)


def split_to_budget(text: str, budget: int, count: CountTokens) -> list[str]:
    """Split ``text`` into consecutive parts of at most ``budget`` tokens each.

    Parts break at paragraph boundaries; a paragraph longer than the budget breaks at sentence
    boundaries, and a sentence longer than it between words. Used to keep every
    summarization prompt within the model's window.
    """
    pieces: list[str] = []
    for lo, hi in _paragraph_spans(text):
        paragraph = text[lo:hi]
        if count(paragraph) <= budget:
            pieces.append(paragraph)
            continue
        for s_lo, s_hi in _sentence_spans(paragraph, 0):
            sentence = paragraph[s_lo:s_hi]
            if count(sentence) <= budget:
                pieces.append(sentence)
                continue
            words = sentence.split()
            step = max(1, len(words) * budget // max(count(sentence), 1))
            pieces += [" ".join(words[i:i + step]) for i in range(0, len(words), step)]
    separator = count("\n\n")
    groups: list[list[str]] = []
    current: list[str] = []
    size = 0
    for piece in pieces:
        tokens = count(piece) + separator
        if current and size + tokens > budget:
            groups.append(current)
            current, size = [], 0
        current.append(piece)
        size += tokens
    if current:
        groups.append(current)
    return [part for group in groups for part in _checked(group, budget, count)]


def _checked(pieces: list[str], budget: int, count: CountTokens) -> list[str]:
    """``pieces`` joined as one part, or halved until each part's exact count fits
    ``budget`` (counts of pieces are not exactly additive)."""
    joined = "\n\n".join(pieces)
    if len(pieces) == 1 or count(joined) <= budget:
        return [joined]
    middle = len(pieces) // 2
    return [*_checked(pieces[:middle], budget, count), *_checked(pieces[middle:], budget, count)]
