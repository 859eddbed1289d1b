"""The service's Prometheus metrics: one :class:`Metrics` per app, on its own registry.

Every instrument lives here; the runner, the archive and the error answers call the small
methods below instead of touching prometheus-client themselves. Each app has its own
``CollectorRegistry`` (not the process-wide default), so several apps in one process (tests)
never share or collide on figures. ``GET /metrics`` renders :meth:`Metrics.render`.

Names follow the Prometheus conventions (base units: seconds; ``_total`` on counters) and,
for the generation figures, the names vLLM uses for the same quantities (time to first
token, inter-token latency, end-to-end request latency).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.registry import Collector

from app.llm.prefix_cache import CacheStats
from app.llm.protocol import Completion

PREFIX = "writer_assistant"

#: The Prometheus text format's content type (version 0.0.4).
CONTENT_TYPE = CONTENT_TYPE_LATEST

#: Error codes that mean the model (or its server, or this server) failed on a request it had
#: accepted; every other error code is a rejection: the request was refused before it was
#: served (bad input, no key, over a limit, queue full or timed out, draining, model loading).
BACKEND_ERROR_CODES = frozenset({
    "generation_failed",  # the model raised, or the model server broke its stream or 5xx-ed
    "generation_timeout",  # GENERATION_TIMEOUT_S ran out
    "model_overloaded",  # the model server answered 429
    "agent_output_invalid",  # a JSON agent's output failed validation after the repair
    "internal_error",  # an unexpected exception in this server
})

# Buckets in seconds. Generation on a CPU spans milliseconds (a token) to minutes (a long
# prompt on 2 cores: 15-25 s before the first token), so the ranges are wide.
_TOKEN_GAP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2,
                      0.5, 1.0, 2.5)
_LATENCY_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 30.0, 60.0,
                    120.0, 300.0, 600.0)
_ARCHIVE_BUCKETS = (0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
                    60.0, 300.0)


class Metrics:
    """The instruments of one app.

    Figures (all prefixed ``writer_assistant_``):

    - ``requests_running``, ``requests_waiting`` (gauges): requests holding / waiting for the
      model, read from the admission queue at scrape time (:meth:`track_queue`).
    - ``rejections_total{reason}``: error answers (HTTP or stream ``error`` events) whose code
      is not in :data:`BACKEND_ERROR_CODES`; ``reason`` is the error code.
    - ``backend_errors_total{code}``: error answers whose code is in
      :data:`BACKEND_ERROR_CODES`.
    - ``queue_time_seconds``, ``time_to_first_token_seconds``,
      ``inter_token_latency_seconds``, ``e2e_request_latency_seconds`` (histograms,
      ``{agent, operation}``).
    - ``generations_total{agent, operation, finish_reason}``, ``prompt_tokens_total{agent}``,
      ``completion_tokens_total{agent}``: every generation the runner made (a JSON agent's
      repair attempt is a second one).
    - ``prompt_cached_tokens_total{agent}``: prompt tokens whose KV state was reused.
    - ``rate_limit_checks_skipped_total``: per-minute limit checks skipped (the request
      served) because the rate-limit storage failed.
    - ``archive_operation_seconds{operation}`` (histogram): search, ingest, delete, files,
      file_text, stats, reindex.
    - ``summary_cache_errors_total{operation}``: summary cache operations (``open``, ``get``,
      ``set``) that failed and were skipped (a corrupt database is also rebuilt).
    - ``prefix_cache_*`` (with the in-process model and ``PREFIX_CACHE_ENABLED``): lookups,
      hits by tier, saves, restores, evictions, disk writes and errors (counters), seconds
      spent saving and restoring, bytes and tokens saved (counters), and the memory tier's
      bytes and entries (gauges).
    """

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        per_request = ("agent", "operation")
        self.requests_running = Gauge(
            f"{PREFIX}_requests_running", "Requests holding the model now.", registry=r)
        self.requests_waiting = Gauge(
            f"{PREFIX}_requests_waiting", "Requests waiting in the queue for the model now.",
            registry=r)
        self.rejections = Counter(
            f"{PREFIX}_rejections", "Requests refused before they were served, by error code "
            "(queue_full, queue_timeout, service_draining, rate_limited, unauthenticated, "
            "invalid_request, model_unavailable, ...).", ["reason"], registry=r)
        self.backend_errors = Counter(
            f"{PREFIX}_backend_errors", "Accepted requests that failed: the model or its server "
            "failed, timed out or was overloaded, a JSON agent's output stayed invalid, or an "
            "unexpected error.", ["code"], registry=r)
        self.queue_time = Histogram(
            f"{PREFIX}_queue_time_seconds", "Seconds a request waited for its turn at the "
            "model.", per_request, buckets=_LATENCY_BUCKETS, registry=r)
        self.time_to_first_token = Histogram(
            f"{PREFIX}_time_to_first_token_seconds", "Seconds from holding the model to the "
            "first completion token (prompt processing included), per generation.",
            per_request, buckets=_LATENCY_BUCKETS, registry=r)
        self.inter_token_latency = Histogram(
            f"{PREFIX}_inter_token_latency_seconds", "Seconds between two consecutive token "
            "deltas of a generation as the runner receives them.", per_request,
            buckets=_TOKEN_GAP_BUCKETS, registry=r)
        self.e2e_latency = Histogram(
            f"{PREFIX}_e2e_request_latency_seconds", "Seconds from the runner taking a request "
            "(before assembly and queueing) to its final completion, per served request.",
            per_request, buckets=_LATENCY_BUCKETS, registry=r)
        self.generations = Counter(
            f"{PREFIX}_generations", "Generations completed, by finish reason.",
            [*per_request, "finish_reason"], registry=r)
        self.answer_retries = Counter(
            f"{PREFIX}_answer_retries", "Further attempts made because an answer failed the "
            "content check (QUALITY_MAX_RETRIES).", per_request, registry=r)
        self.prompt_tokens = Counter(
            f"{PREFIX}_prompt_tokens", "Prompt tokens of completed generations (model tokens).",
            ["agent"], registry=r)
        self.completion_tokens = Counter(
            f"{PREFIX}_completion_tokens", "Completion tokens of completed generations (model "
            "tokens).", ["agent"], registry=r)
        self.cached_tokens = Counter(
            f"{PREFIX}_prompt_cached_tokens", "Prompt tokens whose KV state was reused instead "
            "of processed (the usage field prompt_tokens_details.cached_tokens).", ["agent"],
            registry=r)
        self.rate_limit_checks_skipped = Counter(
            f"{PREFIX}_rate_limit_checks_skipped", "Per-minute limit checks skipped because the "
            "rate-limit storage (RATE_LIMIT_STORAGE_URI) failed; the request was served.",
            registry=r)
        self.archive_latency = Histogram(
            f"{PREFIX}_archive_operation_seconds", "Seconds an archive operation took.",
            ["operation"], buckets=_ARCHIVE_BUCKETS, registry=r)
        self.summary_cache_errors = Counter(
            f"{PREFIX}_summary_cache_errors", "Summary cache operations that failed (a corrupt "
            "or unreadable database) and were skipped; a corrupt database is rebuilt.",
            ["operation"], registry=r)
        self.generation_store_errors = Counter(
            "writer_assistant_generation_store_errors_total",
            "Generation store operations (get, put, cached, find, delete, purge) that failed; "
            "an answer whose record could not be written was still served.",
            ["operation"], registry=r)

    # --- gauges ------------------------------------------------------------------------------

    def track_queue(self, running: Callable[[], float], waiting: Callable[[], float]) -> None:
        """Read the running and waiting gauges from these callables at every scrape."""
        self.requests_running.set_function(running)
        self.requests_waiting.set_function(waiting)

    def track_prefix_cache(self, stats: Callable[[], CacheStats | None]) -> None:
        """Expose the prefix KV state cache's counters (read from ``stats`` at every scrape;
        ``None``: no cache, nothing exposed)."""
        self.registry.register(_PrefixCacheCollector(stats))

    # --- errors ------------------------------------------------------------------------------

    def count_error(self, code: str) -> None:
        """Count one error answer by its error code: a backend error or a rejection."""
        if code in BACKEND_ERROR_CODES:
            self.backend_errors.labels(code=code).inc()
        else:
            self.rejections.labels(reason=code).inc()

    def count_summary_cache_error(self, operation: str) -> None:
        """A summary cache ``operation`` (``open``, ``get``, ``set``) failed and was skipped."""
        self.summary_cache_errors.labels(operation=operation).inc()

    def count_generation_store_error(self, operation: str) -> None:
        """A generation store ``operation`` failed (see :mod:`app.generations.recorder`)."""
        self.generation_store_errors.labels(operation=operation).inc()

    # --- generation --------------------------------------------------------------------------

    def observe_queue(self, agent: str, operation: str, seconds: float) -> None:
        """A request got its turn at the model after ``seconds`` in the queue."""
        self.queue_time.labels(agent=agent, operation=operation).observe(seconds)

    def observe_token_gap(self, agent: str, operation: str, seconds: float) -> None:
        """``seconds`` passed between two token deltas of one generation."""
        self.inter_token_latency.labels(agent=agent, operation=operation).observe(seconds)

    def count_retry(self, agent: str, operation: str) -> None:
        """Count one further attempt made because an answer failed the content check."""
        self.answer_retries.labels(agent=agent, operation=operation).inc()

    def observe_completion(self, agent: str, operation: str, completion: Completion) -> None:
        """One generation finished: its time to first token, tokens and finish reason."""
        self.time_to_first_token.labels(agent=agent, operation=operation).observe(
            completion.timings.time_to_first_token_ms / 1000)
        self.generations.labels(agent=agent, operation=operation,
                                finish_reason=completion.finish_reason).inc()
        self.prompt_tokens.labels(agent=agent).inc(completion.prompt_tokens)
        self.completion_tokens.labels(agent=agent).inc(completion.completion_tokens)
        self.cached_tokens.labels(agent=agent).inc(completion.cached_tokens)

    def observe_request(self, agent: str, operation: str, seconds: float) -> None:
        """A request was served end to end in ``seconds``."""
        self.e2e_latency.labels(agent=agent, operation=operation).observe(seconds)

    # --- archive -----------------------------------------------------------------------------

    @contextmanager
    def archive_operation(self, operation: str) -> Iterator[None]:
        """Time the block as one archive ``operation`` (failures included)."""
        started = time.perf_counter()
        try:
            yield
        finally:
            self.archive_latency.labels(operation=operation).observe(
                time.perf_counter() - started)

    # --- exposition --------------------------------------------------------------------------

    def render(self) -> bytes:
        """Every figure in the Prometheus text format (:data:`CONTENT_TYPE`)."""
        return generate_latest(self.registry)


#: Prefix cache counters: stats field -> (metric name suffix, help).
_PREFIX_COUNTERS = {
    "lookups": ("lookups", "Prefix KV state cache lookups (one per generation with a story)."),
    "hits_memory": ("hits_memory", "Snapshots restored from the memory tier."),
    "hits_disk": ("hits_disk", "Snapshots read from the disk tier and restored."),
    "saves": ("saves", "Snapshots of a story's shared block saved."),
    "restores": ("restores", "Snapshots restored into the model's KV cache."),
    "evictions": ("evictions", "Snapshots evicted from the memory tier (byte budget)."),
    "disk_writes": ("disk_writes", "Snapshots written to the disk tier."),
    "disk_errors": ("disk_errors", "Snapshot writes to the disk tier that failed."),
    "save_seconds": ("save_seconds", "Seconds spent saving snapshots."),
    "restore_seconds": ("restore_seconds", "Seconds spent restoring snapshots."),
    "saved_bytes": ("saved_bytes", "Bytes of KV state saved in snapshots."),
    "saved_tokens": ("saved_tokens", "Tokens of shared blocks saved in snapshots."),
}


class _PrefixCacheCollector(Collector):
    """Reads :class:`CacheStats` at scrape time."""

    def __init__(self, stats: Callable[[], CacheStats | None]) -> None:
        self._stats = stats

    def collect(self) -> Iterator[Metric]:
        stats = self._stats()
        if stats is None:
            return
        for field, (name, text) in _PREFIX_COUNTERS.items():
            yield CounterMetricFamily(f"{PREFIX}_prefix_cache_{name}", text,
                                      value=getattr(stats, field))
        yield GaugeMetricFamily(f"{PREFIX}_prefix_cache_memory_bytes",
                                "Bytes of snapshots in the memory tier now.",
                                value=stats.memory_bytes)
        yield GaugeMetricFamily(f"{PREFIX}_prefix_cache_memory_entries",
                                "Snapshots in the memory tier now.", value=stats.memory_entries)
