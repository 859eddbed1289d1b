"""End to end on the real embedded model: a chapter request grounded on the archived corpus."""

from __future__ import annotations

import time

import pytest
from fastapi.testclient import TestClient

from app.archive.service import Archive
from app.config import Settings
from app.main import create_app

from .conftest import SHERLOCK, wait_archive
from .test_api import KKK_CHAPTER, archive_elements


@pytest.mark.model
@pytest.mark.parametrize("corpus_archive", ["embedded"], indirect=True)
def test_real_model_writes_with_archive_passages_in_its_report(corpus_archive: Archive) -> None:
    with TestClient(create_app(Settings(archive=corpus_archive.settings))) as client:
        deadline = time.monotonic() + 180
        while client.get("/health").json()["model_status"] == "loading":
            assert time.monotonic() < deadline, "the model did not load in 180 s"
            time.sleep(0.2)
        assert client.get("/health").json()["model_status"] == "ready"
        assert wait_archive(client) == "ready"
        response = client.post("/api/v1/generate-chapter",
                               json={**KKK_CHAPTER, "max_tokens": 16, "seed": 7})
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["chapter_text"].strip()
    report = body["context_metadata"]
    assert report["prompt_tokens"] + report["max_tokens"] <= report["n_ctx"]
    kept = [e for e in archive_elements(report) if e["fate"] == "kept"]
    assert any(e["source"]["file"] == SHERLOCK.name
               and e["source"]["chapter"] == "V. THE FIVE ORANGE PIPS" for e in kept), kept
