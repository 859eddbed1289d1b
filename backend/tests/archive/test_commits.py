"""Writes commit at one point (issue 12, rows 3 and 9), on a real Chroma (embedded and a
`chroma run` server) with a fake embedding model: readers see one version of each file at every
step of a write, a failure at any step of an ingest or a re-index leaves the old or the new
version, archives from before commits are migrated, and the only copy an old interrupted
re-index left is kept."""

from __future__ import annotations

import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import app.archive.service as service
from app.archive.documents import parse_document
from app.archive.ingest import prepare
from app.archive.service import Archive
from app.archive.store import ChromaStore
from app.config import Settings
from app.errors import ArchiveUnavailable
from app.observability.metrics import Metrics

from .fakes import NEW_A, OLD, HashEmbedder, classify, on_chroma_writes, story

FIRST, SECOND = HashEmbedder("test/hash-one"), HashEmbedder("test/hash-two")
SMALL_CHUNKS = {"archive_chunk_tokens": 24, "archive_chunk_overlap_tokens": 4}


@pytest.fixture(autouse=True)
def no_torch(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(service, "set_threads", lambda threads: None)


def open_archive(settings: Settings, embedder: HashEmbedder = FIRST) -> Archive:
    """As the server opens it: recovery included."""
    return Archive.open(settings.archive, Metrics(), embedder=embedder)


def reader_of(settings: Settings, embedder: HashEmbedder = FIRST) -> Archive:
    """Another process's view of the same archive (its own store; no recovery)."""
    store = ChromaStore(settings.archive, embedder.name, embedder.dimension)
    return Archive(settings.archive, embedder, store, Metrics())


def seeded(settings: Settings) -> Archive:
    archive = open_archive(settings)
    for name, text in OLD.items():
        archive.ingest_bytes(name, text.encode())
    return archive


def view(archive: Archive) -> dict[str, Any]:
    """What readers see: the listing, each file's text, and the revisions search returns."""
    listing = [f.file for f in archive.files().files]
    revisions: dict[str, set[str]] = {}
    for passage in archive.search("keeper lamp storm", 50):
        revisions.setdefault(passage.file, set()).add(passage.id.rsplit("-", 1)[0])
    return {"listing": listing,
            "texts": {f: classify(archive.file_text(f).text) for f in dict.fromkeys(listing)},
            "revisions": {f: len(r) for f, r in sorted(revisions.items())}}


def assert_one_version(seen: dict[str, Any], a_versions: set[str]) -> None:
    assert seen["listing"] == ["a.txt", "b.txt"], seen
    assert seen["texts"]["a.txt"] in a_versions and seen["texts"]["b.txt"] == "old b.txt", seen
    assert seen["revisions"] == {"a.txt": 1, "b.txt": 1}, seen


def stored(settings: Settings) -> dict[str, int]:
    """Chunks per collection of this archive, hidden ones included (the catalog too)."""
    store = ChromaStore(settings.archive, "unchecked", 1)
    client = store._client_now()
    prefix = settings.archive.collection
    return {c.name: c.count() for c in client.list_collections() if c.name.startswith(prefix)}


def test_readers_see_one_version_at_every_step_of_a_write(
    make_settings: Callable[..., Settings], monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = make_settings(**SMALL_CHUNKS)
    writer = seeded(settings)
    reader = reader_of(settings)
    monkeypatch.setattr(writer.store, "max_batch_size", lambda: 2)
    seen: list[dict[str, Any]] = []
    with on_chroma_writes(lambda method, target: seen.append(view(reader))):
        writer.ingest_bytes("a.txt", NEW_A.encode())
    seen.append(view(reader))
    for step in seen:
        assert_one_version(step, {"old a.txt", "new a.txt"})
    assert [s["texts"]["a.txt"] for s in (seen[0], seen[-1])] == ["old a.txt", "new a.txt"]
    assert len(seen) >= 5


@pytest.mark.parametrize("operation", ["ingest", "reindex"])
def test_a_failure_at_any_write_step_leaves_the_old_or_the_new_version(
    make_settings: Callable[..., Settings], operation: str
) -> None:
    outcomes = []
    for fail_at in range(1, 40):
        settings = make_settings(**SMALL_CHUNKS)
        seeded(settings)
        embedder = FIRST if operation == "ingest" else SECOND
        archive = open_archive(settings, embedder)
        calls = 0

        def fail(method: str, target: object, at: int = fail_at) -> None:
            nonlocal calls
            calls += 1
            if calls == at:
                raise RuntimeError(f"injected failure of {method}")

        with on_chroma_writes(fail):
            try:
                if operation == "ingest":
                    archive.ingest_bytes("a.txt", NEW_A.encode())
                else:
                    archive.reindex()
                done = True
            except (ArchiveUnavailable, RuntimeError):
                done = False
        outcomes.append(done)
        # What readers see now, and after a restart's recovery, with the model that built it.
        model = archive.store.all_records_unchecked()[0]
        assert model == (SECOND.name if done and operation == "reindex" else FIRST.name)
        used = FIRST if model == FIRST.name else SECOND
        for current in (reader_of(settings, used), open_archive(settings, used)):
            seen = view(current)
            assert_one_version(seen, {"new a.txt" if done and operation == "ingest"
                                      else "old a.txt"})
        chunks = {n: c for n, c in stored(settings).items() if not n.endswith(".catalog")}
        assert list(chunks.values()) == [open_archive(settings, used).store.count()], chunks
        if done:
            break
    assert outcomes[-1] and not any(outcomes[:-1]) and len(outcomes) >= 3, outcomes


def legacy_collection(settings: Settings, name: str, files: list[tuple[str, str, str]]) -> None:
    """Write ``files`` (name, text, ingested_at) as the code before commits did: chunks
    without ``revision``, in collection ``name``, no catalog."""
    store = ChromaStore(settings.archive, FIRST.name, FIRST.dimension)
    collection = store._client_now().get_or_create_collection(
        name, embedding_function=None, configuration={"hnsw": {"space": "cosine"}},
        metadata={"embedding_model": FIRST.name, "embedding_dimension": FIRST.dimension})
    for file, text, when in files:
        prepared = prepare(parse_document(file, text.encode()), FIRST, settings.archive)
        metadatas = [{k: v for k, v in m.items() if k != "revision"}
                     | ({"ingested_at": when} if m["chunk_index"] == 0 else {})
                     for m in prepared.metadatas]
        texts = [c.text for c in prepared.chunks]
        collection.upsert(ids=prepared.ids, embeddings=FIRST.embed(texts), documents=texts,
                          metadatas=metadatas)
    store.close()


def test_an_archive_from_before_commits_is_migrated(tmp_path: Path) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive", archive_collection="legacy",
                        **SMALL_CHUNKS)
    # a.txt twice: a crash of that code between writing a new version and deleting the old.
    legacy_collection(settings, "legacy", [
        ("a.txt", OLD["a.txt"], "2025-01-01T00:00:00+00:00"),
        ("a.txt", NEW_A, "2025-02-01T00:00:00+00:00"),
        ("b.txt", OLD["b.txt"], "2025-01-01T00:00:00+00:00")])
    archive = open_archive(settings)
    assert_one_version(view(archive), {"new a.txt"})  # the newest complete version won
    assert list(stored(settings).values()).count(archive.store.count()) == 1
    archive.ingest_bytes("b.txt", story(9).encode())
    assert [f.file for f in archive.files().files] == ["a.txt", "b.txt"]
    assert archive.file_text("b.txt").text == story(9)
    assert {r.metadata.get("revision") is not None for r in archive.store.get()} == {True}


def test_the_only_copy_an_old_interrupted_reindex_left_is_kept(tmp_path: Path) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive", archive_collection="legacy",
                        **SMALL_CHUNKS)
    # That code dropped the archive before renaming its rebuilt copy; a failed rename left the
    # copy alone, and the next read made an empty archive collection.
    legacy_collection(settings, "legacy-reindex", [
        (name, text, "2025-01-01T00:00:00+00:00") for name, text in OLD.items()])
    legacy_collection(settings, "legacy", [])
    archive = open_archive(settings)
    assert_one_version(view(archive), {"old a.txt"})
    result = open_archive(settings, SECOND).reindex()
    assert result.files == 2
    assert_one_version(view(reader_of(settings, SECOND)), {"old a.txt"})
    left = sorted(stored(settings))  # the adopted copy and the empty collection are gone
    assert len(left) == 2 and left[0] == "legacy.catalog" and left[1].startswith("legacy.g")


