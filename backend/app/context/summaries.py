"""Making and caching summaries with the served model.

The cache is a ``diskcache.Cache`` (SQLite on disk, size-bounded, least-recently-used
eviction): summaries survive restarts and are keyed by the model, the tenant, the strategy,
the target length and a hash of the source text, so a second request of the same tenant over
the same story makes no summarization calls, and no tenant can tell from ``cache_hits`` what
another one sent.

A cache that fails (its database corrupt or unreadable) never fails a request: the lookup is a
miss, the write is skipped, and a corrupt database is moved aside and made anew.
"""

from __future__ import annotations

import logging
import sqlite3
import threading
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import diskcache

from app.config import DistillationSettings, SamplingSettings
from app.context.distill import GUIDANCE, Strategy, SummaryJob
from app.context.trim import CountTokens, split_to_budget, trim_to_budget
from app.llm.protocol import ChatMessage, Completion, SamplingParams, TextGenerator

logger = logging.getLogger(__name__)

SUMMARIZER_ROLE = (
    "You condense fiction for a writing assistant. Write a faithful, dense summary in plain "
    "prose, in the past tense, without commentary, headings or lists."
)
#: Tokens of the summarization prompt around the text (role, guidance, instruction, template),
#: an upper bound used to split inputs before counting the real prompt.
_PROMPT_OVERHEAD_TOKENS = 160
#: English prose runs at about 0.75 words per token (SmolLM2's BPE on the corpus: 0.74).
_WORDS_PER_TOKEN = 0.75
#: diskcache's SQLite files in the cache directory.
_DATABASE_FILES = ("cache.db", "cache.db-wal", "cache.db-shm")
#: What a failing cache raises: SQLite's errors, a lock held too long, the disk.
_CACHE_ERRORS = (sqlite3.Error, diskcache.Timeout, OSError)


def _corrupt(error: BaseException) -> bool:
    """Whether ``error`` says the database file is damaged (not SQLite, malformed), rather
    than busy, locked or out of disk (``OperationalError``: worth no rebuild)."""
    return isinstance(error, sqlite3.DatabaseError) and not isinstance(
        error, sqlite3.OperationalError)


class SummaryCache:
    """Persistent, size-bounded summary cache for one model, keyed per tenant.

    ``directory`` is created if missing; ``max_bytes`` bounds the cache on disk.
    ``on_error(operation)``, when given, is told of each failure (``open``, ``get`` or
    ``set``), e.g. to count it in the metrics.

    A database found corrupt, when opened or while serving, is moved aside (its files renamed
    ``cache.db.corrupt`` and so on, replacing an earlier such copy) and a new one made in its
    place; the failing lookup is a miss and a failing write is skipped, so requests are served
    all the same, only without the summaries cached before.

    Raises (from the constructor only):
        OSError, sqlite3.Error: the directory cannot be created or the database made in it
            (unwritable, not a directory).
    """

    def __init__(self, directory: Path, max_bytes: int, model: str,
                 on_error: Callable[[str], None] | None = None) -> None:
        self._directory = directory
        self._max_bytes = max_bytes
        self._model = model
        self._on_error = on_error
        self._rebuilding = threading.Lock()
        directory.mkdir(parents=True, exist_ok=True)
        try:
            self._cache = self._open()
        except sqlite3.DatabaseError as error:
            if not _corrupt(error):
                raise
            self._failed("open", error)
            self._move_aside()
            self._cache = self._open()

    def _open(self) -> diskcache.Cache:
        return diskcache.Cache(str(self._directory), size_limit=self._max_bytes,
                               eviction_policy="least-recently-used")

    def _key(self, job: SummaryJob, tenant: str) -> str:
        return f"{self._model}\x00{tenant}\x00{job.digest}"

    def get(self, job: SummaryJob, *, tenant: str) -> str | None:
        """``tenant``'s cached summary of ``job``, or ``None`` (also when the cache fails)."""
        cache = self._cache
        try:
            value = cache.get(self._key(job, tenant))
        except _CACHE_ERRORS as error:
            self._recover("get", cache, error)
            return None
        return value if isinstance(value, str) else None

    def set(self, job: SummaryJob, text: str, *, tenant: str) -> None:
        """Cache ``text`` as ``tenant``'s summary of ``job`` (skipped when the cache fails)."""
        cache = self._cache
        try:
            cache.set(self._key(job, tenant), text)
        except _CACHE_ERRORS as error:
            self._recover("set", cache, error)

    def close(self) -> None:
        self._cache.close()

    def _failed(self, operation: str, error: BaseException) -> None:
        logger.error("summary cache %s failed in %s (%s: %s)%s", operation, self._directory,
                     type(error).__name__, error,
                     ": moved aside and rebuilt" if _corrupt(error) else "; skipped")
        if self._on_error is not None:
            self._on_error(operation)

    def _recover(self, operation: str, cache: diskcache.Cache, error: BaseException) -> None:
        """Report a failure of ``cache``; when its database is corrupt, put a new one in its
        place (once, however many threads found it corrupt)."""
        self._failed(operation, error)
        if not _corrupt(error):
            return
        with self._rebuilding:
            if self._cache is not cache:  # another thread rebuilt it already
                return
            try:
                cache.close()
                self._move_aside()
                self._cache = self._open()
            except _CACHE_ERRORS:
                logger.exception("summary cache in %s could not be rebuilt; lookups go on "
                                 "failing (and being skipped)", self._directory)

    def _move_aside(self) -> None:
        """Rename the database's files to ``<name>.corrupt`` (an older copy is replaced)."""
        for name in _DATABASE_FILES:
            path = self._directory / name
            if path.exists():
                path.replace(path.with_name(f"{name}.corrupt"))


