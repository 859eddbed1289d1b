"""The archive on a real Chroma, embedded and server (`chroma run` on loopback): ingest,
replace, search with filters, reconstruct, delete, atomic failure, model mismatch, re-index."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.archive.service import Archive
from app.config import Settings
from app.errors import ArchiveFileNotFound, ArchiveUnavailable, EmbeddingModelMismatch
from app.observability.metrics import Metrics
from app.schemas.archive import ArchiveFilters

from .conftest import CachingEmbedder

STORY = """The Lighthouse

CHAPTER 1. The Keeper

Old Tom kept the lighthouse on the rock for forty years. Every night he climbed the
spiral stairs and lit the great lamp, and every morning he wrote the weather in his log.

The gulls knew him, and the fishermen waved when they passed.

CHAPTER 2. The Storm

One winter a storm broke the lamp's glass. Tom held a lantern in the gallery all night so
the ships would see the rock, and at dawn a trawler came home safe.
"""

RECIPES = """Soup

Boil the carrots with an onion and a bay leaf, then blend until smooth and season with salt.
"""


def ingest(archive: Archive, name: str, text: str):
    return archive.ingest_bytes(name, text.encode())


def test_ingest_search_and_filters(archive: Archive) -> None:
    result = ingest(archive, "lighthouse.txt", STORY)
    assert (result.chapters, result.unchanged, result.replaced_chunks) == (2, False, 0)
    ingest(archive, "recipes.md", RECIPES)

    top = archive.search("a storm broke the lamp and a lantern was held all night", 1)[0]
    assert (top.file, top.chapter, top.chapter_number) == (
        "lighthouse.txt", "CHAPTER 2. The Storm", 2)
    assert top.title == "The Lighthouse"
    assert 0 < top.score <= 1
    assert STORY[top.start:top.end] == top.text

    soup = archive.search("how to cook carrot soup", 1)[0]
    assert soup.file == "recipes.md"
    only_story = archive.search("how to cook carrot soup", 5,
                                ArchiveFilters(file="lighthouse.txt"))
    assert only_story and {p.file for p in only_story} == {"lighthouse.txt"}
    by_title = archive.search("weather", 5, ArchiveFilters(chapter="the keeper"))
    assert by_title and {p.chapter for p in by_title} == {"CHAPTER 1. The Keeper"}
    by_number = archive.search("weather", 5, ArchiveFilters(file="lighthouse.txt",
                                                            chapter_number=2))
    assert by_number and {p.chapter_number for p in by_number} == {2}
    assert archive.search("weather", 5, ArchiveFilters(chapter="no such chapter")) == []


def test_reconstruct_list_stats_delete(archive: Archive, mode: str) -> None:
    ingest(archive, "lighthouse.txt", STORY)
    ingest(archive, "recipes.md", RECIPES)
    text = archive.file_text("lighthouse.txt")
    assert text.text == STORY and text.chars == len(STORY)

    files = {f.file: f for f in archive.files().files}
    assert set(files) == {"lighthouse.txt", "recipes.md"}
    assert files["lighthouse.txt"].chapters == ["CHAPTER 1. The Keeper", "CHAPTER 2. The Storm"]
    assert files["recipes.md"].format == "markdown"
    stats = archive.stats()
    assert (stats.files, stats.chars) == (2, len(STORY) + len(RECIPES))
    assert stats.chunks == sum(f.chunks for f in files.values())
    assert stats.embedding_model == "sentence-transformers/all-MiniLM-L6-v2"
    assert stats.embedding_dimension == 384
    assert stats.mode == mode and stats.location.startswith(mode)

    deleted = archive.delete_file("recipes.md")
    assert deleted.deleted_chunks == files["recipes.md"].chunks
    assert [f.file for f in archive.files().files] == ["lighthouse.txt"]
    assert all(p.file == "lighthouse.txt" for p in archive.search("carrot soup", 5))
    with pytest.raises(ArchiveFileNotFound):
        archive.delete_file("recipes.md")
    with pytest.raises(ArchiveFileNotFound):
        archive.file_text("recipes.md")


def test_reingest_is_stable_and_a_new_version_replaces_the_old(archive: Archive) -> None:
    small = archive.settings.model_copy(update={"chunk_tokens": 40,
                                                "chunk_overlap_tokens": 8})
    archive.settings = small
    first = ingest(archive, "lighthouse.txt", STORY)
    ids = archive.store.ids({"file": "lighthouse.txt"})
    assert first.chunks == len(ids) > 2

    again = ingest(archive, "lighthouse.txt", STORY)
    assert again.unchanged and archive.store.ids({"file": "lighthouse.txt"}) == ids

    edited = STORY.replace("forty years", "fifty years")
    changed = ingest(archive, "lighthouse.txt", edited)
    assert not changed.unchanged and changed.replaced_chunks == len(ids)
    new_ids = archive.store.ids({"file": "lighthouse.txt"})
    assert len(new_ids) == changed.chunks and not set(new_ids) & set(ids)
    assert archive.store.count() == changed.chunks
    assert archive.file_text("lighthouse.txt").text == edited


class _FailingEmbedder(CachingEmbedder):
    def embed(self, texts, *, batch_size=32, progress=None):  # type: ignore[override]
        raise RuntimeError("out of memory while embedding")


def test_a_failed_ingest_leaves_the_archive_as_it_was(
    archive: Archive, embedder: CachingEmbedder, monkeypatch: pytest.MonkeyPatch
) -> None:
    archive.settings = archive.settings.model_copy(
        update={"chunk_tokens": 30, "chunk_overlap_tokens": 5})
    ingest(archive, "lighthouse.txt", STORY)
    before = sorted(r.id for r in archive.store.get(texts=False))
    edited = STORY.replace("Old Tom", "Young Will")

    # 1. The embedding model fails: nothing is written.
    archive.embedder = _FailingEmbedder(embedder)
    with pytest.raises(RuntimeError):
        ingest(archive, "lighthouse.txt", edited)
    archive.embedder = embedder

    # 2. The store fails after the first batch was written: it is removed again.
    monkeypatch.setattr(archive.store, "max_batch_size", lambda: 2)
    real_upsert, calls = archive.store.upsert, []

    def flaky_upsert(*args, **kwargs):
        calls.append(1)
        if len(calls) == 2:
            raise ArchiveUnavailable("The archive store failed to write chunks: disk full.")
        return real_upsert(*args, **kwargs)

    monkeypatch.setattr(archive.store, "upsert", flaky_upsert)
    with pytest.raises(ArchiveUnavailable):
        ingest(archive, "lighthouse.txt", edited)
    assert len(calls) == 2
    assert sorted(r.id for r in archive.store.get(texts=False)) == before
    assert archive.file_text("lighthouse.txt").text == STORY

    # 3. Deleting the old version after the commit fails: the ingest has succeeded, readers
    #    see only the new version, and the next write's recovery deletes the old chunks.
    monkeypatch.setattr(archive.store, "upsert", real_upsert)
    real_settle = archive.store.settle

    def failing_settle(write: str) -> bool:
        raise ArchiveUnavailable("The archive store failed to delete chunks.")

    monkeypatch.setattr(archive.store, "settle", failing_settle)
    result = ingest(archive, "lighthouse.txt", edited)
    assert not result.unchanged and result.replaced_chunks == len(before)
    assert archive.file_text("lighthouse.txt").text == edited
    assert [f.file for f in archive.files().files] == ["lighthouse.txt"]
    assert archive.store.count() == result.chunks
    assert stored_chunks(archive) == result.chunks + len(before)  # the old ones, hidden
    monkeypatch.setattr(archive.store, "settle", real_settle)
    ingest(archive, "recipes.md", RECIPES)
    assert stored_chunks(archive) == archive.store.count()


def stored_chunks(archive: Archive) -> int:
    """Every chunk in the live collection, hidden ones included."""
    store = archive.store
    return int(store._collection(store._read_catalog().live).count())


def test_another_embedding_model_is_refused_until_reindex(
    archive: Archive, embedder: CachingEmbedder, make_settings: Callable[..., Settings]
) -> None:
    ingest(archive, "lighthouse.txt", STORY)
    ingest(archive, "recipes.md", RECIPES)
    settings = archive.settings
    other = CachingEmbedder(embedder, name="test/minilm-truncated-128", dimension=128)
    switched = Archive.open(settings, Metrics(), embedder=other)

    for call in (lambda: switched.search("storm", 3),
                 lambda: switched.ingest_bytes("more.txt", b"More text.")):
        with pytest.raises(EmbeddingModelMismatch) as raised:
            call()
        message = raised.value.message
        assert "sentence-transformers/all-MiniLM-L6-v2" in message
        assert "test/minilm-truncated-128" in message and "reindex" in message

    result = switched.reindex()
    assert (result.files, result.previous_model) == (2, "sentence-transformers/all-MiniLM-L6-v2")
    assert result.embedding_dimension == 128
    assert switched.file_text("lighthouse.txt").text == STORY
    assert switched.files().files[0].chapters == ["CHAPTER 1. The Keeper",
                                                  "CHAPTER 2. The Storm"]
    top = switched.search("a storm broke the lamp's glass", 1)[0]
    assert top.chapter == "CHAPTER 2. The Storm"
    assert switched.store.collection_metadata()["embedding_dimension"] == 128
    # The archive built for the old model is now the one refused.
    with pytest.raises(EmbeddingModelMismatch):
        Archive.open(settings, Metrics(), embedder=embedder).search("storm", 1)


def test_embeddings_are_unit_vectors(embedder: CachingEmbedder) -> None:
    vectors = embedder.embed(["one", "two words"])
    assert vectors.shape == (2, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
