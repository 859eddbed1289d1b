"""A cheap stand-in for the embedding model, for tests of everything around the archive but
its retrieval quality (parsing, uploads, the fuzz run): no model to load, microseconds a text.

Words are hashed into a few dimensions, so texts that share words are close; that is all.
"""

from __future__ import annotations

import re
import threading
import zlib
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

import numpy as np
import pytest

from app.archive.embeddings import Embedder

_WORD = re.compile(r"\w+|[^\w\s]")


class HashEmbedder(Embedder):
    """Bag-of-hashed-words vectors; tokens are words and punctuation marks."""

    def __init__(self, dimension: int = 32) -> None:  # no model: Embedder's own init loads one
        self.name = "test/hash-embedder"
        self.dimension = dimension
        self.max_tokens = 254
        self._lock = threading.Lock()

    def count_tokens(self, text: str) -> int:
        return len(_WORD.findall(text))

    def embed(self, texts: Sequence[str], *, batch_size: int = 32,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            for word in _WORD.findall(text.casefold()):
                rows[i, zlib.crc32(word.encode()) % self.dimension] += 1.0
            norm = float(np.linalg.norm(rows[i]))
            if norm:
                rows[i] /= norm
            else:
                rows[i, 0] = 1.0
        if progress is not None:
            progress(len(texts))
        return rows


@contextmanager
def hash_embedder() -> Iterator[HashEmbedder]:
    """While open, every archive that loads its embedding model gets a :class:`HashEmbedder`."""
    embedder = HashEmbedder()
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(Embedder, "load", classmethod(lambda cls, model=None: embedder))
        yield embedder
