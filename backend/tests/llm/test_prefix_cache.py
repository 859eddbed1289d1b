"""The prefix cache's bookkeeping: longest-prefix lookup, namespaces, byte budget, disk tier."""

import numpy as np

from app.llm.prefix_cache import PrefixCache, Snapshot, as_tokens, common_prefix


def snap(tokens, size=100):
    return Snapshot(as_tokens(tokens), bytearray(size))


def test_common_prefix():
    a = as_tokens([1, 2, 3, 4])
    assert common_prefix(a, as_tokens([1, 2, 9])) == 2
    assert common_prefix(a, as_tokens([1, 2, 3, 4, 5])) == 4
    assert common_prefix(a, as_tokens([7])) == 0
    assert common_prefix(a, as_tokens([])) == 0


def test_the_longest_prefix_in_the_namespace_wins():
    cache = PrefixCache(memory_bytes=10_000)
    cache.put("t1", snap([1, 2, 3]))
    cache.put("t1", snap([1, 2, 3, 4, 5]))
    cache.put("t1", snap([9, 9]))
    match = cache.best("t1", as_tokens([1, 2, 3, 4, 5, 6, 7]))
    assert match is not None and match.length == 5 and match.tier == "memory"
    snapshot = cache.get(match)
    assert snapshot is not None and list(snapshot.tokens) == [1, 2, 3, 4, 5]
    # a partial match is still a match: the KV cells past it are dropped after restoring
    assert cache.best("t1", as_tokens([1, 2, 7])).length == 2
    assert cache.best("t1", as_tokens([5, 5])) is None
    assert cache.contains("t1", as_tokens([1, 2, 3]))
    assert not cache.contains("t1", as_tokens([1, 2]))


def test_namespaces_never_mix():
    cache = PrefixCache(memory_bytes=10_000)
    cache.put("model:f16:alice", snap([1, 2, 3]))
    assert cache.best("model:f16:bob", as_tokens([1, 2, 3, 4])) is None
    assert not cache.contains("model:f16:bob", as_tokens([1, 2, 3]))
    assert cache.best("model:f16:alice", as_tokens([1, 2, 3, 4])).length == 3


def test_least_recently_used_goes_first_past_the_byte_budget():
    cache = PrefixCache(memory_bytes=350)  # three snapshots of ~112 bytes each fit
    for first in (1, 2, 3):
        cache.put("n", snap([first, 0, 0]))
    cache.get(cache.best("n", as_tokens([1, 0, 0])))  # 1 is now the most recent
    cache.put("n", snap([4, 0, 0]))
    assert cache.stats.evictions == 1
    assert cache.best("n", as_tokens([2, 0, 0])) is None  # the least recently used
    for kept in (1, 3, 4):
        assert cache.best("n", as_tokens([kept, 0, 0])).length == 3
    assert cache.stats.memory_bytes <= 350 and cache.stats.memory_entries == 3
    # a snapshot larger than the whole budget is not kept at all
    cache.put("n", snap([5], size=1000))
    assert cache.best("n", as_tokens([5])) is None and cache.stats.memory_bytes <= 350


def test_the_disk_tier_keeps_snapshots_across_a_restart(tmp_path):
    first = PrefixCache(memory_bytes=10_000, directory=tmp_path, disk_bytes=1 << 20)
    first.put("n", Snapshot(as_tokens([1, 2, 3]), bytearray(b"state-bytes")))
    first.close()
    again = PrefixCache(memory_bytes=10_000, directory=tmp_path, disk_bytes=1 << 20)
    match = again.best("n", as_tokens([1, 2, 3, 4]))
    assert match is not None and match.tier == "disk" and match.length == 3
    snapshot = again.get(match)
    assert snapshot is not None and snapshot.state == b"state-bytes"
    assert np.array_equal(snapshot.tokens, as_tokens([1, 2, 3]))
    assert again.stats.hits_disk == 1
    assert again.best("n", as_tokens([1, 2, 3])).tier == "memory"  # read in, kept in memory
    assert again.best("other", as_tokens([1, 2, 3])) is None
    again.close()


def test_a_snapshot_evicted_from_memory_is_still_on_disk(tmp_path):
    cache = PrefixCache(memory_bytes=150, directory=tmp_path, disk_bytes=1 << 20)
    cache.put("n", snap([1, 1]))
    cache.put("n", snap([2, 2]))  # evicts [1, 1] from memory
    cache.flush()
    match = cache.best("n", as_tokens([1, 1, 5]))
    assert match is not None and match.tier == "disk"
    assert cache.get(match) is not None
    cache.close()


def test_reuse_stops_where_the_evaluation_schedules_part():
    from app.llm.llama import _Schedule

    prompt = _Schedule(shared=5952, last=6043)
    # the same prompt again: all but the last token (generate evaluates it alone)
    assert prompt.reusable(6044, _Schedule(5952, 6043), 512) == 6043
    # another agent on the same story: the shared block
    assert prompt.reusable(5960, _Schedule(5952, 6040), 512) == 5952
    # a snapshot of the block
    assert prompt.reusable(5952, _Schedule(5952, 5952), 512) == 5952
    # a longer story's state agrees only up to its last whole chunk before the difference
    assert prompt.reusable(6000, _Schedule(6400, 6500), 512) == 11 * 512
    # nothing shared, no prompt state
    assert prompt.reusable(0, _Schedule(5952, 6043), 512) == 0
    assert _Schedule(0, 900).reusable(700, _Schedule(0, 1000), 512) == 512
