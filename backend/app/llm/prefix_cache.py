"""A prefix cache of KV states: snapshots of the model's state after a story's shared block.

Every agent on one story sees the same shared block (see ``app.context.assembly``), so the KV
state after it can be kept and put back when the story comes round again: after another
story, after a summary, after a restart (disk tier). A snapshot holds what llama.cpp's
per-sequence state API gives for the prompt's sequence (``llama_state_seq_get_data``: the KV
cells of its tokens, no logits), which llama-server also uses to save and restore slots; the
bytes are opaque here.

Entries live in a namespace (the model file's SHA-256, the KV cache type and the tenant), so a
snapshot is only ever offered to the tenant it was made for, on the model it was made with.
The memory tier is least recently used under a byte budget; the optional disk tier is a
``diskcache.Cache`` (SQLite plus files, least recently used under its own byte budget),
written behind the memory tier by one background thread so the model never waits for a disk.
"""

from __future__ import annotations

import hashlib
import logging
import threading
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path

import diskcache
import numpy as np

logger = logging.getLogger(__name__)

Tokens = np.ndarray  # one-dimensional, dtype int32


def as_tokens(tokens: object) -> Tokens:
    """Token ids as a one-dimensional int32 array (what entries are keyed and compared by)."""
    return np.asarray(tokens, dtype=np.int32).reshape(-1)


def digest(tokens: Tokens) -> str:
    """SHA-256 of the token ids (hex): an entry's identity within its namespace."""
    return hashlib.sha256(as_tokens(tokens).tobytes()).hexdigest()


def common_prefix(a: Tokens, b: Tokens) -> int:
    """Length of the longest common prefix of two token arrays (vectorised)."""
    n = min(len(a), len(b))
    if n == 0:
        return 0
    differ = np.flatnonzero(a[:n] != b[:n])
    return int(differ[0]) if len(differ) else n


@dataclass(frozen=True)
class Snapshot:
    """The model's KV state after ``tokens``: opaque ``state`` bytes from the backend, in a
    ``bytearray`` so llama.cpp can write and read them in place (nothing ever changes them
    once saved)."""

    tokens: Tokens
    state: bytearray

    @property
    def nbytes(self) -> int:
        """Bytes it takes in memory (state plus token ids)."""
        return len(self.state) + self.tokens.nbytes


@dataclass(frozen=True)
class Match:
    """A snapshot whose first ``length`` tokens are the start of a prompt; ``tier`` is
    ``memory`` or ``disk`` (a disk match is read in before it is restored)."""

    namespace: str
    key: str
    length: int
    tokens: int
    nbytes: int
    tier: str


@dataclass
class CacheStats:
    """Counters since start (read by the metrics at scrape time)."""

    lookups: int = 0
    hits_memory: int = 0
    hits_disk: int = 0
    saves: int = 0
    restores: int = 0
    evictions: int = 0
    disk_writes: int = 0
    disk_errors: int = 0
    save_seconds: float = 0.0
    restore_seconds: float = 0.0
    memory_bytes: int = 0
    memory_entries: int = 0
    saved_bytes: int = 0
    saved_tokens: int = 0


@dataclass
class _DiskIndex:
    """Token ids of the snapshots on disk, by namespace and key (the states stay on disk)."""

    tokens: dict[str, dict[str, Tokens]] = field(default_factory=dict)
    nbytes: dict[str, int] = field(default_factory=dict)


