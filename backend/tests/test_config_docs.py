"""CONFIGURATION.md and .env.example list every setting, and nothing that is not one; both are
what ``python -m app.config_docs`` generates from the declarations; old names keep working."""

import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import GROUPS, Settings, environment_names
from app.config_docs import render_configuration, render_env_example

ROOT = Path(__file__).resolve().parents[2]
SETTINGS = set(environment_names())


def test_configuration_md_lists_every_setting():
    text = (ROOT / "CONFIGURATION.md").read_text()
    documented = set(re.findall(r"^\| `([A-Z0-9_]+)` \|", text, re.MULTILINE))
    assert documented == SETTINGS


def test_env_example_lists_every_setting():
    text = (ROOT / ".env.example").read_text()
    listed = set(re.findall(r"^#? ?([A-Z0-9_]+)=", text, re.MULTILINE))
    assert listed == SETTINGS


def test_configuration_md_defaults_match_the_code():
    text = (ROOT / "CONFIGURATION.md").read_text()
    for name, (_path, field) in environment_names().items():
        row = re.search(rf"^\| `{name}` \| ([^|]*) \|", text, re.MULTILINE)
        assert row, name
        value = field.get_default(call_default_factory=True)
        default = "unset" if value is None else (
            ",".join(value) if isinstance(value, list) else str(value))
        assert row.group(1).strip().strip("`") == default, name


def test_the_docs_are_generated_from_the_declarations():
    assert (ROOT / "CONFIGURATION.md").read_text() == render_configuration(), (
        "run `python -m app.config_docs` in backend/")
    assert (ROOT / ".env.example").read_text() == render_env_example(), (
        "run `python -m app.config_docs` in backend/")


def test_every_setting_has_a_unique_name_and_a_description():
    seen: set[str] = set()
    for name, (path, field) in environment_names().items():
        assert name not in seen and name.isupper(), name
        seen.add(name)
        assert path[0] in GROUPS, name
        assert field.description and len(field.description) > 10, name


@pytest.mark.parametrize(("env", "value", "path", "expected"), [
    ("LLM_N_CTX", "2048", ("model", "n_ctx"), 2048),
    ("LLM_TEMPERATURE", "0.4", ("model", "sampling", "temperature"), 0.4),
    ("PREFIX_CACHE_RAM_BYTES", "1000", ("model", "prefix_cache", "ram_bytes"), 1000),
    ("CONTEXT_MAX_TOKENS", "40000", ("context", "max_tokens"), 40000),
    ("CONTEXT_RECENT_STORY_TOKENS", "9000", ("context", "layers", "recent_story"), 9000),
    ("DISTILLATION_DIALOGUE_TEMPERATURE", "0.5", ("distillation", "temperatures", "dialogue"),
     0.5),
    ("ARCHIVE_DB_PATH", "/tmp/a", ("archive", "db_path"), Path("/tmp/a")),
    ("QUEUE_MAX_WAITING", "3", ("limits", "queue_max_waiting"), 3),
    ("CORS_ORIGINS", "http://a, http://b", ("http", "cors_origins"), ["http://a", "http://b"]),
    ("SSE_PING_SECONDS", "2.5", ("http", "sse_ping_s"), 2.5),
    ("log_prompts", "true", ("observability", "log_prompts"), True),
])
def test_the_environment_names_users_know_keep_working(monkeypatch, env, value, path, expected):
    monkeypatch.setenv(env, value)
    node = Settings()
    for part in path:
        node = getattr(node, part)
    assert node == expected


def test_dotenv_is_read_and_the_environment_wins(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("LLM_N_CTX=1024\nARCHIVE_TOP_K=7\n")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("ARCHIVE_TOP_K", "9")
    settings = Settings()
    assert settings.model.n_ctx == 1024
    assert settings.archive.top_k == 9


def test_flat_names_groups_and_replace_agree():
    flat = Settings(llm_n_ctx=2048, archive_top_k=3)
    grouped = Settings(model={"n_ctx": 2048}, archive={"top_k": 3})
    assert flat == grouped
    changed = flat.replace(queue_max_waiting=0, llm_n_ctx=4096)
    assert (changed.limits.queue_max_waiting, changed.model.n_ctx) == (0, 4096)
    assert changed.archive.top_k == 3 and flat.model.n_ctx == 2048


def test_bad_values_and_unknown_names_are_refused():
    with pytest.raises(ValidationError, match="LLM_FLASH_ATTN"):
        Settings(llm_kv_cache_type="q8_0")
    with pytest.raises(ValidationError, match="llm_n_ctxx"):
        Settings(llm_n_ctxx=2048)
    with pytest.raises(ValidationError):
        Settings().replace(context_system_tokens=40000)


def test_errors_name_the_variable_and_never_quote_a_key(monkeypatch):
    monkeypatch.setenv("LLM_N_CTX", "12")
    with pytest.raises(ValidationError) as raised:
        Settings()
    assert "LLM_N_CTX: Input should be greater than or equal to 256" in str(raised.value)
    monkeypatch.delenv("LLM_N_CTX")
    with pytest.raises(ValidationError) as raised:
        Settings(api_keys="alice:tooshort-key")
    assert "API_KEYS" in str(raised.value) and "tooshort-key" not in str(raised.value)
