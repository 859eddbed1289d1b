"""The model commands of `writer-assistant`: count-tokens, preview, generate."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from typer.testing import CliRunner

from app import bootstrap, cli
from app.llm.fake import FakeGenerator
from app.llm.llama import GgufTokenizer, LlamaRuntime, default_model_path
from tests.conftest import seed_example

ALICE_OPENING = "Alice was beginning to get very tired of sitting by her sister on the bank"


@pytest.fixture(scope="module")
def tokenizer() -> GgufTokenizer:
    return GgufTokenizer.load(default_model_path())


@pytest.fixture
def env(tmp_path: Path) -> dict[str, str]:
    """The server's settings, kept off the real archive and summary cache."""
    return {"ARCHIVE_ENABLED": "false", "SUMMARY_CACHE_DIR": str(tmp_path / "summaries"),
            "LLM_BACKEND": "llama_cpp"}


def invoke(env: dict[str, str], *args: str):
    return CliRunner().invoke(cli.app, list(args), env=env)


@pytest.fixture
def alice_file(tmp_path: Path, alice_request: dict) -> Path:
    path = tmp_path / "alice.json"
    path.write_text(json.dumps(alice_request))
    return path


@pytest.fixture
def no_weights(monkeypatch: pytest.MonkeyPatch) -> None:
    """Fail if anything loads the model's weights."""
    def refuse(*_args, **_kwargs):
        raise AssertionError("the weights were loaded")

    monkeypatch.setattr(LlamaRuntime, "load", refuse)


def test_count_tokens_uses_the_models_tokenizer(env, tmp_path, tokenizer, no_weights):
    story = tmp_path / "story.txt"
    story.write_text(ALICE_OPENING, encoding="utf-8")
    result = invoke(env, "count-tokens", "Hello world", "--file", str(story))
    assert result.exit_code == 0, result.output
    rows = [line.split("\t") for line in result.stdout.splitlines()]
    expected = [tokenizer.count_tokens("Hello world"), tokenizer.count_tokens(ALICE_OPENING)]
    assert rows[0] == [str(expected[0]), "text 1"]
    assert rows[1] == [str(expected[1]), str(story)]
    assert rows[2][0] == str(sum(expected)) and rows[2][1].startswith("total")
    assert expected[0] == 2  # SmolLM2's tokenizer: "Hello", " world"


def test_count_tokens_reads_standard_input(env):
    result = CliRunner().invoke(cli.app, ["count-tokens"], input=ALICE_OPENING, env=env)
    assert result.exit_code == 0, result.output
    assert result.stdout.split("\t")[1].strip() == "stdin"


def test_preview_of_the_alice_example_needs_no_weights(env, alice_file, tokenizer, no_weights):
    table = invoke(env, "preview", str(alice_file))
    assert table.exit_code == 0, table.output
    assert "agent writer | model SmolLM2-135M-Instruct.Q4_1" in table.stdout
    chapter = next(line for line in table.stdout.splitlines() if line.startswith("chapters[0]"))
    assert "recent_story" in chapter and "kept:" in chapter

    answer = invoke(env, "preview", str(alice_file), "--json")
    assert answer.exit_code == 0, answer.output
    body = json.loads(answer.stdout)
    report = body["context_metadata"]
    assert body["operation"] == "generate-chapter"
    assert report["prompt_tokens"] == tokenizer.count_rendered_prompt(body["prompt"])
    assert report["prompt_tokens"] + report["max_tokens"] <= report["window_tokens"] <= 8192
    assert f"{report['prompt_tokens']}" in table.stdout.splitlines()[1]
    assert ALICE_OPENING in body["prompt"]

    exact = invoke(env, "preview", str(alice_file), "--prompt")
    assert exact.exit_code == 0 and exact.stdout == body["prompt"]


def test_preview_takes_the_preview_endpoints_body_and_another_operation(env, tmp_path,
                                                                        alice_request):
    request = {**alice_request, "chapter_number": 1}
    del request["plot_point"], request["title"]
    path = tmp_path / "review.json"
    path.write_text(json.dumps({"operation": "editor-review", "request": request}))
    result = invoke(env, "preview", str(path), "--json")
    assert result.exit_code == 0, result.output
    body = json.loads(result.stdout)
    assert body["operation"] == "editor-review"
    assert body["context_metadata"]["agent"] == "editor"


