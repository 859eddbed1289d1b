"""`writer-assistant generations list|show|replay|export` on records made by `generate`."""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import bootstrap, cli
from app.llm.fake import FakeGenerator
from tests.conftest import seed_example


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    return {"ARCHIVE_ENABLED": "false", "SUMMARY_CACHE_DIR": str(tmp_path / "summaries"),
            "GENERATIONS_DB_PATH": str(tmp_path / "generations.sqlite3"),
            "LLM_BACKEND": "llama_cpp"}


def invoke(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def made(env, tmp_path, monkeypatch) -> tuple[str, Path]:
    """One generation made by `generate` (the fake model): its id and request file."""
    fake = FakeGenerator(replies=[lambda _m, p: f"Aria counted {p.seed} pines in the dark."])
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: fake)
    path = tmp_path / "seed.json"
    path.write_text(json.dumps({**seed_example(), "story_id": "forest", "max_tokens": 20}))
    result = invoke(env, "generate", str(path))
    assert result.exit_code == 0, result.output
    found = re.search(r"(gen_[0-9a-f]{32}) seed (\d+) cache off", result.stderr)
    assert found, result.stderr
    return found.group(1), path


def test_list_show_and_export(env, made, tmp_path):
    generation_id, _ = made
    listed = invoke(env, "generations", "list", "--story-id", "forest")
    assert listed.exit_code == 0 and generation_id in listed.stdout
    assert "1 of 1 records" in listed.stderr
    assert "0 of 0" in invoke(env, "generations", "list", "--story-id", "other").stderr
    shown = invoke(env, "generations", "show", generation_id)
    record = json.loads(shown.stdout)
    assert record["id"] == generation_id and record["text"].startswith("Aria counted")
    out = tmp_path / "records.jsonl"
    exported = invoke(env, "generations", "export", "--out", str(out))
    assert exported.exit_code == 0 and "exported 1 records" in exported.stderr
    lines = out.read_text().splitlines()
    assert len(lines) == 1 and json.loads(lines[0])["id"] == generation_id
    missing = invoke(env, "generations", "show", "gen_nope")
    assert missing.exit_code == 2 and "generation_not_found" in missing.stderr
    other = invoke(env, "--tenant", "bob", "generations", "show", generation_id)
    assert other.exit_code == 2  # another tenant's record is not there


def test_replay_needs_the_request_and_reproduces_the_text(env, made):
    generation_id, path = made
    refused = invoke(env, "generations", "replay", generation_id)
    assert refused.exit_code == 2 and "store_request" in refused.stderr
    replayed = invoke(env, "generations", "replay", generation_id, "--request", str(path))
    assert replayed.exit_code == 0, replayed.output
    assert "identical" in replayed.stderr and "DIFFERENT" not in replayed.stderr
    assert replayed.stdout.startswith("Aria counted")


def test_no_store_is_a_clear_exit_2(tmp_path):
    result = invoke({"GENERATIONS_DB_PATH": str(tmp_path / "none.sqlite3")},
                    "generations", "list")
    assert result.exit_code == 2 and "GENERATIONS_DB_PATH" in result.stderr
