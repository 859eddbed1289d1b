"""Fast stand-ins for the archive's heavy parts, for the fault and crash tests (which open
many archives, some in subprocesses): a hashing "embedding model" and write-call hooks on
Chroma's own client classes.

Nothing here loads torch or the sentence-transformers model.
"""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

import numpy as np

from app.archive.embeddings import Embedder

WORDS = ["keeper", "lamp", "storm", "gull", "rock", "tide", "ship", "rope", "glass", "night",
         "dawn", "log", "fog", "bell", "oar", "harbour", "sail", "anchor", "lantern", "stair"]

#: Chroma's methods that change what is stored: (module, class, method names).
WRITE_METHODS = (
    ("chromadb.api.models.Collection", "Collection", ("add", "upsert", "update", "delete",
                                                      "modify")),
    ("chromadb.api.client", "Client", ("create_collection", "get_or_create_collection",
                                       "delete_collection")),
)


def story(seed: int, words: int = 70) -> str:
    """A made-up text of ``words`` words in sentences (several chunks at 24 tokens)."""
    out = [WORDS[(seed * 7 + i * (seed + 3)) % len(WORDS)] for i in range(words)]
    return " ".join(w + ("." if i % 9 == 8 else "") for i, w in enumerate(out)) + ".\n"


#: Two files as first archived, and a new version of the first.
OLD = {"a.txt": story(1), "b.txt": story(2)}
NEW_A = story(5)


def classify(text: str) -> str:
    """Which of the known texts ``text`` is: ``old a.txt``, ``old b.txt``, ``new a.txt``, or
    ``garbled``."""
    known = {"old a.txt": OLD["a.txt"], "old b.txt": OLD["b.txt"], "new a.txt": NEW_A}
    return next((label for label, known_text in known.items() if known_text == text), "garbled")


class HashEmbedder(Embedder):
    """A deterministic fake embedding model: a text's vector comes from its SHA-256, a token
    is a whitespace-separated word. Similar texts are not close; tests that need real
    similarity use the real model."""

    def __init__(self, name: str = "test/hash-embedder", dimension: int = 16) -> None:
        self.name, self.dimension, self.max_tokens = name, dimension, 256

    def count_tokens(self, text: str) -> int:
        return len(text.split())

    def embed(self, texts: Sequence[str], *, batch_size: int = 32,
              progress: Callable[[int], None] | None = None) -> np.ndarray:
        rows = np.zeros((len(texts), self.dimension), dtype=np.float32)
        for i, text in enumerate(texts):
            digest = hashlib.sha256(text.encode()).digest() * (1 + self.dimension // 32)
            rows[i] = np.frombuffer(digest[:self.dimension], dtype=np.uint8) + 1.0
        if progress is not None:
            progress(len(texts))
        return rows / np.linalg.norm(rows, axis=1, keepdims=True)


@contextmanager
def on_chroma_writes(hook: Callable[[str, Any], None]) -> Iterator[None]:
    """Call ``hook(method name, collection or client)`` before every Chroma call that writes
    (in this process), whatever store makes it; the hook may raise to make that call fail.
    Writes the hook itself makes are not reported to it."""
    import importlib

    inside = threading.local()
    saved: list[tuple[Any, str, Any]] = []
    for module_name, class_name, methods in WRITE_METHODS:
        cls = getattr(importlib.import_module(module_name), class_name)
        for method in methods:
            original = cls.__dict__[method]

            def wrapper(*args: Any, _original: Any = original, _name: str = method,
                        **kwargs: Any) -> Any:
                if not getattr(inside, "hook", False):
                    inside.hook = True
                    try:
                        hook(_name, args[0])
                    finally:
                        inside.hook = False
                return _original(*args, **kwargs)

            saved.append((cls, method, original))
            setattr(cls, method, wrapper)
    try:
        yield
    finally:
        for cls, method, original in saved:
            setattr(cls, method, original)
