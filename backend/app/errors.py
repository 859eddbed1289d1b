"""Domain errors with stable machine codes.

They know nothing of HTTP: ``app.api.errors`` maps each ``code`` to a status and a body.
"""

from __future__ import annotations

from typing import Any


class WriterAssistantError(Exception):
    """Base of every error the service reports to a caller.

    Attributes:
        code: stable machine-readable code (``snake_case``), part of the API contract.
        message: a sentence for the caller that says what went wrong and what to change.
        param: the request field at fault, as a dotted path, or ``None``.
        details: extra JSON-serialisable figures (e.g. token counts).
        retry_after: seconds the caller should wait before retrying (the ``Retry-After`` header
            of a 429 or 503), or ``None`` for the service's default.
        retryable: whether the same call may succeed if tried again as it is (an unreachable or
            loading model server). Internal: it steers our own retries and never reaches a
            response body.
    """

    code = "internal_error"

    def __init__(self, message: str, *, param: str | None = None,
                 retry_after: float | None = None, retryable: bool = False,
                 **details: Any) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        self.retry_after = retry_after
        self.retryable = retryable
        self.details = details


class ModelUnavailable(WriterAssistantError):
    """The model is still loading or failed to load; generation cannot run yet."""

    code = "model_unavailable"


class ModelOverloaded(WriterAssistantError):
    """The remote model server refused the request because it is busy (its HTTP 429);
    ``retry_after`` carries its ``Retry-After`` when it sent one."""

    code = "model_overloaded"


class ContextLengthExceeded(WriterAssistantError):
    """Content that may not be trimmed or dropped does not fit the context window, or a remote
    model server refused the prompt as over its window.

    ``details`` carries ``needed_tokens`` and ``available_tokens`` (from a model server, where
    it gives them, with ``upstream_status``).
    """

    code = "context_length_exceeded"


class UnknownReference(WriterAssistantError):
    """The request names a character or chapter that its story context does not contain."""

    code = "unknown_reference"


class InvalidRequest(WriterAssistantError):
    """The request is well-formed JSON of the right types but cannot be served as asked."""

    code = "invalid_request"


class InvalidJson(InvalidRequest):
    """The request body is not valid JSON."""

    code = "invalid_json"


class RequestTooLarge(WriterAssistantError):
    """The request body is over ``MAX_REQUEST_BYTES``."""

    code = "request_too_large"


class AgentOutputInvalid(WriterAssistantError):
    """A JSON agent's output failed validation after the repair attempt."""

    code = "agent_output_invalid"


class OutputTruncated(AgentOutputInvalid):
    """A JSON agent's output ran out of the max_tokens the request set before it was
    complete: the request's limit is too small for the answer."""

    code = "max_tokens_too_small"


class GenerationFailed(WriterAssistantError):
    """The model raised while generating."""

    code = "generation_failed"


class ArchiveUnavailable(WriterAssistantError):
    """The story archive cannot serve now: still loading, disabled, or its Chroma store failed
    (server down, directory unwritable)."""

    code = "archive_unavailable"


class ArchiveFileNotFound(WriterAssistantError):
    """The archive holds no file of that name."""

    code = "archive_file_not_found"


class EmbeddingModelMismatch(WriterAssistantError):
    """The archive collection was built with another embedding model (or dimension) than the
    one this server embeds with; ``details`` names both. Rebuild with the re-index command."""

    code = "embedding_model_mismatch"


class VoiceProfileMissing(WriterAssistantError):
    """No archive file of the tenant is tagged as the author's voice."""

    code = "voice_profile_missing"


class FeedbackUnavailable(WriterAssistantError):
    """The feedback database cannot be opened or written (``FEEDBACK_DB_PATH``)."""

    code = "feedback_unavailable"


class GenerationStoreUnavailable(WriterAssistantError):
    """The generation store cannot be opened or read (``GENERATIONS_DB_PATH``)."""

    code = "generation_store_unavailable"


