"""An adapter served beside the base over HTTP, on the real embedded model: registered with
the command line, listed by GET /api/v1/models with its training record, and picked by a
request's `model`."""

from __future__ import annotations

import httpx
import pytest
from typer.testing import CliRunner

from app import cli
from app.config import Settings
from app.llm.llama import default_model_path, file_sha256
from app.main import create_app
from tests.conftest import serve
from tests.lora import finetune_dir

pytestmark = pytest.mark.model


def test_a_request_picks_the_adapter_and_models_lists_it(tmp_path, monkeypatch):
    base_gguf = default_model_path()
    base_sha256 = file_sha256(base_gguf)
    monkeypatch.setenv("ADAPTERS_DIR", str(tmp_path / "adapters"))
    source = finetune_dir(tmp_path / "ft", base_gguf, base_sha256)
    added = CliRunner().invoke(cli.app, ["adapters", "add", "holmes", str(source)])
    assert added.exit_code == 0, added.output
    settings = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False,
                        generations_db_path=tmp_path / "generations.sqlite3",
                        adapters_dir=tmp_path / "adapters", quality_max_retries=0,
                        llm_n_ctx=2048, llm_n_threads=1)
    chat = {"messages": [{"role": "user", "content": "Describe Baker Street in fog."}],
            "max_tokens": 12, "temperature": 0}
    with serve(create_app(settings)) as base_url, \
            httpx.Client(base_url=base_url, timeout=300) as http:
        models = http.get("/api/v1/models").json()
        assert models["base"]["sha256"] == base_sha256 and models["base"]["n_ctx"] == 2048
        [listed] = models["adapters"]
        assert listed["id"] == "holmes" and listed["training"]["steps"] == 2
        base = http.post("/api/v1/llm-chat", json=chat)
        tuned = http.post("/api/v1/llm-chat", json={**chat, "model": "holmes"})
        assert base.status_code == tuned.status_code == 200, tuned.text
        assert tuned.json()["model"] == f"{base.json()['model']}+holmes"
        assert tuned.json()["message"] != base.json()["message"]
        record = http.get(f"/api/v1/generations/{tuned.json()['generation_id']}").json()
        assert record["model"]["adapter_sha256"] == listed["sha256"]
        unknown = http.post("/api/v1/llm-chat", json={**chat, "model": "watson"})
        assert unknown.status_code == 422
        assert unknown.json()["error"]["details"]["available"] == ["base", "holmes"]
