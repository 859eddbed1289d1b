"""The remote backend against a real llama-cpp-python server on loopback: what it detects, and
token counts equal to the in-process model's, from the server's tokenizer and from the local
one."""

import asyncio

import pytest

from app.config import Settings
from app.llm.llama import LlamaRuntime
from app.llm.protocol import ChatMessage, Completion, SamplingParams
from app.llm.remote import RemoteGenerator

pytestmark = pytest.mark.model


@pytest.fixture(scope="module")
def in_process() -> LlamaRuntime:
    return LlamaRuntime.load(Settings().model)


@pytest.fixture(scope="module", params=["auto", "local"])
def remote(request, llama_server: str) -> RemoteGenerator:
    settings = Settings(llm_backend="openai", llm_base_url=llama_server,
                        llm_tokenizer=request.param)
    return RemoteGenerator.connect(settings.model)


def texts(alice_request: dict) -> list[str]:
    context = alice_request["structured_context"]
    chapter = context["chapters"][0]["content"]
    return [chapter, chapter[:1000], "Hello world", " leading space", "caf\u00e9 \U0001f407",
            "<|im_start|>user", "a\n\nb\tc", "x" * 50]


def test_detects_llama_cpp_python_and_the_embedded_model(llama_server):
    generator = RemoteGenerator.connect(
        Settings(llm_backend="openai", llm_base_url=llama_server).model)
    assert generator.token_source == "llama-cpp-python"
    assert generator.model_name == "SmolLM2-135M-Instruct.Q4_1"
    assert generator.n_ctx == 8192  # LLM_N_CTX: llama-cpp-python's server reports none


def test_token_counts_equal_the_in_process_model(remote, in_process, alice_request):
    expected = {"auto": "llama-cpp-python", "local": "local"}[remote._settings.remote.tokenizer]
    assert remote.token_source == expected
    for text in texts(alice_request)[:5]:  # plain text (no special-token text: see below)
        assert remote.count_tokens(text) == in_process.count_tokens(text), text[:40]
    messages = [ChatMessage("system", alice_request["structured_context"]["chapters"][0]
                            ["content"]),
                ChatMessage("user", "Write chapter 2.")]
    assert remote.render_prompt(messages) == in_process.render_prompt(messages)
    assert remote.count_prompt_tokens(messages) == in_process.count_prompt_tokens(messages)


def test_local_counts_equal_in_process_even_for_special_token_text(llama_server, in_process,
                                                                    alice_request):
    # llama-cpp-python's /extras/tokenize always parses special-token text ("<|im_start|>" is
    # one token there, several in the in-process count_tokens); the local tokenizer matches.
    local = RemoteGenerator.connect(Settings(llm_backend="openai", llm_base_url=llama_server,
                                             llm_tokenizer="local").model)
    for text in texts(alice_request):
        assert local.count_tokens(text) == in_process.count_tokens(text), text[:40]


def test_usage_and_prompt_tokens_agree_with_the_server(remote):
    messages = [ChatMessage("user", "Name three colours.")]

    async def run():
        return [item async for item in remote.stream(messages, SamplingParams(max_tokens=6,
                                                                               seed=3))]

    items = asyncio.run(run())
    completion = items[-1]
    assert isinstance(completion, Completion)
    assert completion.prompt_tokens == remote.count_prompt_tokens(messages)
    assert completion.completion_tokens == 6 and completion.finish_reason == "length"
    assert completion.text == "".join(item.text for item in items[:-1])
    assert completion.timings.time_to_first_token_ms > 0
    assert completion.timings.total_ms >= completion.timings.time_to_first_token_ms
