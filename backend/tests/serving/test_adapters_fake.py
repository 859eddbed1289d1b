"""Adapters served beside the base, on the fake model: the registry, the command line, a
request's `model` (routing, refusals, records and the cache key) and GET /api/v1/models."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from app import cli
from app.config import Settings
from app.errors import AdapterMismatch, InvalidRequest, UnknownModel
from app.finetune.registry import AdapterRegistry
from app.llm.fake import FakeGenerator
from app.llm.llama import default_model_path, file_sha256
from app.main import create_app
from tests.conftest import seed_example
from tests.lora import finetune_dir, metadata_adapter


@pytest.fixture(scope="module")
def base_gguf() -> Path:
    return default_model_path()


@pytest.fixture(scope="module")
def base_sha256(base_gguf: Path) -> str:
    return file_sha256(base_gguf)


@pytest.fixture
def registry(settings: Settings) -> AdapterRegistry:
    return AdapterRegistry(settings.adapters.dir)


@pytest.fixture(scope="module")
def _prebuilt(base_gguf, base_sha256, tmp_path_factory) -> Path:
    """A registry with `holmes` (from a fine-tune's directory, record included) and `bare`
    (a bare GGUF file); registering reads the base GGUF's metadata (seconds), so once."""
    out = tmp_path_factory.mktemp("sources")
    registry = AdapterRegistry(out / "adapters")
    registry.add("holmes", finetune_dir(out / "ft", base_gguf, base_sha256, tensors=False),
                 base_gguf)
    registry.add("bare", metadata_adapter(out / "bare.gguf", base_sha256), base_gguf)
    return registry.directory


@pytest.fixture
def holmes(registry, _prebuilt) -> AdapterRegistry:
    """This test's registry holding `holmes` and `bare` (see ``_prebuilt``)."""
    shutil.copytree(_prebuilt, registry.directory)
    return registry


def test_the_registry_adds_lists_resolves_and_removes(holmes, base_sha256):
    assert holmes.names() == ["base", "bare", "holmes"]
    adapter = holmes.get("holmes")
    assert adapter.record is not None and adapter.record.steps == 2
    assert holmes.get("bare").record is None
    assert adapter.path.read_bytes()[:4] == b"GGUF" and adapter.path.parent.name == "holmes"
    assert holmes.resolve("base", base_sha256) is None
    ref = holmes.resolve("holmes", base_sha256)
    assert ref is not None and ref.sha256 == file_sha256(adapter.path) == adapter.entry.sha256
    with pytest.raises(AdapterMismatch):  # the served base changed since it was registered
        holmes.resolve("holmes", "f" * 64)
    with pytest.raises(UnknownModel) as unknown:
        holmes.resolve("watson", base_sha256)
    assert unknown.value.details["available"] == ["base", "bare", "holmes"]
    holmes.remove("bare")
    assert holmes.names() == ["base", "holmes"]


@pytest.mark.parametrize("name", ["base", "Holmes", "-x", "a b", "x" * 65, "../up", ""])
def test_bad_names_are_refused(registry, base_gguf, base_sha256, tmp_path, name):
    with pytest.raises(InvalidRequest):
        registry.add(name, metadata_adapter(tmp_path / "a.gguf", base_sha256), base_gguf)
    assert not registry.directory.exists() or not any(registry.directory.iterdir())


def test_a_taken_name_is_refused_unless_replaced(holmes, base_gguf, base_sha256, tmp_path):
    again = metadata_adapter(tmp_path / "again.gguf", base_sha256)
    with pytest.raises(InvalidRequest, match="registered already"):
        holmes.add("holmes", again, base_gguf)
    replaced = holmes.add("holmes", again, base_gguf, replace=True)
    assert replaced.record is None and holmes.get("holmes").entry.sha256 == file_sha256(again)
    assert sorted(p.name for p in holmes.directory.iterdir()) == ["bare", "holmes"]


def test_an_adapter_for_another_base_model_is_refused(registry, base_gguf, tmp_path):
    with pytest.raises(AdapterMismatch, match="another base model"):
        registry.add("other", metadata_adapter(tmp_path / "other.gguf"), base_gguf)
    assert registry.names() == ["base"]


def test_the_command_line_adds_lists_and_removes(settings, base_gguf, base_sha256, tmp_path,
                                                 monkeypatch):
    monkeypatch.setenv("ADAPTERS_DIR", str(settings.adapters.dir))
    runner = CliRunner()
    source = finetune_dir(tmp_path / "ft", base_gguf, base_sha256, tensors=False)
    added = runner.invoke(cli.app, ["adapters", "add", "holmes", str(source)])
    assert added.exit_code == 0, added.output
    assert "registered holmes" in added.output and "2 steps, train loss 3.250" in added.output
    listed = runner.invoke(cli.app, ["adapters", "list"])
    assert listed.exit_code == 0 and listed.output.startswith("holmes\t")
    entries = json.loads(runner.invoke(cli.app, ["adapters", "list", "--json"]).output)
    assert entries[0]["name"] == "holmes" and entries[0]["training"]["steps"] == 2
    foreign = runner.invoke(cli.app, ["adapters", "add", "other",
                                      str(metadata_adapter(tmp_path / "o.gguf"))])
    assert foreign.exit_code == 2 and "adapter_mismatch" in foreign.output
    assert "another base model" in foreign.output
    for bad in (["add", "base", str(source)], ["add", "x", str(tmp_path / "none.gguf")],
                ["remove", "watson"]):
        refused = runner.invoke(cli.app, ["adapters", *bad])
        assert refused.exit_code == 2, (bad, refused.output)
    removed = runner.invoke(cli.app, ["adapters", "remove", "holmes"])
    assert removed.exit_code == 0
    assert "no adapters" in runner.invoke(cli.app, ["adapters", "list"]).output


def _app(settings: Settings, generator: FakeGenerator) -> TestClient:
    return TestClient(create_app(settings, generator=generator))


def test_a_request_picks_its_model_and_the_record_names_it(settings, holmes, base_sha256):
    fake = FakeGenerator(sha256=base_sha256)
    with _app(settings, fake) as client:
        base = client.post("/api/v1/generate-chapter", json={**seed_example(), "seed": 3})
        tuned = client.post("/api/v1/generate-chapter",
                            json={**seed_example(), "seed": 3, "model": "holmes"})
        assert base.status_code == tuned.status_code == 200, tuned.text
        assert fake.adapters == [None, "holmes"]
        assert fake.calls[1][1].adapter == holmes.resolve("holmes", base_sha256)
        assert base.json()["model"] == "fake" and tuned.json()["model"] == "fake+holmes"
        # the cache keys on the adapter: the same seeded request on another model generates
        assert base.json()["cache"] == tuned.json()["cache"] == "miss"
        record = client.get(f"/api/v1/generations/{tuned.json()['generation_id']}").json()
        assert record["model"]["adapter"] == "holmes"
        assert record["model"]["adapter_sha256"] == holmes.get("holmes").entry.sha256
        again = client.post("/api/v1/generate-chapter",
                            json={**seed_example(), "seed": 3, "model": "holmes"}).json()
        assert again["cache"] == "hit" and again["model"] == "fake+holmes"
        assert len(fake.calls) == 2


def test_an_unknown_model_is_a_422_naming_the_available_ones(settings, holmes, base_sha256):
    fake = FakeGenerator(sha256=base_sha256)
    with _app(settings, fake) as client:
        for path, body in (("/api/v1/llm-chat", {"messages": [{"role": "user",
                                                              "content": "Hi"}]}),
                           ("/api/v1/chapter-pipeline", seed_example())):
            answer = client.post(path, json={**body, "model": "watson"})
            assert answer.status_code == 422, answer.text
            error = answer.json()["error"]
            assert error["code"] == "unknown_model" and error["param"] == "model"
            assert error["details"]["available"] == ["base", "bare", "holmes"]
            assert "watson" in error["message"] and "holmes" in error["message"]
        assert fake.calls == []


def test_an_adapter_for_another_served_base_is_a_409(settings, holmes):
    with _app(settings, FakeGenerator()) as client:  # its sha256 is not the adapters' base
        answer = client.post("/api/v1/generate-chapter",
                             json={**seed_example(), "model": "holmes"})
        assert answer.status_code == 409 and answer.json()["error"]["code"] == "adapter_mismatch"


def test_a_backend_without_adapters_serves_only_base(settings, holmes, base_sha256):
    fake = FakeGenerator(sha256=base_sha256, serves_adapters=False)
    with _app(settings, fake) as client:
        answer = client.post("/api/v1/generate-chapter",
                             json={**seed_example(), "model": "holmes"})
        assert answer.status_code == 422
        assert answer.json()["error"]["details"]["available"] == ["base"]
        assert client.post("/api/v1/generate-chapter",
                           json={**seed_example(), "model": "base"}).status_code == 200
        assert client.get("/api/v1/models").json()["adapters"] == []


def test_the_pipeline_runs_every_call_on_its_model(settings, holmes, base_sha256):
    from tests.agents.test_pipeline import Team

    fake = FakeGenerator(replies=[Team(scores=[3])], sha256=base_sha256)
    with _app(settings, fake) as client:
        answer = client.post("/api/v1/chapter-pipeline",
                             json={**seed_example(), "model": "holmes", "max_rounds": 2})
        assert answer.status_code == 200, answer.text
        body = answer.json()
        assert body["model"] == "fake+holmes" and body["stopped_because"] == "max_rounds"
        # draft, review, rating, revision, review, rating: all on the adapter
        assert fake.adapters == ["holmes"] * 6
        record = client.get(f"/api/v1/generations/{body['generation_id']}").json()
        assert record["model"]["adapter"] == "holmes"


def test_models_lists_the_base_and_every_adapter_with_its_record(settings, holmes,
                                                                base_sha256):
    fake = FakeGenerator(sha256=base_sha256)
    with _app(settings, fake) as client:
        body = client.get("/api/v1/models").json()
    assert body["base"] == {"id": "base", "name": "fake", "sha256": base_sha256,
                            "n_ctx": fake.n_ctx, "runtime": "fake"}
    assert [a["id"] for a in body["adapters"]] == ["bare", "holmes"]
    tuned = body["adapters"][1]
    assert tuned["name"] == "fake+holmes" and tuned["base_model_sha256"] == base_sha256
    assert tuned["sha256"] == holmes.get("holmes").entry.sha256
    training = tuned["training"]
    assert training["steps"] == 2 and training["hyperparameters"]["lora_r"] == 4
    assert training["train_loss"] == 3.25 and training["dataset"]["train"]["examples"] == 4
    assert body["adapters"][0]["training"] is None


def test_the_request_digest_names_an_adapter_but_not_the_default_base():
    from app.generations.records import request_json, request_sha256
    from app.schemas.requests import GenerateChapterRequest

    plain = GenerateChapterRequest.model_validate(seed_example())
    base = GenerateChapterRequest.model_validate({**seed_example(), "model": "base"})
    tuned = GenerateChapterRequest.model_validate({**seed_example(), "model": "holmes"})
    assert "model" not in request_json(base) and request_json(tuned)["model"] == "holmes"
    assert request_sha256(plain) == request_sha256(base) != request_sha256(tuned)
