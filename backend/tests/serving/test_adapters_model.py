"""Adapters on the real embedded model: one loaded base serves base and adapter generation by
generation, and KV state computed under one is never reused under the other (neither the live
KV cache nor a prefix snapshot), so the base answers the same before and after the adapter.
"""

from __future__ import annotations

import asyncio

import pytest

from app.config import Settings
from app.llm.llama import LlamaRuntime, default_model_path, file_sha256
from app.llm.protocol import ChatMessage, LoraAdapter, SamplingParams, SharedPrefix
from tests.lora import make_adapter

pytestmark = pytest.mark.model

#: A shared block long enough to be snapshotted (PREFIX_CACHE_MIN_TOKENS is set to 32).
STORY = ("Sherlock Holmes sat in his armchair at Baker Street, the fog pressing at the "
         "windows, while Watson read the morning papers aloud and a hansom rattled past. " * 4)
MESSAGES = [ChatMessage("system", STORY), ChatMessage("user", "Continue the story.")]
GREEDY = SamplingParams(max_tokens=12, temperature=0.0, seed=1)


@pytest.fixture(scope="module")
def adapter(tmp_path_factory: pytest.TempPathFactory) -> LoraAdapter:
    path = make_adapter(tmp_path_factory.mktemp("lora") / "holmes.gguf", default_model_path(),
                        scale=0.2)
    return LoraAdapter("holmes", path, file_sha256(path))


@pytest.fixture(scope="module")
def runtime(tmp_path_factory: pytest.TempPathFactory) -> LlamaRuntime:
    settings = Settings(llm_n_ctx=512, llm_n_threads=1, prefix_cache_min_tokens=32,
                        prefix_cache_dir=tmp_path_factory.mktemp("kv"))
    model = LlamaRuntime.load(settings.model)
    yield model
    asyncio.run(model.aclose())


def _run(model: LlamaRuntime, adapter: LoraAdapter | None) -> tuple[str, int]:
    params = SamplingParams(**{**GREEDY.__dict__, "adapter": adapter})
    done = asyncio.run(model.generate(MESSAGES, params, SharedPrefix(messages=1, owner="t")))
    return done.text, done.cached_tokens


def test_base_then_adapter_then_base_never_shares_kv_state(runtime, adapter):
    base, base_cached = _run(runtime, None)
    tuned, tuned_cached = _run(runtime, adapter)
    again, again_cached = _run(runtime, None)
    tuned_again, tuned_again_cached = _run(runtime, adapter)
    assert runtime.loaded_adapters == 1  # loaded once, switched per generation
    assert tuned != base  # the adapter changes the model at temperature 0
    assert again == base and tuned_again == tuned  # neither leaks into the other
    assert base_cached == 0
    # the adapter reused nothing of the base's KV state (live or snapshot) ...
    assert tuned_cached == 0
    # ... while each reuses its own snapshot of the shared block when it comes back
    assert again_cached > 0 and tuned_again_cached > 0
    cache = runtime.prefix_cache
    assert cache is not None and cache.stats.saves == 2  # one snapshot each, two namespaces


def test_a_missing_adapter_file_fails_the_generation_not_the_model(runtime, tmp_path):
    from app.errors import GenerationFailed

    gone = LoraAdapter("gone", tmp_path / "gone.gguf", "0" * 64)
    with pytest.raises(GenerationFailed, match="could not be loaded"):
        _run(runtime, gone)
    assert _run(runtime, None)[0]  # the base still answers
