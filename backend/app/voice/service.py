"""Voice profiles per tenant, built from the archive's voice-tagged passages and rebuilt when
those change (:meth:`app.archive.service.Archive.voice_signature`)."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import numpy as np

from app.errors import VoiceProfileMissing
from app.voice.profile import VoiceProfile

if TYPE_CHECKING:
    from app.archive.service import Archive


class VoiceProfiles:
    """A cache of one :class:`VoiceProfile` per tenant archive (by collection name)."""

    def __init__(self) -> None:
        self._profiles: dict[str, tuple[str, VoiceProfile]] = {}
        self._lock = threading.Lock()

    def profile(self, archive: Archive) -> VoiceProfile:
        """The voice profile of ``archive`` (blocking: reads Chroma; call off the loop).

        Raises:
            VoiceProfileMissing: no file of the archive is tagged voice (HTTP 404).
            ArchiveUnavailable: the store failed.
        """
        signature = archive.voice_signature()
        if not signature:
            raise VoiceProfileMissing(
                "No archive file is tagged as your own writing: upload or ingest samples of "
                "it with voice=true (POST /api/v1/archive/files?voice=true, or "
                "`writer-assistant ingest --voice`).")
        key = archive.store.name
        with self._lock:
            cached = self._profiles.get(key)
            if cached is not None and cached[0] == signature:
                return cached[1]
        files, texts, embeddings = archive.voice_passages()
        profile = VoiceProfile.build(files, texts, embeddings)
        with self._lock:
            self._profiles[key] = (signature, profile)
        return profile

    def centroid(self, archive: Archive) -> np.ndarray | None:
        """The voice centroid of ``archive``, or ``None`` when it has no voice files."""
        try:
            return self.profile(archive).centroid
        except VoiceProfileMissing:
            return None
