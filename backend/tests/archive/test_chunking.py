"""Chunking: sizes in tokens, overlap, chapter boundaries, exact reconstruction."""

from __future__ import annotations

import re

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.archive.chunking import chapter_marks, chunk_document, reconstruct, sections
from app.archive.documents import ChapterMark, Document, parse_document
from app.archive.embeddings import Embedder

from .conftest import ALICE, SHERLOCK

_WORD = re.compile(r"\w+|[^\w\s]")


def words(text: str) -> int:
    """A whitespace-additive stand-in tokenizer: a word or a punctuation mark is a token."""
    return len(_WORD.findall(text))


def rebuilt(chunks: list) -> str:
    return reconstruct([(c.start, c.own_start, c.text) for c in chunks])


def doc(text: str, chapters: tuple[ChapterMark, ...] = ()) -> Document:
    return Document("t.txt", "T", text, chapters, "text")


def test_small_paragraphs_pack_into_one_chunk() -> None:
    text = "One two three.\n\nFour five six.\n\nSeven."
    chunks = chunk_document(doc(text), words, 50, 10)
    assert [c.text for c in chunks] == [text]
    assert chunks[0].tokens == words(text)


def test_chunks_break_at_paragraphs_and_overlap_from_a_sentence_start() -> None:
    paragraphs = [f"Paragraph {i} starts here. It has a second sentence." for i in range(6)]
    text = "\n\n".join(paragraphs)
    chunks = chunk_document(doc(text), words, 25, 8)
    assert len(chunks) > 1
    for chunk in chunks:
        assert chunk.tokens <= 25
        own = text[chunk.own_start:chunk.end]
        assert own.startswith("Paragraph"), own
        overlap = text[chunk.start:chunk.own_start]
        assert words(overlap) <= 8
        if overlap:
            assert overlap.startswith("It has"), overlap
    assert rebuilt(chunks) == text


def test_long_paragraph_is_cut_at_sentences_then_words() -> None:
    sentence = "The sea was grey and the wind was cold. "
    giant = "word " * 120
    text = sentence * 12 + giant.strip()
    chunks = chunk_document(doc(text), words, 30, 5)
    assert all(c.tokens <= 30 for c in chunks)
    assert rebuilt(chunks) == text
    # Where the paragraph is sentences, chunks end at a sentence end.
    assert chunks[0].text.rstrip().endswith(".")


def test_chunks_never_span_two_chapters() -> None:
    text = ("Front matter. " * 10 + "\n\nCHAPTER 1\n\nA a a.\n\nB b b.\n\nCHAPTER 2\n\n"
            "C c c.")
    marks = (ChapterMark(text.index("CHAPTER 1"), "CHAPTER 1"),
             ChapterMark(text.index("CHAPTER 2"), "CHAPTER 2"))
    chunks = chunk_document(doc(text, marks), words, 100, 20)
    assert [(c.chapter, c.chapter_number) for c in chunks] == [
        ("", 0), ("CHAPTER 1", 1), ("CHAPTER 2", 2)]
    assert chunks[1].start == chunks[1].own_start  # no overlap across a chapter start
    assert chapter_marks([(c.own_start, c.chapter, c.chapter_number) for c in chunks]) == marks
    assert rebuilt(chunks) == text


def test_a_short_front_matter_joins_the_first_chapter() -> None:
    text = "My Title\n\nCHAPTER 1\n\n" + "Words and words. " * 10
    marks = (ChapterMark(text.index("CHAPTER"), "CHAPTER 1"),)
    chunks = chunk_document(doc(text, marks), words, 100, 10)
    assert [(c.chapter, c.text) for c in chunks] == [("CHAPTER 1", text)]
    # Long enough front matter (a quarter of a chunk) stays a chunk of its own.
    chunks = chunk_document(doc(text, marks), words, 8, 2)
    assert chunks[0].chapter == "" and chunks[0].text == "My Title\n\n"


def test_whitespace_front_matter_joins_the_first_chapter() -> None:
    text = "\n\nCHAPTER 1\n\nText."
    document = doc(text, (ChapterMark(2, "CHAPTER 1"),))
    assert sections(document) == [(0, len(text), "CHAPTER 1", 1)]


def test_overlap_must_be_below_chunk_size() -> None:
    with pytest.raises(ValueError):
        chunk_document(doc("x"), words, 10, 10)
    assert chunk_document(doc("  \n\n "), words, 10, 2) == []


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.text(alphabet=st.sampled_from(list("abc .!?\n\t’")), max_size=120),
             min_size=1, max_size=12),
    st.integers(min_value=4, max_value=40),
    st.data(),
)
def test_property_chunks_tile_the_text_within_budget(parts: list[str], size: int,
                                                     data: st.DataObject) -> None:
    text = "\n\n".join(parts)
    overlap = data.draw(st.integers(min_value=0, max_value=size - 1))
    chunks = chunk_document(doc(text), words, size, overlap)
    if not text.strip():
        assert chunks == []
        return
    assert rebuilt(chunks) == text
    for i, chunk in enumerate(chunks):
        assert chunk.index == i
        assert chunk.text == text[chunk.start:chunk.end]
        assert chunk.start <= chunk.own_start < chunk.end
        assert words(chunk.text) == chunk.tokens <= size
        assert words(text[chunk.start:chunk.own_start]) <= overlap


@pytest.mark.parametrize("path", [ALICE, SHERLOCK], ids=["alice", "sherlock"])
def test_corpus_chunks_fit_the_embedding_model(path, real_embedder: Embedder) -> None:
    document = parse_document(path.name, path.read_bytes())
    chunks = chunk_document(document, real_embedder.count_tokens, 200, 40)
    assert rebuilt(chunks) == document.text
    assert max(c.tokens for c in chunks) <= 200 <= real_embedder.max_tokens
    # Chunk ids, titles and chapters come out the same on a second run.
    assert chunks == chunk_document(document, real_embedder.count_tokens, 200, 40)
    # Alice's front matter is its title line alone: it joins chapter I.
    first = 1 if path == ALICE else 0
    assert {c.chapter_number for c in chunks} == set(range(first, 13))
