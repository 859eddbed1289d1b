"""Wire models of the story archive (``/api/v1/archive/...``), also returned by
``app.archive`` itself so the CLI and the API report the same fields.

Offsets and lengths are in characters; token figures in embedding-model tokens; scores are
cosine similarities in [-1, 1] (higher is closer).
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import BaseModel, Field, StringConstraints, model_validator

from app.schemas.context import _Strict
from app.schemas.responses import GenerationInfo

Query = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=4000)]
FileName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=255)]
ChapterName = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]


class ArchiveFilters(_Strict):
    """Optional filters of a search: all given ones must match."""

    file: FileName | None = Field(default=None, description="Archive file name, e.g. "
                                  "carroll-alice.txt.")
    chapter: ChapterName | None = Field(
        default=None,
        description="Chapter title, case-insensitive, with or without its numbering: "
        "'The Five Orange Pips', 'V. THE FIVE ORANGE PIPS' and 'v. the five orange pips' match "
        "the same chapter.",
    )
    chapter_number: int | None = Field(
        default=None, ge=0, le=10_000,
        description="Ordinal of the chapter in its file, from 1 (0: front matter).",
    )


class SearchRequest(ArchiveFilters):
    """A semantic search of the archive."""

    query: Query = Field(description="What to look for, in words.")
    top_k: int | None = Field(default=None, ge=1, le=50,
                              description="Passages to return (default ARCHIVE_TOP_K).")


class Passage(BaseModel):
    """One retrieved chunk and where it comes from."""

    id: str = Field(description="Chunk id (stable for the same file content).")
    file: str
    title: str
    chapter: str = Field(description="Chapter heading ('' for front matter).")
    chapter_number: int
    chunk_index: int
    start: int = Field(description="Character offset of the chunk in the file's text.")
    end: int = Field(description="Character offset where the chunk ends (exclusive).")
    score: float = Field(description="Cosine similarity to the query.")
    text: str


class SearchResponse(BaseModel):
    """Search results, best first."""

    query: str
    passages: list[Passage]


class IngestResult(BaseModel):
    """What ingesting one file did."""

    file: str
    title: str
    format: str
    chars: int = Field(description="Characters of the archived text.")
    chunks: int
    chapters: int = Field(description="Chapters detected.")
    replaced_chunks: int = Field(description="Chunks of an earlier version removed.")
    unchanged: bool = Field(description="The same content was archived already; nothing "
                            "was written.")
    seconds: float = Field(description="Wall-clock time of the ingest.")


class FileInfo(BaseModel):
    """One archived file."""

    file: str
    title: str
    format: str
    chars: int
    chunks: int
    chapters: list[str]
    sha256: str = Field(description="SHA-256 of the archived text (UTF-8).")
    ingested_at: str = Field(description="UTC time of the ingest, ISO 8601.")
    voice: bool = Field(default=False, description="A sample of the author's own writing "
                        "(tagged voice): it makes the voice profile and is never retrieved "
                        "as story.")


class FileList(BaseModel):
    """Every archived file, by name."""

    files: list[FileInfo]


class FileText(BaseModel):
    """An archived file's text, rebuilt from its chunks."""

    file: str
    title: str
    chars: int
    sha256: str
    text: str


class DeleteResult(BaseModel):
    """What deleting a file removed."""

    file: str
    deleted_chunks: int


class ArchiveStats(BaseModel):
    """Size and configuration of the archive."""

    mode: Literal["embedded", "server"]
    location: str
    collection: str
    embedding_model: str
    embedding_dimension: int
    files: int
    chunks: int
    chars: int
    chunk_tokens: int
    chunk_overlap_tokens: int


class ReindexResult(BaseModel):
    """What a rebuild of the collection did."""

    files: int
    chunks: int
    embedding_model: str
    embedding_dimension: int
    previous_model: str | None
    seconds: float


class _RagOptions(ArchiveFilters):
    top_k: int | None = Field(default=None, ge=1, le=20,
                              description="Passages to ground on (default ARCHIVE_TOP_K).")
    max_tokens: int | None = Field(default=None, ge=1,
                                   description="Completion tokens; at most LLM_MAX_TOKENS_LIMIT.")
    temperature: float | None = Field(default=None, ge=0.0, le=2.0,
                                      description="Default 0.2: grounded answers, little "
                                      "invention.")
    seed: int | None = Field(default=None, ge=0, le=2**31 - 1)


class RagQueryRequest(_RagOptions):
    """A question answered from the archive."""

    question: Query


class RagTurn(_Strict):
    """One message of a conversation about the archive."""

    role: Literal["user", "assistant"]
    content: Annotated[str, StringConstraints(min_length=1, max_length=20_000)]


class RagChatRequest(_RagOptions):
    """A conversation answered from the archive; the last message must be the user's."""

    messages: list[RagTurn] = Field(min_length=1, max_length=50)

    @model_validator(mode="after")
    def _ends_with_user(self) -> RagChatRequest:
        if self.messages[-1].role != "user":
            raise ValueError("messages: the last message must have role 'user'")
        return self


class RagSource(Passage):
    """A passage given to the model, numbered as the answer cites it (``[n]``)."""

    n: int


class RagAnswer(GenerationInfo):
    """A grounded answer: ``sources`` are the numbered passages the model saw (those that fit
    the window, best first); ``cited`` lists the source numbers the answer refers to."""

    answer: str
    sources: list[RagSource]
    cited: list[int]