@dataclass
class DistillStats:
    """Counters of one request's distillation."""

    llm_calls: int = 0
    made: int = 0


#: How a summary is generated: messages and sampling in, completion out.
Generate = Callable[[Sequence[ChatMessage], SamplingParams], Awaitable[Completion]]


class Distiller:
    """Makes summaries for summary jobs and caches them.

    ``generator`` counts tokens and gives the window; ``generate`` makes each summary (the
    agent runner's observed path, inside the request's turn; ``generator.generate`` when not
    given).
    """

    def __init__(self, generator: TextGenerator, cache: SummaryCache,
                 settings: DistillationSettings, sampling: SamplingSettings,
                 generate: Generate | None = None) -> None:
        self.generator = generator
        self.cache = cache
        self.settings = settings
        self.sampling = sampling
        t = settings.temperatures
        self.temperatures: dict[Strategy, float] = {
            Strategy.plot: t.plot, Strategy.character: t.character,
            Strategy.dialogue: t.dialogue, Strategy.scene: t.scene, Strategy.world: t.world,
            Strategy.feedback: t.feedback,
        }
        self._generate: Generate = generate or generator.generate

    def temperature(self, strategy: Strategy) -> float:
        """The strategy's temperature (``DISTILLATION_<STRATEGY>_TEMPERATURE``)."""
        return self.temperatures[strategy]

    async def make(self, job: SummaryJob, stats: DistillStats, *, tenant: str) -> str:
        """The summary of ``job`` (made with the model unless ``tenant`` has it cached),
        clipped to its target.

        Raises what the generator raises (``GenerationFailed``...).
        """
        cached = self.cache.get(job, tenant=tenant)
        if cached is not None:
            return cached
        text = await self._summarize(job.text, job.strategy, job.target_tokens, stats)
        self.cache.set(job, text, tenant=tenant)
        stats.made += 1
        return text

    def _input_limit(self, target_tokens: int) -> int:
        """Most tokens of source text one summarization call can take."""
        return self.generator.n_ctx - self._max_tokens(target_tokens) - _PROMPT_OVERHEAD_TOKENS

    @staticmethod
    def _max_tokens(target_tokens: int) -> int:
        # Room to finish the last sentence; the result is clipped to the target anyway.
        return target_tokens + target_tokens // 2 + 16

    def _messages(self, text: str, strategy: Strategy, target_tokens: int) -> list[ChatMessage]:
        words = max(10, int(target_tokens * _WORDS_PER_TOKEN))
        return [
            ChatMessage("system", f"{SUMMARIZER_ROLE} {GUIDANCE[strategy]}"),
            ChatMessage("user", f"Summarize the text below in at most {words} words.\n\n"
                                f"Text:\n{text}"),
        ]

    async def _summarize(
        self, text: str, strategy: Strategy, target_tokens: int, stats: DistillStats
    ) -> str:
        """Summarize ``text`` to at most ``target_tokens`` tokens.

        Text longer than one call can take is split at paragraph or sentence boundaries;
        the parts are summarized (map) and their summaries summarized again while they are
        longer than the target (reduce). No summarization prompt exceeds the window.
        """
        count = self.generator.count_tokens
        limit = self._input_limit(target_tokens)
        messages = self._messages(text, strategy, target_tokens)
        fits = (count(text) <= limit and self.generator.count_prompt_tokens(messages)
                + self._max_tokens(target_tokens) <= self.generator.n_ctx)
        if not fits:
            tokens = count(text)
            # A text within the limit whose prompt still overflows is halved instead.
            parts = split_to_budget(text, limit if tokens > limit else max(64, tokens // 2), count)
            part_target = max(self.settings.min_summary_tokens,
                              target_tokens // len(parts))
            summaries = [await self._summarize(part, strategy, part_target, stats)
                         for part in parts]
            joined = "\n\n".join(summaries)
            if count(joined) <= target_tokens:
                return joined
            return await self._summarize(joined, strategy, target_tokens, stats)
        params = SamplingParams.of(
            self.sampling, max_tokens=self._max_tokens(target_tokens),
            temperature=self.temperature(strategy),
            seed=0,  # the same input gives the same summary
        )
        completion = await self._generate(messages, params)
        stats.llm_calls += 1
        return clip(completion.text.strip(), target_tokens, count) or clip(text, target_tokens,
                                                                           count)


def clip(text: str, target_tokens: int, count: CountTokens) -> str:
    """``text`` cut to at most ``target_tokens`` tokens at a sentence boundary, else by words."""
    if count(text) <= target_tokens:
        return text
    trimmed = trim_to_budget(text, target_tokens, count, keep_tail=False).text
    if trimmed:
        return trimmed
    words = text.split()
    kept: list[str] = []
    for word in words:
        if count(" ".join([*kept, word])) > target_tokens:
            break
        kept.append(word)
    return " ".join(kept)
