"""Settings users already know from the original Writer Assistant: the layer names A, C, D, E
as aliases, ENDPOINT_<OPERATION>_MAX_TOKENS / _TEMPERATURE, and a warning at startup for a
variable that looks like a setting but is none."""

import logging
import re
from pathlib import Path

import pytest
from pydantic import ValidationError

from app.config import (
    OPERATIONS,
    Settings,
    alias_names,
    endpoint_prefix,
    environment_names,
    unknown_settings,
)
from app.main import create_app

ROOT = Path(__file__).resolve().parents[2]

#: The original README's layers and ours (it names no layer B).
LAYER_ALIASES = {
    "CONTEXT_LAYER_A_TOKENS": ("CONTEXT_SYSTEM_TOKENS", "system"),
    "CONTEXT_LAYER_C_TOKENS": ("CONTEXT_RECENT_STORY_TOKENS", "recent_story"),
    "CONTEXT_LAYER_D_TOKENS": ("CONTEXT_CHARACTERS_TOKENS", "characters"),
    "CONTEXT_LAYER_E_TOKENS": ("CONTEXT_PLOT_WORLD_TOKENS", "plot_world"),
}


@pytest.fixture(autouse=True)
def _clean(monkeypatch, tmp_path):
    """No .env of the working directory, and none of the variables these tests set."""
    monkeypatch.chdir(tmp_path)
    for name in [*environment_names(), *alias_names(), "LLM_NCTX", "CONTEXT_LAYER_B_TOKENS"]:
        monkeypatch.delenv(name, raising=False)


# --- aliases ------------------------------------------------------------------------------


def test_the_aliases_are_the_original_layers():
    assert alias_names() == {alias: env for alias, (env, _) in LAYER_ALIASES.items()}


@pytest.mark.parametrize("alias", sorted(LAYER_ALIASES))
def test_an_alias_sets_its_layer_from_the_environment(monkeypatch, alias):
    _env, field = LAYER_ALIASES[alias]
    monkeypatch.setenv(alias, "1234")
    assert getattr(Settings().context.layers, field) == 1234


@pytest.mark.parametrize("alias", sorted(LAYER_ALIASES))
def test_an_alias_sets_its_layer_from_dotenv_and_in_code(tmp_path, alias):
    _env, field = LAYER_ALIASES[alias]
    (tmp_path / ".env").write_text(f"{alias.lower()}=1500\n")
    assert getattr(Settings().context.layers, field) == 1500
    assert getattr(Settings(**{alias.lower(): 900}).context.layers, field) == 900
    assert getattr(Settings().replace(**{alias.lower(): 800}).context.layers, field) == 800


@pytest.mark.parametrize("alias", sorted(LAYER_ALIASES))
def test_a_name_and_its_alias_may_agree(monkeypatch, alias):
    env, field = LAYER_ALIASES[alias]
    monkeypatch.setenv(alias, "1234")
    monkeypatch.setenv(env, "1234")
    assert getattr(Settings().context.layers, field) == 1234


@pytest.mark.parametrize("alias", sorted(LAYER_ALIASES))
def test_a_name_and_its_alias_set_differently_is_an_error_naming_both(monkeypatch, alias):
    env, _field = LAYER_ALIASES[alias]
    monkeypatch.setenv(alias, "1234")
    monkeypatch.setenv(env, "4321")
    with pytest.raises(ValidationError) as raised:
        Settings()
    message = str(raised.value)
    assert alias in message and env in message and "set only one" in message
    assert "1234" not in message and "4321" not in message  # values are never quoted
    with pytest.raises(ValidationError, match=alias):
        Settings(**{alias.lower(): 1, env.lower(): 2})


def test_the_environment_wins_over_an_alias_in_dotenv(monkeypatch, tmp_path):
    (tmp_path / ".env").write_text("CONTEXT_LAYER_C_TOKENS=9000\n")
    monkeypatch.setenv("CONTEXT_RECENT_STORY_TOKENS", "8000")
    assert Settings().context.layers.recent_story == 8000


def test_the_original_readmes_troubleshooting_advice_works(monkeypatch):
    monkeypatch.setenv("CONTEXT_LAYER_C_TOKENS", "10000")
    monkeypatch.setenv("CONTEXT_LAYER_E_TOKENS", "7000")
    layers = Settings().context.layers
    assert (layers.recent_story, layers.plot_world) == (10000, 7000)


def test_the_aliases_are_documented():
    text = (ROOT / "CONFIGURATION.md").read_text()
    for alias, (env, _field) in LAYER_ALIASES.items():
        row = re.search(rf"^\| `{env}` \|.*$", text, re.MULTILINE)
        assert row and f"`{alias}`" in row.group(0), alias
    assert "CONTEXT_LAYER_B_TOKENS" in text  # says it has no counterpart
    example = (ROOT / ".env.example").read_text()
    assert all(alias in example for alias in LAYER_ALIASES)


# --- ENDPOINT_* ---------------------------------------------------------------------------


def test_every_operation_has_its_two_endpoint_variables_unset():
    names = environment_names()
    for operation in OPERATIONS:
        for suffix in ("MAX_TOKENS", "TEMPERATURE"):
            name = f"{endpoint_prefix(operation)}_{suffix}"
            assert name in names, name
            assert names[name][1].get_default() is None
        assert Settings().endpoints.of(operation).max_tokens is None
    assert endpoint_prefix("generate-chapter") == "ENDPOINT_GENERATE_CHAPTER"