@pytest.mark.parametrize(("content", "args", "message"), [
    ("{not json", [], "cannot read"),
    (json.dumps(seed_example()), ["--operation", "write-novel"], "unknown operation"),
    (json.dumps({"structured_context": 5}), [], "structured_context"),
])
def test_unusable_context_files_exit_2_with_the_reason(env, tmp_path, content, args, message):
    path = tmp_path / "context.json"
    path.write_text(content)
    result = invoke(env, "preview", str(path), *args)
    assert result.exit_code == 2
    assert message in result.stderr


def test_generate_streams_tokens_then_usage(env, tmp_path, monkeypatch):
    fake = FakeGenerator(replies=["Aria stepped under the dark pines and listened."])
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: fake)
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_example()))
    result = invoke(env, "generate", str(path), "--max-tokens", "5", "--seed", "3")
    assert result.exit_code == 0, result.output
    assert result.stdout == "Aria stepped under the dark \n"
    assert "finish_reason length" in result.stderr and "completion 5 tokens" in result.stderr
    assert fake.calls[0][1].max_tokens == 5 and fake.calls[0][1].seed == 3


def test_generate_prints_a_json_agents_output(env, tmp_path, monkeypatch):
    reply = json.dumps({"suggestions": [{"issue": "Pacing", "suggestion": "Cut the opening.",
                                         "priority": "high"}]})
    monkeypatch.setattr(bootstrap, "open_generator", lambda _settings, **_: FakeGenerator([reply]))
    body = seed_example()
    body["structured_context"]["chapters"] = [{"number": 1, "title": "One",
                                               "content": "Aria walked."}]
    path = tmp_path / "review.json"
    path.write_text(json.dumps({**body, "chapter_number": 1}))
    result = invoke(env, "generate", str(path), "-o", "editor-review")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["suggestions"][0]["issue"] == "Pacing"


def test_generate_reports_a_domain_error_with_its_code(env, tmp_path, monkeypatch):
    monkeypatch.setattr(bootstrap, "open_generator",
                        lambda _settings, **_: FakeGenerator(["word " * 50], fail_after=2))
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_example()))
    result = invoke(env, "generate", str(path))
    assert result.exit_code == 1
    assert "error (generation_failed)" in result.stderr


@pytest.mark.model
def test_generate_on_the_real_model(env, tmp_path):
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_example()))
    result = invoke(env, "generate", str(path), "--max-tokens", "8", "--seed", "1",
                    "--temperature", "0")
    assert result.exit_code == 0, result.output
    assert result.stdout.strip()
    assert "completion 8 tokens" in result.stderr or "finish_reason stop" in result.stderr


@pytest.mark.parametrize("fails", [False, True])
def test_a_model_command_closes_what_it_opened(env, tmp_path, monkeypatch, fails):
    from app.context.summaries import SummaryCache
    from tests.lifecycle.test_bootstrap import ClosingFake, is_shut_down

    generator = ClosingFake(["word " * 50], fail_after=2 if fails else None)
    opened, built, closed_caches = [], [], []

    def open_generator(_settings, **options):
        opened.append(options)
        return generator

    def build_services(*args, **kwargs):
        built.append(build(*args, **kwargs))
        return built[-1]

    def close_cache(cache):
        closed_caches.append(cache)
        close(cache)

    build, close = bootstrap.build_services, SummaryCache.close
    monkeypatch.setattr(bootstrap, "open_generator", open_generator)
    monkeypatch.setattr(bootstrap, "build_services", build_services)
    monkeypatch.setattr(SummaryCache, "close", close_cache)
    path = tmp_path / "seed.json"
    path.write_text(json.dumps(seed_example()))
    result = invoke(env, "generate", str(path), "--max-tokens", "5")
    assert result.exit_code == (1 if fails else 0), result.output
    assert opened == [{"lazy": True}]  # the weights load on the first generation
    [services] = built
    assert is_shut_down(services.runner.executor)
    assert closed_caches == [services.runner.distiller.cache]
    assert generator.closed == 1


def test_an_archive_command_closes_the_archive(env, monkeypatch):
    from app.archive.service import Archive

    class StubStore:
        def check(self) -> None:
            pass

    class StubArchive:
        closed = 0
        store = StubStore()

        def for_tenant(self, _tenant: str) -> StubArchive:
            return self

        def stats(self):
            return type("Stats", (), {"model_dump": lambda _self: {"files": 0}})()

        def close(self) -> None:
            self.closed += 1

    archive = StubArchive()
    monkeypatch.setattr(Archive, "open", lambda _settings, _metrics: archive)
    result = invoke(env, "stats")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout) == {"files": 0}
    assert archive.closed == 1
