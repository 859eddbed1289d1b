"""The SQLite generation store on its own: tenants, frecency eviction under a byte budget,
retention, reopening."""

from __future__ import annotations

import sqlite3
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from app.generations.records import (
    GenerationRecord,
    ModelRecord,
    RecordQuery,
    SamplingRecord,
    request_sha256,
)
from app.generations.store import SqliteGenerationStore
from app.schemas.requests import GenerateChapterRequest
from app.schemas.responses import TimingsOut
from app.schemas.usage import Usage

DAY = 86_400.0


def _record(id_: str, tenant: str = "alice", *, text: str = "Aria listened.",
            story: str | None = None, at: datetime | None = None) -> GenerationRecord:
    return GenerationRecord(
        id=id_, tenant=tenant, created_at=at or datetime.now(UTC),
        operation="generate-chapter", story_id=story, request_sha256="0" * 64,
        model=ModelRecord(name="m", sha256="1" * 64, runtime="r"),
        sampling=SamplingRecord(max_tokens=8, temperature=0.7, top_p=0.9, top_k=40,
                                repeat_penalty=1.1, seed=1),
        text=text, usage=Usage(prompt_tokens=3, completion_tokens=2, total_tokens=5),
        timings=TimingsOut(queue_ms=0, time_to_first_token_ms=1, total_ms=2,
                           decode_tokens_per_s=0))


@pytest.fixture
def store(tmp_path: Path):
    opened = SqliteGenerationStore.open(tmp_path / "g.sqlite3", half_life_s=DAY)
    yield opened
    opened.close()


def test_a_record_reads_back_whole_for_its_tenant_only(store):
    store.put(_record("gen_a", text="x" * 1000))
    got = store.get("alice", "gen_a")
    assert got is not None and got.text == "x" * 1000 and got.tenant == "alice"
    assert store.get("bob", "gen_a") is None
    assert store.delete("bob", "gen_a") is False and store.get("alice", "gen_a") is not None


def test_the_cache_is_per_tenant(store):
    store.put(_record("gen_a"), cache_key="k", cache_max_bytes=10**6)
    assert store.cached("alice", "k") is not None
    assert store.cached("bob", "k") is None


def test_eviction_keeps_the_frequently_and_recently_used(store):
    now = 1_000_000.0
    size = len(_record("gen_x").model_dump_json()) + 200  # each record's bytes, roughly
    budget = 3 * size
    for name in "abc":
        store.put(_record(f"gen_{name}"), cache_key=name, cache_max_bytes=budget, now=now)
    for _ in range(5):  # a is used often
        assert store.cached("alice", "a", now=now + 10) is not None
    assert store.cached("alice", "c", now=now + 20) is not None  # c recently
    store.put(_record("gen_d"), cache_key="d", cache_max_bytes=budget, now=now + 30)
    kept = {key for key in "abcd" if store.cached("alice", key, now=now + 31) is not None}
    assert "b" not in kept and {"a", "d"} <= kept  # b: used once, longest ago
    assert store.cache_stats().bytes <= budget
    # the evicted entry's record stays (records leave by retention or deletion)
    assert store.get("alice", "gen_b") is not None


def test_old_uses_fade(store):
    """Many uses long ago count less than a few now: the use count halves every half-life."""
    budget = 2 * (len(_record("gen_x").model_dump_json()) + 200)
    store.put(_record("gen_old"), cache_key="old", cache_max_bytes=budget, now=0.0)
    for _ in range(8):
        store.cached("alice", "old", now=1.0)
    store.put(_record("gen_new"), cache_key="new", cache_max_bytes=budget, now=10 * DAY)
    store.cached("alice", "new", now=10 * DAY)
    store.put(_record("gen_newer"), cache_key="newer", cache_max_bytes=budget,
              now=10 * DAY + 1)
    assert store.cached("alice", "old", now=10 * DAY + 2) is None
    assert store.cached("alice", "new", now=10 * DAY + 2) is not None


def test_a_record_larger_than_the_budget_is_not_cached(store):
    store.put(_record("gen_a", text="x" * 5000), cache_key="a", cache_max_bytes=100)
    assert store.cached("alice", "a") is None and store.get("alice", "gen_a") is not None


def test_deleting_a_record_drops_its_cache_entry(store):
    store.put(_record("gen_a"), cache_key="a", cache_max_bytes=10**6)
    assert store.delete("alice", "gen_a") is True
    assert store.cached("alice", "a") is None and store.cache_stats().entries == 0


def test_purge_removes_what_is_older_than_the_cutoff(store):
    now = datetime.now(UTC)
    store.put(_record("gen_old", at=now - timedelta(days=40)), cache_key="o",
              cache_max_bytes=10**6)
    store.put(_record("gen_new", at=now))
    assert store.purge((now - timedelta(days=30)).timestamp()) == 1
    assert store.get("alice", "gen_old") is None and store.get("alice", "gen_new") is not None
    assert store.cached("alice", "o") is None


def test_find_filters_and_pages(store):
    base = datetime(2026, 1, 1, tzinfo=UTC)
    for i in range(5):
        store.put(_record(f"gen_{i}", story="s" if i % 2 else None,
                          at=base + timedelta(minutes=i)))
    store.put(_record("gen_bob", tenant="bob", story="s", at=base))
    records, total = store.find("alice", RecordQuery(story_id="s"))
    assert [r.id for r in records] == ["gen_3", "gen_1"] and total == 2
    records, total = store.find("alice", RecordQuery(limit=2, offset=1))
    assert [r.id for r in records] == ["gen_3", "gen_2"] and total == 5
    records, _ = store.find("alice", RecordQuery(since=base + timedelta(minutes=3),
                                                 until=base + timedelta(minutes=4)))
    assert [r.id for r in records] == ["gen_3"]


def test_the_store_survives_reopening(tmp_path):
    path = tmp_path / "g.sqlite3"
    first = SqliteGenerationStore.open(path)
    first.put(_record("gen_a"), cache_key="a", cache_max_bytes=10**6)
    first.close()
    again = SqliteGenerationStore.open(path)
    try:
        assert again.get("alice", "gen_a") is not None
        assert again.cached("alice", "a") is not None
    finally:
        again.close()


def test_a_file_that_is_not_a_database_is_refused(tmp_path):
    path = tmp_path / "g.sqlite3"
    path.write_bytes(b"not a database at all" * 100)
    with pytest.raises(sqlite3.DatabaseError):
        SqliteGenerationStore.open(path)


def test_the_request_digest_ignores_serving_fields_only():
    plain = GenerateChapterRequest(plot_point="Aria enters the forest.")
    assert request_sha256(plain) == request_sha256(
        plain.model_copy(update={"cache": False, "store_request": True}))
    assert request_sha256(plain) != request_sha256(plain.model_copy(update={"seed": 1}))