@pytest.mark.parametrize("operation", OPERATIONS)
def test_endpoint_variables_are_read_per_operation(monkeypatch, operation):
    prefix = endpoint_prefix(operation)
    monkeypatch.setenv(f"{prefix}_MAX_TOKENS", "321")
    monkeypatch.setenv(f"{prefix}_TEMPERATURE", "0.25")
    endpoints = Settings().endpoints
    assert endpoints.of(operation).max_tokens == 321
    assert endpoints.of(operation).temperature == 0.25
    others = [o for o in OPERATIONS if o != operation]
    assert all(endpoints.of(o).max_tokens is None for o in others)


def test_the_readmes_example_names_work(monkeypatch):
    monkeypatch.setenv("ENDPOINT_GENERATE_CHAPTER_MAX_TOKENS", "1500")
    monkeypatch.setenv("ENDPOINT_RAG_QUERY_TEMPERATURE", "0.1")
    endpoints = Settings().endpoints
    assert endpoints.generate_chapter.max_tokens == 1500
    assert endpoints.by_operation["rag-query"].temperature == 0.1
    assert Settings(endpoint_editor_review_temperature=0.5).endpoints.of(
        "editor-review").temperature == 0.5


def test_endpoint_values_are_bounded(monkeypatch):
    monkeypatch.setenv("ENDPOINT_EDITOR_REVIEW_TEMPERATURE", "3")
    with pytest.raises(ValidationError, match="ENDPOINT_EDITOR_REVIEW_TEMPERATURE"):
        Settings()
    monkeypatch.delenv("ENDPOINT_EDITOR_REVIEW_TEMPERATURE")
    monkeypatch.setenv("ENDPOINT_GENERATE_CHAPTER_MAX_TOKENS", "5000")
    with pytest.raises(ValidationError, match=r"ENDPOINT_GENERATE_CHAPTER_MAX_TOKENS \(5000\) "
                                              r"is above LLM_MAX_TOKENS_LIMIT \(4096\)"):
        Settings()
    monkeypatch.setenv("LLM_MAX_TOKENS_LIMIT", "8192")
    assert Settings().endpoints.of("generate-chapter").max_tokens == 5000


def test_the_endpoint_variables_are_documented_in_one_table():
    text = (ROOT / "CONFIGURATION.md").read_text()
    section = text.split("## Per-operation defaults", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| `(ENDPOINT_[A-Z_]+)` \| `unset` \|", section, re.MULTILINE)
    assert len(rows) == 2 * len(OPERATIONS)
    assert "0.8 / 2000" in section and "quarter" in section


# --- unknown variables --------------------------------------------------------------------


def test_unknown_variables_with_our_prefixes_are_named_with_their_nearest_setting(tmp_path):
    (tmp_path / ".env").write_text("ARCHIVE_TOPK=3\nSOMETHING_ELSE=1\n")
    environ = {"LLM_NCTX": "4096", "endpoint_generate_chapter_max_token": "900",
               "CONTEXT_LAYER_B_TOKENS": "1", "CONTEXT_LAYER_C_TOKENS": "1",  # an alias: fine
               "LLM_N_CTX": "4096", "HOME": "/root", "MODEL_NAME": "x", "QUEUE_ZZZZ": "1"}
    found = {u.name: u for u in unknown_settings(environ, tmp_path / ".env")}
    assert set(found) == {"LLM_NCTX", "ENDPOINT_GENERATE_CHAPTER_MAX_TOKEN", "ARCHIVE_TOPK",
                          "CONTEXT_LAYER_B_TOKENS", "QUEUE_ZZZZ"}
    assert found["LLM_NCTX"].hint == "did you mean LLM_N_CTX?"
    assert found["LLM_NCTX"].source == "environment"
    assert found["ENDPOINT_GENERATE_CHAPTER_MAX_TOKEN"].hint == (
        "did you mean ENDPOINT_GENERATE_CHAPTER_MAX_TOKENS?")
    assert found["ARCHIVE_TOPK"].hint == "did you mean ARCHIVE_TOP_K?"
    assert found["ARCHIVE_TOPK"].source == ".env file"
    assert "no layer B" in found["CONTEXT_LAYER_B_TOKENS"].hint
    assert "no setting is close" in found["QUEUE_ZZZZ"].hint


def test_startup_warns_once_about_an_unknown_variable(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("LLM_NCTX", "4096")
    (tmp_path / ".env").write_text("CONTEXT_LAYER_B_TOKENS=100\n")
    settings = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False)
    with caplog.at_level(logging.WARNING, logger="app.config"):
        create_app(settings)  # builds the services; the model would load in the lifespan
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.config"]
    nctx = [w for w in warnings if "LLM_NCTX" in w]
    layer_b = [w for w in warnings if "CONTEXT_LAYER_B_TOKENS" in w]
    assert len(nctx) == 1 and "did you mean LLM_N_CTX?" in nctx[0]
    assert len(layer_b) == 1 and ".env" in layer_b[0]
    assert Settings().model.n_ctx == 8192  # ignored, as the warning says


def test_no_warning_when_every_variable_is_known(monkeypatch, tmp_path, caplog):
    monkeypatch.setenv("LLM_N_CTX", "4096")
    monkeypatch.setenv("CONTEXT_LAYER_A_TOKENS", "1000")
    settings = Settings(summary_cache_dir=tmp_path / "summaries", archive_enabled=False)
    with caplog.at_level(logging.WARNING, logger="app.config"):
        create_app(settings)  # builds the services; the model would load in the lifespan
    warned = " ".join(r.getMessage() for r in caplog.records if r.name == "app.config")
    assert "LLM_N_CTX" not in warned and "CONTEXT_LAYER_A_TOKENS" not in warned
