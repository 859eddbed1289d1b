"""``/api/v1/evaluations`` on the real app: the service's own generations on the scripted
model, the evaluation on the real embedded GGUF with a real (tiny) LoRA adapter. Driven
through httpx's ASGI transport on the test's own event loop, so the test can hold the
model's turn itself."""

from __future__ import annotations

import asyncio
import json
import shutil
from collections.abc import AsyncIterator
from pathlib import Path

import gguf
import httpx
import numpy as np
import pytest
from pydantic import SecretStr

from app.config import Settings
from app.llm.fake import FakeGenerator
from app.main import create_app
from tests.finetune.adapters import write_lora
from tests.finetune.evaluation_data import write_validation

pytestmark = pytest.mark.model

ALICE, BOB = "alice-key-0123456789", "bob-key-0123456789ab"
PNG = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def prepared(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Adapters and datasets, made once: the tiny adapter, a two-example validation split,
    an empty one, a text file named .gguf and an adapter that records no base model."""
    root = tmp_path_factory.mktemp("prepared")
    write_lora(root / "adapters" / "tiny" / "adapter.gguf", scale_b=0.2)
    write_validation(root / "datasets" / "holmes" / "validation.jsonl")
    (root / "datasets" / "empty").mkdir(parents=True)
    (root / "datasets" / "empty" / "validation.jsonl").write_text("\n")
    (root / "adapters" / "text.gguf").write_text("not a model")
    writer = gguf.GGUFWriter(str(root / "adapters" / "foreign.gguf"), "llama")
    writer.add_type(gguf.GGUFType.ADAPTER)  # a LoRA adapter that records no base model
    writer.add_string(gguf.Keys.Adapter.TYPE, "lora")
    writer.add_tensor("blk.0.attn_q.weight.lora_a", np.zeros((2, 576), np.float32))
    writer.add_tensor("blk.0.attn_q.weight.lora_b", np.zeros((576, 2), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    return root


@pytest.fixture
def finetune_dir(prepared: Path, tmp_path: Path) -> Path:
    """A fresh FINETUNE_DIR per test (no evaluations yet) holding the prepared files."""
    return Path(shutil.copytree(prepared, tmp_path / "finetune"))


def app_settings(settings: Settings, finetune_dir: Path, **changes: object) -> Settings:
    return settings.replace(finetune_dir=finetune_dir, evaluation_n_ctx=512, **changes)


@pytest.fixture
async def client(settings: Settings, finetune_dir: Path) -> AsyncIterator[httpx.AsyncClient]:
    app = create_app(app_settings(settings, finetune_dir), generator=FakeGenerator(["ok"]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as session:
        session.app = app  # type: ignore[attr-defined]
        yield session
    await app.state.services.evaluations.aclose()


async def finished(client: httpx.AsyncClient, url: str, headers: dict | None = None,
                   timeout_s: float = 240.0) -> dict:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while loop.time() < deadline:
        body = (await client.get(url, headers=headers)).json()
        if body["status"] in ("done", "failed"):
            return body
        await asyncio.sleep(0.25)
    raise AssertionError(f"the evaluation did not finish: {body}")


BODY = {"adapter": "tiny", "validation": "holmes", "examples": 2, "max_tokens": 4}


async def test_a_job_waits_for_its_turn_runs_to_the_end_and_survives_a_restart(
        client, settings, finetune_dir):
    scheduler = client.app.state.services.scheduler
    turn = scheduler.reserve()  # an interactive generation holds the model
    async with turn:
        response = await client.post("/api/v1/evaluations", json=BODY)
        assert response.status_code == 202, response.text
        job = response.json()
        assert job["status"] == "queued" and job["progress"] == {"done": 0, "total": 2}
        url = response.headers["Location"]
        await asyncio.sleep(1.5)
        waiting = (await client.get(url)).json()
        assert waiting["status"] == "queued" and waiting["progress"]["done"] == 0
        assert scheduler.waiting == 1  # the job's background turn, behind ours

    done = await finished(client, url)
    assert done["status"] == "done", done["error"]
    assert done["progress"] == {"done": 2, "total": 2}
    report = done["report"]
    assert [row["index"] for row in report["examples"]] == [0, 1]
    assert report["base"]["perplexity"] > 1 and report["tuned"]["perplexity"] > 1
    assert report["base"]["perplexity"] != report["tuned"]["perplexity"]
    assert report["settings"]["max_tokens"] == 4 and report["settings"]["adapter"] == "tiny"
    assert report["base"]["style_similarity"] is None and "ARCHIVE_ENABLED" in (
        report["style_note"])
    assert len(report["samples"]) == 2 and report["samples"][0]["reference"]
    chart = await client.get(done["chart_url"])
    assert chart.status_code == 200 and chart.headers["content-type"] == "image/png"
    assert chart.content.startswith(PNG)

    restarted = create_app(app_settings(settings, finetune_dir), generator=FakeGenerator([]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=restarted),
                                 base_url="http://test") as again:
        kept = (await again.get(url)).json()
    assert kept["status"] == "done" and kept["report"] == report


async def test_another_tenants_job_is_not_found(settings, finetune_dir):
    keys = SecretStr(f"alice:{ALICE},bob:{BOB}")
    app = create_app(app_settings(settings, finetune_dir, api_keys=keys),
                     generator=FakeGenerator([]))
    async with httpx.AsyncClient(transport=httpx.ASGITransport(app=app),
                                 base_url="http://test") as client:
        alice, bob = {"X-API-Key": ALICE}, {"X-API-Key": BOB}
        response = await client.post("/api/v1/evaluations", headers=alice,
                                     json={**BODY, "examples": 1, "max_tokens": 2})
        assert response.status_code == 202, response.text
        url = response.headers["Location"]
        for path in (url, f"{url}/chart.png"):
            refused = await client.get(path, headers=bob)
            assert refused.status_code == 404
            assert refused.json()["error"]["code"] == "evaluation_not_found"
        assert (await finished(client, url, alice))["status"] == "done"
        assert (await client.get(f"{url}/chart.png", headers=bob)).status_code == 404
    await app.state.services.evaluations.aclose()


@pytest.mark.parametrize(("change", "status", "code"), [
    ({"adapter": "../adapters/tiny"}, 422, "invalid_request"),
    ({"validation": "/etc/passwd"}, 422, "invalid_request"),
    ({"validation": "holmes/../../adapters"}, 422, "invalid_request"),
    ({"adapter": "\u0000"}, 422, "invalid_request"),  # the fuzz found a 500 here
    ({"examples": 0}, 422, "invalid_request"),
    ({"adapter": "nothing"}, 404, "adapter_not_found"),
    ({"validation": "nothing"}, 404, "dataset_not_found"),
    ({"validation": "empty"}, 422, "dataset_invalid"),
    ({"adapter": "text.gguf"}, 422, "invalid_adapter"),
    ({"adapter": "foreign"}, 409, "adapter_mismatch"),
])
async def test_bad_requests_are_refused_before_any_model_work(client, finetune_dir, change,
                                                               status, code):
    response = await client.post("/api/v1/evaluations", json={**BODY, **change})
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code and error["message"]
    assert not (finetune_dir / "evaluations").exists()  # no job was recorded


async def test_unknown_and_interrupted_jobs(client, finetune_dir):
    missing = await client.get("/api/v1/evaluations/" + "0" * 32)
    assert missing.status_code == 404
    assert missing.json()["error"]["code"] == "evaluation_not_found"
    assert (await client.get("/api/v1/evaluations/..%2F..%2Fx")).status_code == 404

    job_id = "ab" * 16  # a job a previous process left running
    directory = finetune_dir / "evaluations" / "local" / job_id
    directory.mkdir(parents=True)
    (directory / "job.json").write_text(json.dumps({
        "id": job_id, "status": "running", "progress": {"done": 1, "total": 2},
        "request": BODY, "created_at": "2026-11-30T12:00:00Z"}))
    body = (await client.get(f"/api/v1/evaluations/{job_id}")).json()
    assert body["status"] == "failed" and body["error"]["code"] == "evaluation_interrupted"
    assert (await client.get(f"/api/v1/evaluations/{job_id}/chart.png")).status_code == 404