class PrefixCache:
    """Snapshots by namespace, in memory under ``memory_bytes`` and optionally on disk.

    ``directory``: the disk tier's directory (created if missing), ``None`` for memory only;
    ``disk_bytes``: its byte budget. Thread-safe: the model thread looks up and saves, the
    disk writer thread writes, the metrics read :attr:`stats`.
    """

    def __init__(self, memory_bytes: int, directory: Path | None = None,
                 disk_bytes: int = 8 << 30) -> None:
        self.memory_bytes = memory_bytes
        self.stats = CacheStats()
        self._lock = threading.Lock()
        self._memory: OrderedDict[tuple[str, str], Snapshot] = OrderedDict()
        self._disk: diskcache.Cache | None = None
        self._index = _DiskIndex()
        self._writer: ThreadPoolExecutor | None = None
        if directory is not None:
            directory.mkdir(parents=True, exist_ok=True)
            self._disk = diskcache.Cache(str(directory), size_limit=disk_bytes,
                                         eviction_policy="least-recently-used")
            self._writer = ThreadPoolExecutor(max_workers=1, thread_name_prefix="kv-disk")
            self._load_index()

    # --- lookups -------------------------------------------------------------------------
    def best(self, namespace: str, tokens: Tokens) -> Match | None:
        """The snapshot of ``namespace`` sharing the longest prefix with ``tokens``, memory
        tier first on a tie; ``None`` when none shares a token."""
        tokens = as_tokens(tokens)
        best: Match | None = None
        with self._lock:
            self.stats.lookups += 1
            for (space, key), snapshot in self._memory.items():
                if space != namespace:
                    continue
                length = common_prefix(snapshot.tokens, tokens)
                if length and (best is None or length > best.length):
                    best = Match(space, key, length, len(snapshot.tokens), snapshot.nbytes,
                                 "memory")
            for key, stored in self._index.tokens.get(namespace, {}).items():
                if (namespace, key) in self._memory:
                    continue
                length = common_prefix(stored, tokens)
                if length and (best is None or length > best.length):
                    best = Match(namespace, key, length, len(stored),
                                 self._index.nbytes.get(key, 0), "disk")
        return best

    def contains(self, namespace: str, tokens: Tokens) -> bool:
        """Whether a snapshot of exactly ``tokens`` is kept (in either tier)."""
        key = digest(tokens)
        with self._lock:
            return (namespace, key) in self._memory or key in self._index.tokens.get(
                namespace, {})

    def get(self, match: Match) -> Snapshot | None:
        """The snapshot ``match`` points at (read from disk and kept in memory if it was
        there); ``None`` if it was evicted meanwhile."""
        with self._lock:
            snapshot = self._memory.get((match.namespace, match.key))
            if snapshot is not None:
                self._memory.move_to_end((match.namespace, match.key))
                self.stats.hits_memory += 1
                return snapshot
        self.flush()  # it may still be on its way to the disk
        snapshot = self._read_disk(match.namespace, match.key)
        if snapshot is not None:
            with self._lock:
                self.stats.hits_disk += 1
                self._keep(match.namespace, match.key, snapshot)
        return snapshot

    # --- saving --------------------------------------------------------------------------
    def put(self, namespace: str, snapshot: Snapshot, seconds: float = 0.0) -> None:
        """Keep ``snapshot`` (evicting the least recently used past the byte budget) and
        write it to the disk tier in the background. ``seconds``: what saving it took."""
        key = digest(snapshot.tokens)
        with self._lock:
            self.stats.saves += 1
            self.stats.save_seconds += seconds
            self.stats.saved_bytes += len(snapshot.state)
            self.stats.saved_tokens += len(snapshot.tokens)
            self._keep(namespace, key, snapshot)
            if self._writer is not None:
                self._index.tokens.setdefault(namespace, {})[key] = snapshot.tokens
                self._index.nbytes[key] = snapshot.nbytes
        if self._writer is not None:
            self._writer.submit(self._write_disk, namespace, key, snapshot)

    def restored(self, seconds: float) -> None:
        """Count one restore that took ``seconds``."""
        with self._lock:
            self.stats.restores += 1
            self.stats.restore_seconds += seconds

    def _keep(self, namespace: str, key: str, snapshot: Snapshot) -> None:
        """Into the memory tier (lock held); evict past the budget. A snapshot larger than
        the whole budget is not kept in memory."""
        if snapshot.nbytes > self.memory_bytes:
            return
        old = self._memory.pop((namespace, key), None)
        if old is not None:
            self.stats.memory_bytes -= old.nbytes
        self._memory[(namespace, key)] = snapshot
        self.stats.memory_bytes += snapshot.nbytes
        while self.stats.memory_bytes > self.memory_bytes:
            _, evicted = self._memory.popitem(last=False)
            self.stats.memory_bytes -= evicted.nbytes
            self.stats.evictions += 1
        self.stats.memory_entries = len(self._memory)

    # --- disk tier -----------------------------------------------------------------------
    def _load_index(self) -> None:
        assert self._disk is not None
        for name in list(self._disk.iterkeys()):
            if not isinstance(name, str) or not name.endswith("/tokens"):
                continue
            namespace, key, _ = name.rsplit("/", 2)
            raw = self._disk.get(name)
            if not isinstance(raw, bytes):
                continue
            tokens = np.frombuffer(raw, dtype=np.int32)
            self._index.tokens.setdefault(namespace, {})[key] = tokens
            self._index.nbytes[key] = int(self._disk.get(f"{namespace}/{key}/nbytes", 0) or 0)
        count = sum(len(keys) for keys in self._index.tokens.values())
        if count:
            logger.info("prefix cache: %d snapshot(s) on disk", count)

    def _write_disk(self, namespace: str, key: str, snapshot: Snapshot) -> None:
        """Writer thread: the state first, then its tokens (what the index reads), so a
        crash in between leaves no index entry without a state."""
        assert self._disk is not None
        try:
            self._disk.set(f"{namespace}/{key}/state", bytes(snapshot.state))
            self._disk.set(f"{namespace}/{key}/nbytes", snapshot.nbytes)
            self._disk.set(f"{namespace}/{key}/tokens", snapshot.tokens.tobytes())
            with self._lock:
                self.stats.disk_writes += 1
        except Exception:  # a full or broken disk only loses the disk tier
            logger.exception("prefix cache: writing a snapshot to disk failed")
            with self._lock:
                self.stats.disk_errors += 1
                self._index.tokens.get(namespace, {}).pop(key, None)

    def _read_disk(self, namespace: str, key: str) -> Snapshot | None:
        if self._disk is None:
            return None
        state = self._disk.get(f"{namespace}/{key}/state")
        raw = self._disk.get(f"{namespace}/{key}/tokens")
        if not isinstance(state, bytes) or not isinstance(raw, bytes):
            with self._lock:  # evicted by diskcache since the index was read
                self._index.tokens.get(namespace, {}).pop(key, None)
            return None
        return Snapshot(np.frombuffer(raw, dtype=np.int32).copy(), bytearray(state))

    def flush(self) -> None:
        """Wait for pending disk writes."""
        if self._writer is not None:
            self._writer.submit(lambda: None).result()

    def close(self) -> None:
        """Finish pending disk writes and close the disk tier."""
        if self._writer is not None:
            self._writer.shutdown(wait=True)
            self._writer = None
        if self._disk is not None:
            self._disk.close()
            self._disk = None
