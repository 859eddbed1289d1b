"""The in-process model, loaded only when something is generated (for the command line).

Counting tokens and rendering prompts need only the GGUF's vocabulary and chat template
(:class:`app.llm.llama.GgufTokenizer`: a fraction of a second), so ``writer-assistant
preview`` answers at once for a context that fits; the weights are loaded the first time a
generation is asked for (``generate``, or a preview whose context must be distilled).
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import AsyncGenerator, Sequence

from app.config import ModelSettings
from app.llm.llama import GgufTokenizer, LlamaRuntime, default_model_path, file_sha256
from app.llm.protocol import ChatMessage, Completion, SamplingParams, SharedPrefix, StreamItem


class LazyModel:
    """A :class:`app.llm.protocol.TextGenerator` over ``MODEL_PATH`` (or the embedded GGUF)
    that loads the weights on the first generation.

    Counts and prompts come from the same file's tokenizer and template, exactly as
    :class:`LlamaRuntime` computes them. ``n_ctx`` is ``LLM_N_CTX`` until the model is loaded,
    then what llama.cpp reports. ``loaded`` tells whether the weights were loaded. It serves
    LoRA adapters as the runtime does.
    """

    serves_adapters = True

    def __init__(self, settings: ModelSettings, tokenizer: GgufTokenizer) -> None:
        self._settings = settings
        self._tokenizer = tokenizer
        self._model: LlamaRuntime | None = None
        self._loading = asyncio.Lock()

    @classmethod
    def open(cls, settings: ModelSettings) -> LazyModel:
        """Load the vocabulary of the configured model (blocking, a fraction of a second).

        Raises:
            ModelUnavailable: the file is missing or not GGUF, or has no chat template.
        """
        return cls(settings, GgufTokenizer.load(settings.path or default_model_path()))

    @property
    def loaded(self) -> bool:
        return self._model is not None

    @property
    def n_ctx(self) -> int:
        return self._model.n_ctx if self._model is not None else self._settings.n_ctx

    @property
    def model_name(self) -> str:
        return self._tokenizer.name

    @property
    def runtime(self) -> str:
        """What runs the model (generation records name it)."""
        return self._tokenizer.runtime

    @functools.cached_property
    def sha256(self) -> str:
        """The SHA-256 of the model file (hex), read once (about 0.3 s for 100 MB)."""
        return file_sha256(self._settings.path or default_model_path())

    def count_tokens(self, text: str) -> int:
        return self._tokenizer.count_tokens(text)

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self._tokenizer.render_prompt(messages)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return self._tokenizer.count_prompt_tokens(messages)

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        return self._tokenizer.count_prefix_tokens(messages, shared)

    async def model(self) -> LlamaRuntime:
        """The loaded model, loading it (in a worker thread) on the first call.

        Raises:
            ModelUnavailable: llama.cpp could not load it.
        """
        async with self._loading:
            if self._model is None:
                self._model = await asyncio.to_thread(LlamaRuntime.load, self._settings)
        return self._model

    async def aclose(self) -> None:
        """Close the model if its weights were loaded (its thread and the prefix cache's disk
        writes, :meth:`LlamaRuntime.aclose`); the vocabulary holds nothing to close."""
        async with self._loading:
            model = self._model
        if model is not None:
            await model.aclose()

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        return await (await self.model()).generate(messages, params, prefix)

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        model = await self.model()
        stream = model.stream(messages, params, prefix)
        try:
            async for item in stream:
                yield item
        finally:
            await stream.aclose()