class GenerationNotFound(WriterAssistantError):
    """No generation record of that id for this tenant (never made, deleted, purged, or
    another tenant's)."""

    code = "generation_not_found"


class ReplayRequestMismatch(WriterAssistantError):
    """A replay was given a request that is not the one recorded (its SHA-256 differs)."""

    code = "replay_request_mismatch"


class UnsupportedDocument(WriterAssistantError):
    """A file the archive cannot ingest because of its type (unknown extension)."""

    code = "unsupported_document"


class InvalidDocument(WriterAssistantError):
    """A file of a supported type whose content cannot be ingested: empty, binary, not valid
    UTF-8, or a corrupt .docx (not a zip, a part that does not unpack, malformed XML, a DTD)."""

    code = "invalid_document"


class DocumentTooLarge(WriterAssistantError):
    """An upload above ``ARCHIVE_MAX_UPLOAD_BYTES``, a .docx that unpacks to more than
    ``ARCHIVE_MAX_EXPANDED_BYTES``, or a file with more tags or blocks than the parsers take."""

    code = "document_too_large"


class QueueFull(WriterAssistantError):
    """The model is busy and its queue is full (``QUEUE_MAX_WAITING``); retry later."""

    code = "queue_full"


class QueueTimeout(WriterAssistantError):
    """The request waited longer than ``QUEUE_MAX_WAIT_S`` for the model."""

    code = "queue_timeout"


class GenerationTimeout(WriterAssistantError):
    """A generation ran past ``GENERATION_TIMEOUT_S`` and was stopped."""

    code = "generation_timeout"


class ServiceDraining(WriterAssistantError):
    """The server is shutting down and takes no new generations."""

    code = "service_draining"


class NotReady(WriterAssistantError):
    """The readiness probe's answer while the server cannot serve: the model or the archive is
    loading or failed, or the server is draining; ``details.reasons`` says which."""

    code = "not_ready"


class RateLimited(WriterAssistantError):
    """The caller is over its own limit (concurrent requests or requests per minute)."""

    code = "rate_limited"


class Unauthenticated(WriterAssistantError):
    """No API key, or an unknown one, on a route that requires one."""

    code = "unauthenticated"


class DatasetTooSmall(InvalidRequest):
    """A fine-tuning corpus with too little text: no files, fewer tokens than
    ``FINETUNE_MIN_CORPUS_TOKENS``, or a split with no text in validation or training (a single
    file cannot be split by file). ``details`` carries the counts."""

    code = "dataset_too_small"


class InvalidAdapter(WriterAssistantError):
    """A LoRA adapter that cannot be exported or loaded: not a GGUF LoRA adapter, or a peft
    adapter with parts llama.cpp cannot apply (DoRA, per-module alpha, trained biases)."""

    code = "invalid_adapter"


class AdapterMismatch(WriterAssistantError):
    """A LoRA adapter made for another base model (architecture or base file SHA-256);
    ``details`` carries both hashes. Train the adapter again on this base."""

    code = "adapter_mismatch"


class AdapterNotFound(WriterAssistantError):
    """No LoRA adapter of that name (or path) to evaluate: neither registered in
    ``ADAPTERS_DIR`` nor under ``FINETUNE_DIR/adapters``."""

    code = "adapter_not_found"


class DatasetNotFound(WriterAssistantError):
    """No dataset file of that name (or path) under ``FINETUNE_DIR``."""

    code = "dataset_not_found"


class DatasetInvalid(InvalidRequest):
    """A dataset file that cannot be used: a line that is not a JSON object with the fields
    an example needs, or no example at all."""

    code = "dataset_invalid"


class EvaluationNotFound(WriterAssistantError):
    """No evaluation job of that id for the caller (another tenant's job is not found
    either)."""

    code = "evaluation_not_found"


class UnknownModel(InvalidRequest):
    """A request's ``model`` names neither ``base`` nor a registered adapter (or an adapter
    this server cannot serve: a remote model server serves only ``base``); ``details.available``
    lists the names it may use."""

    code = "unknown_model"