def test_a_commit_never_falls_between_a_readers_catalog_and_its_query(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    settings = Settings(archive_db_path=tmp_path / "archive", **SMALL_CHUNKS)
    archive = seeded(settings)
    store = archive.store
    read_catalog = store._read_catalog
    snapshot, release_reader, staged = threading.Event(), threading.Event(), threading.Event()

    def paused(*args: Any, **kwargs: Any) -> Any:
        catalog = read_catalog(*args, **kwargs)
        if threading.current_thread().name == "reader":
            snapshot.set()
            release_reader.wait(10)
        return catalog

    def writes(method: str, target: Any) -> None:
        # The writer stops before its commit (its second catalog write), chunks staged.
        if threading.current_thread().name == "writer" and getattr(
                target, "name", "").endswith(".catalog") and method == "upsert":
            writes.catalog_upserts += 1  # type: ignore[attr-defined]
            if writes.catalog_upserts == 2:  # type: ignore[attr-defined]
                staged.set()
                release_reader.wait(10)

    writes.catalog_upserts = 0  # type: ignore[attr-defined]
    monkeypatch.setattr(store, "_read_catalog", paused)
    seen: dict[str, Any] = {}
    reader = threading.Thread(name="reader", target=lambda: seen.update(
        listing=[f.file for f in archive.files().files]))
    writer = threading.Thread(target=lambda: archive.ingest_bytes("a.txt", NEW_A.encode()),
                              name="writer")
    with on_chroma_writes(writes):
        reader.start()
        assert snapshot.wait(10)
        writer.start()
        # The writer waits for the reader that holds a catalog: it stages nothing meanwhile.
        assert not staged.wait(1.0)
        release_reader.set()
        reader.join(10)
        writer.join(10)
    assert seen["listing"] == ["a.txt", "b.txt"]
    assert_one_version(view(archive), {"new a.txt"})
