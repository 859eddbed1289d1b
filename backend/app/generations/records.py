"""What a generation record holds, and the digests that identify requests, prompts and
cached answers.

A :class:`GenerationRecord` is both what the store keeps and what ``GET
/api/v1/generations/{id}`` answers. Stories are private: the request itself is kept only when
the author asks (``store_request``); its SHA-256 always is, so a replay can check that the
request it is given is the one recorded.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from app.context.report import AssemblyReport
from app.llm.protocol import BASE_MODEL, SamplingParams
from app.schemas.responses import Quality, TimingsOut
from app.schemas.usage import Usage

#: Request fields that choose how a request is served, not what it generates: left out of its
#: digest, so a request sent again with ``cache: false`` is still the same request.
SERVING_FIELDS = frozenset({"cache", "store_request"})

#: The largest page offset a listing takes (SQLite's integers are 64-bit).
MAX_OFFSET = 1_000_000_000

#: How an answer met the response cache: served from it, generated and stored for the next
#: identical request, or generated without it (not seeded, skipped, or off).
CacheOutcome = Literal["hit", "miss", "off"]

@dataclass(frozen=True)
class ModelIdentity:
    """The model a generation ran on: its name, the SHA-256 of its GGUF file (hex; ``None``
    for a remote server, whose file is unknown) and the runtime that ran it
    (``llama-cpp-python 0.3.36``; ``None`` when unknown)."""

    name: str
    sha256: str | None
    runtime: str | None

    @classmethod
    def of(cls, generator: Any) -> ModelIdentity:
        """The identity a text generator declares: its ``model_name``, and its ``sha256`` and
        ``runtime`` attributes when it has them (the in-process llama.cpp runtime does)."""
        return cls(name=generator.model_name, sha256=getattr(generator, "sha256", None) or None,
                   runtime=getattr(generator, "runtime", None))


def canonical_json(value: Any) -> str:
    """``value`` as compact JSON with sorted keys: equal values give equal text."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False,
                      default=str)


def sha256_text(text: str) -> str:
    """The SHA-256 of ``text`` in UTF-8 (hex)."""
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def request_json(request: BaseModel) -> dict[str, Any]:
    """``request`` as JSON-ready data without its serving fields (:data:`SERVING_FIELDS`).
    A ``model`` of ``base`` (the default) is left out too, so a request for the base has the
    digest it had before requests could pick a model (its records can still be replayed); an
    adapter's name is kept: a request on another model is another request."""
    data = request.model_dump(mode="json", exclude=set(SERVING_FIELDS))
    if data.get("model") == BASE_MODEL:
        del data["model"]
    return data


def request_sha256(request: BaseModel) -> str:
    """The SHA-256 of ``request``'s canonical JSON, serving fields left out."""
    return sha256_text(canonical_json(request_json(request)))


class SamplingRecord(BaseModel):
    """The sampling a generation ran with: everything but the JSON schema (which the
    operation's output model fixes), and the seed actually used (drawn when the caller gave
    none)."""

    max_tokens: int = Field(description="Most completion tokens.")
    temperature: float
    top_p: float
    top_k: int
    repeat_penalty: float
    seed: int
    stop: list[str] = Field(default_factory=list)

    @classmethod
    def of(cls, params: SamplingParams) -> SamplingRecord:
        """The record of ``params`` (its seed must be set)."""
        assert params.seed is not None, "the seed is drawn before a generation is recorded"
        return cls(max_tokens=params.max_tokens, temperature=params.temperature,
                   top_p=params.top_p, top_k=params.top_k,
                   repeat_penalty=params.repeat_penalty, seed=params.seed,
                   stop=list(params.stop))


class ModelRecord(BaseModel):
    """The model of a record (see :class:`ModelIdentity`)."""

    name: str
    sha256: str | None = Field(description="SHA-256 of the GGUF file (hex); null for a "
                               "remote server.")
    runtime: str | None = Field(description="What ran it, e.g. llama-cpp-python 0.3.36.")
    adapter: str | None = Field(default=None, description="The LoRA adapter applied (its "
                                "registry name, the request's `model`); null: the base model.")
    adapter_sha256: str | None = Field(default=None, description="SHA-256 (hex) of the "
                                       "adapter's GGUF file; null: the base model.")


class GenerationRecord(BaseModel):
    """One generation on the record: an agent call (``kind: "agent"``) or a pipeline run
    (``kind: "pipeline"``, whose calls are records of their own, listed in ``children``)."""

    id: str = Field(description="The generation_id answers carry.")
    kind: Literal["agent", "pipeline"] = "agent"
    tenant: str = Field(exclude=True)
    created_at: datetime
    operation: str
    story_id: str | None = Field(default=None, description="The request's story_id (or the "
                                 "story metadata's story_id).")
    request_sha256: str = Field(description="SHA-256 of the request's canonical JSON (sorted "
                                "keys, compact; `cache` and `store_request` left out).")
    request: dict[str, Any] | None = Field(default=None, description="The request itself, "
                                           "only when it was sent with store_request.")
    model: ModelRecord
    sampling: SamplingRecord
    prompt_sha256: str | None = Field(default=None, description="SHA-256 of the prompt text "
                                      "(chat template applied) of the first attempt.")
    text: str = Field(description="The answer's text (a pipeline: the best draft).")
    output: dict[str, Any] | None = Field(default=None, description="A JSON agent's "
                                          "validated output.")
    finish_reason: Literal["stop", "length", "cancelled"] = "stop"
    usage: Usage
    timings: TimingsOut
    attempts: int = 1
    quality: Quality = Field(default_factory=lambda: Quality(useful=True))
    context_metadata: AssemblyReport | None = None
    response: dict[str, Any] | None = Field(default=None, description="A pipeline's full "
                                            "answer (its drafts, scores and calls).")
    children: list[str] = Field(default_factory=list, description="A pipeline's calls, by "
                                "generation_id.")
    replay_of: str | None = Field(default=None, description="The record this one replayed.")
    cacheable: bool = Field(default=False, description="Whether the response cache may "
                            "answer an identical request with this record.")


class GenerationSummary(BaseModel):
    """A record in a list: what it was, not its whole content."""

    id: str
    kind: Literal["agent", "pipeline"]
    created_at: datetime
    operation: str
    story_id: str | None
    model: ModelRecord
    seed: int
    finish_reason: str
    usage: Usage
    text_preview: str = Field(description="The first 200 characters of the text.")
    replay_of: str | None = None

    @classmethod
    def of(cls, record: GenerationRecord) -> GenerationSummary:
        """The summary of ``record``."""
        return cls(id=record.id, kind=record.kind, created_at=record.created_at,
                   operation=record.operation, story_id=record.story_id, model=record.model,
                   seed=record.sampling.seed, finish_reason=record.finish_reason,
                   usage=record.usage, text_preview=record.text[:200],
                   replay_of=record.replay_of)


class RecordQuery(BaseModel):
    """Which records to list: a story, an operation, a time range (``since`` inclusive,
    ``until`` exclusive), and the page (``limit`` records after skipping ``offset``)."""

    story_id: str | None = None
    operation: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = Field(default=50, ge=1, le=500)
    offset: int = Field(default=0, ge=0, le=MAX_OFFSET)
