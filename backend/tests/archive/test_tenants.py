"""With API keys, each key is a tenant: one can never read, search or delete another's archive
(404, not 403), and agents only retrieve from their own tenant's archive."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from pydantic import SecretStr

from app.llm.fake import FakeGenerator
from app.main import create_app

from .conftest import settings_for, wait_archive
from .test_api import API, STORY, archive_elements

ALICE = {"Authorization": "Bearer alice-key-0123456789"}
BOB = {"Authorization": "Bearer bob-key-abcdefghijkl"}


@pytest.fixture
def tenants(tmp_path: Path, embedder) -> Iterator[TestClient]:
    settings = settings_for("embedded", tmp_path, None).replace(
        api_keys=SecretStr("alice:alice-key-0123456789,bob:bob-key-abcdefghijkl"),
        rate_limit_per_minute=0, rate_limit_concurrent=0)
    app = create_app(settings, generator=FakeGenerator(replies=["Fine."]))
    with TestClient(app) as client:
        assert wait_archive(client) == "ready"
        yield client


def test_tenants_cannot_see_each_others_archive(tenants: TestClient) -> None:
    uploaded = tenants.post(f"{API}/files", files={"file": ("secret.txt", STORY.encode())},
                            headers=ALICE)
    assert uploaded.status_code == 201
    name = uploaded.json()["file"]
    assert [f["file"] for f in tenants.get(f"{API}/files", headers=ALICE).json()["files"]] \
        == [name]
    assert tenants.get(f"{API}/files", headers=BOB).json()["files"] == []
    for method, path in [("GET", f"{API}/files/{name}/text"), ("DELETE", f"{API}/files/{name}")]:
        response = tenants.request(method, path, headers=BOB)
        assert response.status_code == 404  # not 403: Bob cannot learn the file exists
    query = {"query": STORY.split(".")[0], "top_k": 5}
    assert tenants.post(f"{API}/search", json=query, headers=BOB).json()["passages"] == []
    assert tenants.post(f"{API}/search", json=query, headers=ALICE).json()["passages"]
    assert tenants.get(f"{API}/files/{name}/text", headers=ALICE).status_code == 200


def test_agents_retrieve_only_from_their_own_tenant(tenants: TestClient) -> None:
    tenants.post(f"{API}/files", files={"file": ("secret.txt", STORY.encode())}, headers=ALICE)
    body = {"structured_context": {"plot_elements": [
        {"type": "plot_point", "content": STORY.split(".")[0]}]}, "max_tokens": 8}
    mine = tenants.post("/api/v1/generate-chapter", json=body, headers=ALICE).json()
    theirs = tenants.post("/api/v1/generate-chapter", json=body, headers=BOB).json()
    assert archive_elements(mine["context_metadata"])
    assert archive_elements(theirs["context_metadata"]) == []
