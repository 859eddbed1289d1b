"""Recording generations and answering from the response cache, for the runner.

:class:`Recorder` is what :class:`app.agents.runner.AgentRunner` and the pipeline talk to: it
draws the seed a request did not give, decides whether a request may use the cache, builds the
cache key, and reads and writes the store on a thread of its own. A store that fails (a full disk,
a locked file) never costs the author an answer: the failure is logged and counted
(``writer_assistant_generation_store_errors_total``) and the answer goes out, its record
missing.

The cache key is the SHA-256 of: the tenant, the operation, the model file's SHA-256 and
runtime (and the LoRA adapter file's SHA-256, when one is applied), the prompt text (chat
template applied) of the first attempt, the sampling (seed included) with the JSON schema,
and the content check's retry budget: everything the answer depends on. So tenants never
share entries, and another model file (or adapter) never answers.
"""

from __future__ import annotations

import asyncio
import logging
import random
import sqlite3
import time
import uuid
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, replace
from datetime import UTC, datetime
from typing import Any, TypeVar

from app.config import GenerationSettings
from app.errors import GenerationStoreUnavailable
from app.generations.records import (
    CacheOutcome,
    GenerationRecord,
    ModelIdentity,
    ModelRecord,
    RecordQuery,
    SamplingRecord,
    canonical_json,
    sha256_text,
)
from app.generations.store import GenerationStore, SqliteGenerationStore
from app.llm.protocol import LoraAdapter, SamplingParams
from app.observability.metrics import Metrics

logger = logging.getLogger(__name__)

T = TypeVar("T")

#: What a failing store raises (a closed or corrupt database, a full disk, a bad row).
_STORE_ERRORS = (sqlite3.Error, OSError, ValueError)

#: Seeds are drawn from [0, 2**31 - 1): what the request schema accepts.
SEED_LIMIT = 2**31 - 1


def new_generation_id() -> str:
    """A new generation id: ``gen_`` and 32 hex digits (a random UUID)."""
    return f"gen_{uuid.uuid4().hex}"


def draw_seed() -> int:
    """A random seed for a request that gave none (returned and recorded, so the generation
    can be replayed)."""
    return random.randrange(SEED_LIMIT)


@dataclass(frozen=True)
class Stamp:
    """What an answer carries about its record: its ``generation_id``, the ``seed`` its
    first attempt used and how it met the cache (``cache_key`` is set when the answer may be
    stored for, or was served from, the cache)."""

    generation_id: str
    seed: int
    cache: CacheOutcome
    cache_key: str | None = None
    #: The sampling of the first attempt (seed included).
    sampling: SamplingRecord | None = None
    #: The model it ran on (the base, or the base with an adapter).
    model: ModelRecord | None = None

    def fields(self) -> dict[str, Any]:
        """The fields answers and ``meta`` events carry."""
        return {"generation_id": self.generation_id, "seed": self.seed, "cache": self.cache}


