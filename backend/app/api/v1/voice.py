"""``/api/v1/voice`` (the author's voice profile, and a text compared with it) and
``/api/v1/feedback`` (the author's choices among variants and drafts).

Blocking calls (Chroma, embedding, SQLite) run in FastAPI's thread pool (plain ``def``
routes)."""

from __future__ import annotations

import logging
import sqlite3
from dataclasses import asdict
from typing import Any

import anyio.to_thread
from fastapi import APIRouter, Depends, Query

from app.api.errors import ARCHIVE_ERRORS, BODY_ERRORS, REFUSALS, error_responses
from app.errors import (
    ArchiveUnavailable,
    FeedbackUnavailable,
    InvalidDocument,
    InvalidRequest,
    VoiceProfileMissing,
    WriterAssistantError,
)
from app.schemas.voice import (
    FeedbackList,
    FeedbackOut,
    FeedbackRequest,
    VoiceCompareRequest,
    VoiceComparison,
    VoiceProfileResponse,
)
from app.state import Services, get_services
from app.tenancy import current_tenant
from app.voice.feedback import with_notes

logger = logging.getLogger(__name__)

router = APIRouter(tags=["voice"])

_VOICE = error_responses(*REFUSALS, InvalidRequest, *ARCHIVE_ERRORS, VoiceProfileMissing)
_COMPARE = error_responses(*REFUSALS, *BODY_ERRORS, *ARCHIVE_ERRORS, VoiceProfileMissing)
_FEEDBACK = error_responses(*REFUSALS, *BODY_ERRORS, FeedbackUnavailable)


async def carry_notes(services: Services, body: Any) -> Any:
    """``body`` with the notes waiting for its ``story_id`` (see
    :func:`app.voice.feedback.with_notes`); unchanged without a story id or when the feedback
    database cannot be read (logged: the notes wait for the next request)."""
    story_id = getattr(body, "story_id", None)
    if not story_id:
        return body
    tenant = current_tenant.get()
    try:
        store = services.require_feedback()
        notes = await anyio.to_thread.run_sync(store.take_notes, tenant, story_id)
    except (FeedbackUnavailable, sqlite3.Error) as error:
        logger.warning("feedback notes not carried: %s", type(error).__name__)
        return body
    return with_notes(body, notes)


@router.get("/voice", response_model=VoiceProfileResponse, responses=_VOICE)
def voice(text: str | None = Query(default=None, min_length=1, max_length=20_000,
                                   description="A text to compare with the profile "
                                   "(longer ones: POST /voice/compare)."),
          services: Services = Depends(get_services)) -> VoiceProfileResponse:
    """Your voice profile, built from the archive files tagged as your own writing: its files,
    passages, embedding centroid's dimension and stylometrics (sentence length, dialogue
    share, words per paragraph, type-token ratio, function-word profile); with ``text``, how
    that text compares with it."""
    archive = services.require_archive()
    profile = services.voices.profile(archive)
    comparison = (VoiceComparison.model_validate(profile.compare(text, archive.embedder.embed))
                  if text else None)
    return VoiceProfileResponse.model_validate(
        {**profile.summary(), "embedding_model": archive.embedder.name,
         "comparison": comparison})


@router.post("/voice/compare", response_model=VoiceComparison, responses=_COMPARE)
def voice_compare(body: VoiceCompareRequest,
                  services: Services = Depends(get_services)) -> VoiceComparison:
    """How ``text`` compares with your voice: the cosine between its embedding and the
    profile's centroid, the similarity of its function-word profile, and each measure beside
    the profile's."""
    archive = services.require_archive()
    profile = services.voices.profile(archive)
    return VoiceComparison.model_validate(profile.compare(body.text, archive.embedder.embed))


def _exemplar(services: Services, record_id: int, story_id: str, chosen: str
              ) -> tuple[str | None, str | None]:
    """Archive the chosen passage tagged voice: (its file name, None) or (None, why not)."""
    archive = services.tenant_archive()
    if archive is None:
        return None, "the archive is off or still loading"
    name = f"feedback/{story_id}/{record_id}.txt"
    try:
        archive.ingest_bytes(name, chosen.encode("utf-8"), voice=True)
    except (ArchiveUnavailable, InvalidDocument) as error:
        logger.warning("a chosen passage was not archived: %s", error.code)
        return None, error.message
    return name, None


@router.post("/feedback", response_model=FeedbackOut, status_code=201, responses=_FEEDBACK)
def add_feedback(body: FeedbackRequest,
                 services: Services = Depends(get_services)) -> FeedbackOut:
    """Record your choice among variants or drafts of a story. The chosen passage becomes a
    voice exemplar (archived tagged as your voice, when the archive is on); a note with
    ``carry_note`` goes into the story's next prose request that names ``story_id``."""
    store = services.require_feedback()
    tenant = current_tenant.get()
    try:
        record = store.add(tenant, body.story_id, operation=body.operation, chosen=body.chosen,
                           rejected=list(body.rejected), rating=body.rating, note=body.note,
                           carry_note=body.carry_note)
    except WriterAssistantError:
        raise
    except Exception as error:
        logger.warning("feedback could not be stored: %s: %s", type(error).__name__, error)
        raise FeedbackUnavailable("The feedback database could not be written: check "
                                  "FEEDBACK_DB_PATH (see the server log).",
                                  param="FEEDBACK_DB_PATH") from error
    note = None
    if body.chosen is not None:
        file, note = _exemplar(services, record.id, body.story_id, body.chosen)
        if file is not None:
            record = store.set_exemplar(tenant, record.id, file)
    return FeedbackOut(**asdict(record), exemplar_note=note)


@router.get("/feedback", response_model=FeedbackList, responses=_FEEDBACK)
def list_feedback(story_id: str = Query(min_length=1, max_length=200),
                  services: Services = Depends(get_services)) -> FeedbackList:
    """A story's feedback, oldest first."""
    records = services.require_feedback().for_story(current_tenant.get(), story_id)
    return FeedbackList(story_id=story_id,
                        feedback=[FeedbackOut(**asdict(r)) for r in records])
