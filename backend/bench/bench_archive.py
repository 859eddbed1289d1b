"""Archive benchmark: ingest throughput and search latency, ours beside plain chromadb +
sentence-transformers, measured in the same run on the same model object.

    python bench/bench_archive.py [--corpus DIR] [--queries N] [--top-k K]

Ingest (``--rounds`` times, alternating which side goes first): the whole corpus (every
.txt/.md/.docx/.html under --corpus, default ``../shared/corpus`` from the repository root) into a
fresh embedded store. "Ours" is ``Archive.ingest_bytes`` per file: parsing, chunking, ids,
embedding, writing, replacement bookkeeping. "Direct" is ``SentenceTransformer.encode`` on the same
chunk texts plus ``collection.add`` with the same ids: the least any archive on these libraries must
do. Throughput is chunks/s and MB/s of file bytes (wall clock); the ratio is ours/direct in seconds
(1.0: no overhead; the goal is <= 1.1), in wall-clock and in CPU seconds of this process (the
steadier figure when other processes share the cores).

Search: --queries questions at that size, ours (``Archive.search``) and direct (encode the
query + ``collection.query``) alternating query by query so machine noise hits both alike;
p50/p95 latency in milliseconds.

These machines are noisy (2 shared cores): compare the ratio, not the absolute figures.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND))

import chromadb  # noqa: E402 - the direct baseline; the app itself imports it only in store.py
import numpy as np  # noqa: E402
from chromadb.config import Settings as ChromaSettings  # noqa: E402

from app.archive.documents import FORMATS, parse_document  # noqa: E402
from app.archive.embeddings import Embedder, set_threads  # noqa: E402
from app.archive.ingest import prepare  # noqa: E402
from app.archive.service import Archive  # noqa: E402
from app.config import Settings  # noqa: E402
from app.observability.metrics import Metrics  # noqa: E402

QUESTIONS = [
    "a letter signed K.K.K. with five orange pips",
    "a goose with a blue stone in its crop",
    "copying the Encyclopaedia Britannica for the league",
    "a snake comes down the bell-pull",
    "an engineer loses his thumb",
    "the photograph of Irene Adler",
    "a beggar with a twisted lip",
    "the Mad Hatter's tea party",
    "the Cheshire Cat vanishes leaving its grin",
    "who stole the tarts",
    "Alice grows very tall after drinking from a bottle",
    "the Caterpillar smoking a hookah on a mushroom",
    "a governess asked to cut her hair short",
    "a bride vanishes on her wedding day",
    "a coronet with missing beryls",
    "a typewriter and a missing fiancé",
    "the Mock Turtle's story",
    "playing croquet with flamingos",
    "a murder at Boscombe Pool",
    "the White Rabbit is late",
]


def percentile(values: list[float], q: float) -> float:
    """The q-th percentile (0-100) by linear interpolation."""
    return float(np.percentile(np.array(values), q))


class Clock:
    """Wall-clock and CPU seconds (this process, all threads) of a block."""

    def __enter__(self) -> Clock:
        self.wall, self.cpu = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *_: object) -> None:
        self.wall = time.perf_counter() - self.wall
        self.cpu = time.process_time() - self.cpu


def ingest_ours(files: list[Path], embedder: Embedder, path: Path) -> tuple[Clock, int, Archive]:
    archive = Archive.open(Settings(archive_db_path=path, archive_collection="bench-ours").archive,
                           Metrics(), embedder=embedder)
    with Clock() as clock:
        chunks = sum(archive.ingest_bytes(f.name, f.read_bytes()).chunks for f in files)
    return clock, chunks, archive


def ingest_direct(files: list[Path], embedder: Embedder, settings: Settings,
                  path: Path) -> tuple[Clock, int, object]:
    # The same chunk texts and ids as ours, prepared before the clock starts.
    texts, ids, metadatas = [], [], []
    for f in files:
        prepared = prepare(parse_document(f.name, f.read_bytes()), embedder, settings.archive)
        texts += [c.text for c in prepared.chunks]
        ids += prepared.ids
        metadatas += [{"file": f.name, "chunk_index": c.index} for c in prepared.chunks]
    model = embedder._model  # the very SentenceTransformer ours uses
    client = chromadb.PersistentClient(path=str(path),
                                       settings=ChromaSettings(anonymized_telemetry=False))
    with Clock() as clock:
        collection = client.get_or_create_collection(
            "bench-direct", embedding_function=None,
            configuration={"hnsw": {"space": "cosine"}})
        vectors = model.encode(texts, batch_size=settings.archive.embed_batch_size,
                               normalize_embeddings=True, convert_to_numpy=True,
                               show_progress_bar=False)
        batch = client.get_max_batch_size()
        for first in range(0, len(ids), batch):
            collection.add(ids=ids[first:first + batch],
                           embeddings=vectors[first:first + batch],
                           documents=texts[first:first + batch],
                           metadatas=metadatas[first:first + batch])
    return clock, len(ids), collection


def search_both(archive: Archive, collection: object, embedder: Embedder, queries: int,
                top_k: int) -> tuple[list[float], list[float]]:
    model = embedder._model
    ours, direct = [], []
    for i in range(queries):
        question = QUESTIONS[i % len(QUESTIONS)]

        # Both closures run below, in this iteration.
        def run_ours(question: str = question) -> None:
            started = time.perf_counter()
            archive.search(question, top_k)
            ours.append((time.perf_counter() - started) * 1000)

        def run_direct(question: str = question) -> None:
            started = time.perf_counter()
            vector = model.encode([question], normalize_embeddings=True, convert_to_numpy=True,
                                  show_progress_bar=False)
            collection.query(query_embeddings=vector, n_results=top_k,  # type: ignore[attr-defined]
                             include=["metadatas", "documents", "distances"])
            direct.append((time.perf_counter() - started) * 1000)

        for step in ((run_ours, run_direct) if i % 2 == 0 else (run_direct, run_ours)):
            step()
    return ours, direct


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, default=BACKEND.parent.parent / "shared" / "corpus")
    parser.add_argument("--queries", type=int, default=100)
    parser.add_argument("--top-k", type=int, default=5)
    parser.add_argument("--rounds", type=int, default=2,
                        help="ingest rounds, alternating which side goes first (mean reported)")
    args = parser.parse_args()

    files = sorted(p for p in args.corpus.rglob("*") if p.suffix.lower() in FORMATS
                   and p.name.lower() != "readme.md")
    megabytes = sum(p.stat().st_size for p in files) / 1e6
    settings = Settings()
    embedder = Embedder.load(settings.archive.embedding_model)
    set_threads(settings.archive.embedding_threads)
    embedder.embed(["warm-up"] * 8)  # first-call costs (thread pools, allocations) off the clock

    with tempfile.TemporaryDirectory() as tmp:
        # ABBA...: alternate which goes first so drifting machine load hits both alike.
        ours_s = direct_s = ours_cpu = direct_cpu = 0.0
        for r in range(args.rounds):
            base = Path(tmp) / f"round{r}"
            for which in (("direct", "ours") if r % 2 == 0 else ("ours", "direct")):
                if which == "direct":
                    clock, direct_chunks, collection = ingest_direct(
                        files, embedder, settings, base / "direct")
                    direct_s, direct_cpu = direct_s + clock.wall, direct_cpu + clock.cpu
                else:
                    clock, ours_chunks, archive = ingest_ours(files, embedder, base / "ours")
                    ours_s, ours_cpu = ours_s + clock.wall, ours_cpu + clock.cpu
        ours_s, direct_s = ours_s / args.rounds, direct_s / args.rounds
        ours_cpu, direct_cpu = ours_cpu / args.rounds, direct_cpu / args.rounds
        assert ours_chunks == direct_chunks, (ours_chunks, direct_chunks)
        ours_ms, direct_ms = search_both(archive, collection, embedder, args.queries,
                                         args.top_k)

    print(f"corpus: {len(files)} files, {megabytes:.2f} MB, {ours_chunks} chunks of <= "
          f"{settings.archive.chunk_tokens} tokens ({settings.archive.chunk_overlap_tokens} "
          f"overlap), model {embedder.name}, "
          f"{settings.archive.embedding_threads} embedding thread(s)")
    rows = [
        (f"ingest wall seconds (mean of {args.rounds})", ours_s, direct_s, ours_s / direct_s),
        ("ingest CPU seconds (all threads)", ours_cpu, direct_cpu, ours_cpu / direct_cpu),
        ("ingest chunks/s", ours_chunks / ours_s, direct_chunks / direct_s, ours_s / direct_s),
        ("ingest MB/s", megabytes / ours_s, megabytes / direct_s, ours_s / direct_s),
        (f"search p50 ms ({args.queries} queries, top-{args.top_k})",
         statistics.median(ours_ms), statistics.median(direct_ms),
         statistics.median(ours_ms) / statistics.median(direct_ms)),
        ("search p95 ms", percentile(ours_ms, 95), percentile(direct_ms, 95),
         percentile(ours_ms, 95) / percentile(direct_ms, 95)),
    ]
    print(f"{'operation':<44} {'ours':>10} {'direct':>10} {'overhead':>9}")
    for name, ours, direct, ratio in rows:
        print(f"{name:<44} {ours:>10.4g} {direct:>10.4g} {ratio:>8.3f}x")
    print("overhead = ours time / direct time (for throughputs: direct rate / our rate); "
          "goal <= 1.1.\nCPU seconds are the steadier ingest ratio when other processes load "
          "the machine; throughputs are wall-clock.")


if __name__ == "__main__":
    main()