class Recorder:
    """Generation records and the response cache over ``store`` for one model
    (``identity``), as ``settings`` say; failures counted in ``metrics``."""

    def __init__(self, store: GenerationStore, identity: ModelIdentity,
                 settings: GenerationSettings, metrics: Metrics) -> None:
        self.store = store
        self.identity = identity
        self.settings = settings
        self.metrics = metrics
        # its own thread: store work never waits behind a default pool full of uploads
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="generations")

    @classmethod
    def open(cls, settings: GenerationSettings, identity: ModelIdentity,
             metrics: Metrics) -> Recorder:
        """The recorder on the SQLite store at ``GENERATIONS_DB_PATH``.

        Raises:
            GenerationStoreUnavailable: the store cannot be created or opened (the path and
                cause are logged, not put in the message).
        """
        try:
            store = SqliteGenerationStore.open(settings.db_path,
                                               half_life_s=settings.cache_half_life_s)
        except (OSError, sqlite3.Error) as error:
            logger.error("the generation store could not be opened at %s (%s: %s)",
                         settings.db_path, type(error).__name__, error)
            raise GenerationStoreUnavailable(
                "The generation store could not be opened: make GENERATIONS_DB_PATH a "
                "writable file path (see the server log).") from error
        return cls(store, identity, settings, metrics)

    def close(self) -> None:
        """Finish the store's queued work and close it."""
        self._executor.shutdown(wait=True)
        self.store.close()

    async def _off_loop(self, work: Callable[[], T]) -> T:
        return await asyncio.get_running_loop().run_in_executor(self._executor, work)

    # --- stamping -------------------------------------------------------------------------
    def stamp(self, params: SamplingParams, *, caller_seeded: bool, use_cache: bool
              ) -> tuple[SamplingParams, Stamp]:
        """``params`` with a seed (drawn when it has none), and the answer's stamp (without
        its cache key: :meth:`key` makes it once the prompt is known).

        The cache is used (``miss`` until a hit is found) when it is on, the model file is
        known, the request allows it (``use_cache``) and its output is determined: the caller
        gave the seed (``caller_seeded``) or the temperature is 0.
        """
        if params.seed is None:
            params = replace(params, seed=draw_seed())
        assert params.seed is not None
        cacheable = (self.settings.cache_enabled and self.identity.sha256 is not None
                     and use_cache and (caller_seeded or params.temperature == 0))
        return params, Stamp(new_generation_id(), params.seed, "miss" if cacheable else "off",
                             sampling=SamplingRecord.of(params),
                             model=self.model_record(params.adapter))

    def key(self, tenant: str, operation: str, prompt: str, params: SamplingParams,
            retries: int) -> str:
        """The cache key of a generation (see the module): SHA-256, hex. At temperature 0
        the seed is left out: greedy decoding does not use it. A LoRA adapter enters by its
        file's SHA-256 (the base model's keys are those from before adapters were served)."""
        sampling = asdict(params)
        adapter = sampling.pop("adapter")
        if params.temperature == 0:
            sampling["seed"] = None
        key: dict[str, Any] = {
            "tenant": tenant, "operation": operation, "model": self.identity.sha256,
            "runtime": self.identity.runtime, "prompt": prompt,
            "sampling": sampling, "retries": retries,
        }
        if adapter is not None:
            key["adapter"] = adapter["sha256"]
        return sha256_text(canonical_json(key))

    def model_record(self, adapter: LoraAdapter | None = None) -> ModelRecord:
        """The model a record of this recorder names: the base, with ``adapter`` when one was
        applied."""
        return ModelRecord(name=self.identity.name, sha256=self.identity.sha256,
                           runtime=self.identity.runtime,
                           adapter=adapter.name if adapter else None,
                           adapter_sha256=adapter.sha256 if adapter else None)

    # --- the store, off the event loop ----------------------------------------------------
    def _failed(self, operation: str, error: Exception) -> None:
        logger.error("the generation store failed (%s: %s: %s)", operation,
                     type(error).__name__, error)
        self.metrics.count_generation_store_error(operation)

    async def _guard(self, operation: str, work: Callable[[], T], fallback: T) -> T:
        """``work`` on the store's thread; ``fallback`` when the store fails."""
        try:
            return await self._off_loop(work)
        except _STORE_ERRORS as error:
            self._failed(operation, error)
            return fallback

    async def cached(self, tenant: str, key: str) -> GenerationRecord | None:
        """The tenant's cached answer for ``key`` (``None``: none, or the store failed)."""
        return await self._guard("cached", lambda: self.store.cached(tenant, key), None)

    async def keep(self, record: GenerationRecord, cache_key: str | None = None) -> None:
        """Store ``record`` (and, with ``cache_key``, cache it). A failure is logged and
        counted, never raised."""
        await self._guard("put", lambda: self.store.put(
            record, cache_key=cache_key, cache_max_bytes=self.settings.cache_max_bytes), None)

    async def get(self, tenant: str, generation_id: str) -> GenerationRecord | None:
        """The tenant's record.

        Raises:
            GenerationStoreUnavailable: the store failed (HTTP 503).
        """
        return await self._read("get", lambda: self.store.get(tenant, generation_id))

    async def find(self, tenant: str, query: RecordQuery
                   ) -> tuple[list[GenerationRecord], int]:
        """The tenant's records matching ``query`` and their count.

        Raises:
            GenerationStoreUnavailable: the store failed (HTTP 503).
        """
        return await self._read("find", lambda: self.store.find(tenant, query))

    async def delete(self, tenant: str, generation_id: str) -> bool:
        """Delete the tenant's record; ``False`` when it has none by that id.

        Raises:
            GenerationStoreUnavailable: the store failed (HTTP 503).
        """
        return await self._read("delete", lambda: self.store.delete(tenant, generation_id))

    async def _read(self, operation: str, work: Callable[[], T]) -> T:
        """``work`` on the store's thread.

        Raises:
            GenerationStoreUnavailable: the store failed.
        """
        try:
            return await self._off_loop(work)
        except _STORE_ERRORS as error:
            self._failed(operation, error)
            raise GenerationStoreUnavailable(
                "The generation store failed; retry, and check GENERATIONS_DB_PATH (see the "
                "server log).") from error

    # --- retention ------------------------------------------------------------------------
    async def purge_expired(self, now: float | None = None) -> int:
        """Delete the records older than ``GENERATIONS_RETENTION_DAYS`` (none when it is 0);
        how many went. A failure is logged and counted (0 returned)."""
        days = self.settings.retention_days
        if days <= 0:
            return 0
        cutoff = (time.time() if now is None else now) - days * 86_400
        purged = await self._guard("purge", lambda: self.store.purge(cutoff), 0)
        if purged:
            logger.info("purged %d generation records older than %g days", purged, days)
        return purged

    async def purge_forever(self) -> None:
        """Purge expired records now and every ``GENERATIONS_PURGE_INTERVAL_S`` until
        cancelled (the server runs it beside serving)."""
        while True:
            await self.purge_expired()
            await asyncio.sleep(self.settings.purge_interval_s)


def now_utc() -> datetime:
    """The current time, UTC (records' ``created_at``)."""
    return datetime.now(UTC)
