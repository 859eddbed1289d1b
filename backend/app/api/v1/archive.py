"""``/api/v1/archive/...``: search, files, upload and stats (the answers grounded in the
archive, ``/archive/rag/...``, are the archivist agent's routes: ``app.agents.archivist``).

Blocking archive calls (embedding, Chroma I/O) run in worker threads: plain ``def`` routes go
to FastAPI's thread pool, the async ones use ``asyncio.to_thread``. Every archive call answers
503 while the archive loads or while Chroma is down.
"""

from __future__ import annotations

import asyncio
import functools

from fastapi import APIRouter, Depends, Query, Request
from starlette.datastructures import UploadFile

from app.api.errors import (
    ARCHIVE_ERRORS,
    BODY_ERRORS,
    MODEL_ERRORS,
    REFUSALS,
    TURN_ERRORS,
    error_responses,
)
from app.errors import (
    ArchiveFileNotFound,
    ContextLengthExceeded,
    DocumentTooLarge,
    InvalidDocument,
    InvalidRequest,
    UnsupportedDocument,
)
from app.schemas.archive import (
    ArchiveStats,
    DeleteResult,
    FileList,
    FileText,
    IngestResult,
    SearchRequest,
    SearchResponse,
)
from app.state import Services, get_services

router = APIRouter(prefix="/archive", tags=["archive"])

# Each route's error responses, from the one table: the middleware's refusals, the archive's
# errors, and what the route adds.
_ERRORS = error_responses(*REFUSALS, *ARCHIVE_ERRORS)
_BODY = error_responses(*REFUSALS, *BODY_ERRORS, *ARCHIVE_ERRORS)
_FILE = error_responses(*REFUSALS, InvalidRequest, ArchiveFileNotFound, *ARCHIVE_ERRORS)
_UPLOAD = error_responses(*REFUSALS, InvalidRequest, DocumentTooLarge, UnsupportedDocument,
                          InvalidDocument, *ARCHIVE_ERRORS)
_RAG = error_responses(*REFUSALS, *BODY_ERRORS, *ARCHIVE_ERRORS, ContextLengthExceeded,
                       *MODEL_ERRORS, *TURN_ERRORS)
#: Bytes of multipart framing allowed above ARCHIVE_MAX_UPLOAD_BYTES before a 413 unread.
_MULTIPART_SLACK = 64 * 1024


@router.post("/search", response_model=SearchResponse, responses=_BODY)
def search(body: SearchRequest, services: Services = Depends(get_services)) -> SearchResponse:
    """The passages closest in meaning to ``query``, best first, optionally within a file or
    chapter."""
    passages = services.require_archive().search(body.query, body.top_k, body)
    return SearchResponse(query=body.query, passages=passages)


@router.get("/files", response_model=FileList, responses=_ERRORS)
def list_files(services: Services = Depends(get_services)) -> FileList:
    """Every archived file with its title, size, chunks and chapters."""
    return services.require_archive().files()


@router.get("/files/{file:path}/text", response_model=FileText, responses=_FILE)
def file_text(file: str, services: Services = Depends(get_services)) -> FileText:
    """The archived text of ``file``, rebuilt exactly from its chunks."""
    return services.require_archive().file_text(file)


@router.delete("/files/{file:path}", response_model=DeleteResult, responses=_FILE)
def delete_file(file: str, services: Services = Depends(get_services)) -> DeleteResult:
    """Remove ``file`` and all its chunks from the archive."""
    return services.require_archive().delete_file(file)


@router.get("/stats", response_model=ArchiveStats, responses=_ERRORS)
def stats(services: Services = Depends(get_services)) -> ArchiveStats:
    """Files, chunks and characters archived, the embedding model and where the store is."""
    return services.require_archive().stats()


@router.post(
    "/files", response_model=IngestResult, status_code=201, responses=_UPLOAD,
    openapi_extra={"requestBody": {"required": True, "content": {"multipart/form-data": {
        "schema": {"type": "object", "required": ["file"],
                   "properties": {"file": {"type": "string", "format": "binary"}}}}}}},
)
async def upload(request: Request, services: Services = Depends(get_services),
                 voice: bool = Query(default=False, description=(
                     "The file is your own writing: it makes your voice profile "
                     "(GET /api/v1/voice) and is never retrieved as story."))
                 ) -> IngestResult:
    """Archive an uploaded .txt, .md, .docx or .html file (multipart field ``file``),
    replacing an earlier file of the same name."""
    archive = services.require_archive()
    name, data = await _read_upload(request, archive.settings.max_upload_bytes)
    return await asyncio.to_thread(functools.partial(archive.ingest_bytes, name, data,
                                                     voice=voice))


async def _read_upload(request: Request, limit: int) -> tuple[str, bytes]:
    """(file name, bytes) of the multipart field ``file``.

    Raises:
        DocumentTooLarge: the body or the file is above ``limit`` bytes.
        InvalidRequest: not multipart, or no ``file`` field.
    """
    declared = request.headers.get("content-length")
    if declared and declared.isdigit() and int(declared) > limit + _MULTIPART_SLACK:
        raise DocumentTooLarge(
            f"The upload is {declared} bytes; the archive takes files up to {limit} bytes "
            "(ARCHIVE_MAX_UPLOAD_BYTES).", param="file", size_bytes=int(declared),
            limit_bytes=limit)
    if not request.headers.get("content-type", "").startswith("multipart/form-data"):
        raise InvalidRequest("Send the file as multipart/form-data in a field named 'file' "
                             "(curl -F file=@story.txt).", param="file")
    async with request.form(max_files=1, max_fields=10) as form:
        upload = form.get("file")
        if not isinstance(upload, UploadFile):
            raise InvalidRequest("The form has no file field named 'file' "
                                 "(curl -F file=@story.txt).", param="file")
        data = await upload.read(limit + 1)
        if len(data) > limit:
            raise DocumentTooLarge(
                f"{upload.filename!r} is more than {limit} bytes; the archive takes files up "
                f"to {limit} bytes (ARCHIVE_MAX_UPLOAD_BYTES).", param="file",
                limit_bytes=limit)
        return upload.filename or "", data
