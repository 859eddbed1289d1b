"""A model served by an OpenAI-compatible server, through the official ``openai`` client.

Any server that speaks the chat-completions API works: llama.cpp's llama-server, vLLM, Ollama,
llama-cpp-python's own server. :class:`RemoteGenerator` implements
:class:`app.llm.protocol.TextGenerator`, so the agents and the budgeting above it are the same
as with the in-process model:

- **Token counts** come from the server's tokenize endpoint where it has one (detected at
  startup: llama-cpp-python's ``/extras/tokenize``, llama-server's and vLLM's ``/tokenize``),
  else from a local tokenizer of the same model (:class:`app.llm.llama.GgufTokenizer`, the
  vocabulary of a GGUF). The chat template always comes from that GGUF, so prompt counts include
  the template's overhead. At startup the two tokenizers count the same probe texts; a mismatch
  is refused (the budgets would be wrong), unless ``LLM_TOKENIZER=server`` says to trust the
  server anyway, which only warns.
- **Generation** streams chat completions; JSON agents get the server's JSON-schema mode, and
  the agent runner validates the output again. Generations are serialised by an asyncio lock,
  one at a time per model, like the in-process runtime, and timed the same way.
- **Errors**: unreachable server -> :class:`ModelUnavailable` (503); its 503 -> the same with its
  ``Retry-After``; its 429 -> :class:`ModelOverloaded` (429) with its ``Retry-After``; its 400
  saying the prompt is over its window (llama-server's ``exceed_context_size_error``, OpenAI's
  ``context_length_exceeded``) -> :class:`ContextLengthExceeded` (400: the caller shortens the
  context); any other failure (another 400 included: a request we built that the server
  refuses is nothing the caller can change), or a stream that breaks or ends without a finish
  reason -> :class:`GenerationFailed`. Messages name the setting to check, never the server's
  address or its own words (those are logged). Closing the stream closes the upstream
  response, which tells the server to stop.
- **Retries**: a transient failure while serving a request (unreachable, its 503, its 429) is
  retried by :class:`app.llm.retry.UpstreamRetry` (bounded attempts and seconds, its
  ``Retry-After`` honoured up to a cap) when opening a stream, never once a token came, and
  when counting tokens; connecting is retried by the startup policy of :mod:`app.llm.retry`.
- **Prefix reuse** is the server's own (llama-server's prompt cache and slots, vLLM's prefix
  caching); the story's shared block, identical for every agent, is what lets it hit. The
  cached-token count is passed through where the server reports it (the OpenAI field
  ``usage.prompt_tokens_details.cached_tokens``).
- **Token counting** (HTTP calls to the server's tokenize endpoint) runs on a thread pool of
  its own, never on the event loop or the default pool.
"""

from __future__ import annotations

import asyncio
import email.utils
import functools
import hashlib
import logging
import re
import threading
import time
from collections import OrderedDict
from collections.abc import AsyncGenerator, Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import openai
from openai.types.chat import ChatCompletionChunk

from app.config import ModelSettings
from app.errors import (
    ContextLengthExceeded,
    GenerationFailed,
    InvalidRequest,
    ModelOverloaded,
    ModelUnavailable,
    WriterAssistantError,
)
from app.llm.protocol import (
    ChatMessage,
    Completion,
    FinishReason,
    SamplingParams,
    SharedPrefix,
    StreamItem,
    Timings,
    TokenDelta,
    check_window,
    final_completion,
    rendered_prefix,
)
from app.llm.retry import UPSTREAM_RETRY, UpstreamRetry

logger = logging.getLogger(__name__)

#: Texts both tokenizers count at startup: prose, dialogue, digits, accents, emoji, code and a
#: chat prompt with the template's special tokens (rendered separately).
PROBE_TEXTS = (
    "Alice was beginning to get very tired of sitting by her sister on the bank.",
    ("\u201cCuriouser and curiouser!\u201d cried Alice; 1865, 42.5% \u2014 caf\u00e9, na\u00efve, "
    "\u00fcber \U0001f407\n\n\tdef f(x): return x ** 2"),
)
#: Counts remembered per generator; trimming recounts the same sentences. Keyed by a 16-byte
#: digest of the text, never the text, so each entry takes the same ~200 bytes however long its
#: text: the cache holds at most about 1.6 MB.
_COUNT_CACHE_SIZE = 8192
#: Characters of an upstream error message quoted in our log.
_UPSTREAM_MESSAGE_CHARS = 300
#: A model server's 400 for a prompt over its window: llama-server's error ``type``, OpenAI's
#: ``code`` (which llama-cpp-python's server answers too), or the wording of those and vLLM's.
_CONTEXT_EXCEEDED_MARKS = frozenset({"exceed_context_size_error", "context_length_exceeded"})
_CONTEXT_EXCEEDED_TEXT = re.compile(
    r"maximum context length|exceeds? the (?:available )?context|context (?:length|window) "
    r"(?:exceeded|of)", re.IGNORECASE)
_MAX_CONTEXT = re.compile(r"maximum context length is (\d+)", re.IGNORECASE)
_REQUESTED = re.compile(r"(?:requested|resulted in) (\d+) tokens", re.IGNORECASE)


@dataclass(frozen=True)
class TokenizeDialect:
    """One server family's tokenize endpoint.

    ``path`` is relative to the server root (the base URL without ``/v1``). ``body`` builds the
    request for a text; ``special`` asks for special-token text to be parsed and BOS added where
    the model wants one (what a rendered prompt needs). ``fixed_special`` marks an endpoint that
    always does both (llama-cpp-python's), whose counts of plain text are corrected by the count
    of the empty text.
    """

    name: str
    path: str
    body: Callable[[str, bool, str], dict[str, Any]]
    fixed_special: bool = False
    #: How this server takes a JSON schema in ``response_format``.
    json_object_schema: bool = False


DIALECTS = (
    # llama-cpp-python: llama_cpp/server/app.py, POST /extras/tokenize {"input"} ->
    # {"tokens"}; it tokenizes with special=True and BOS as the model wants, and its
    # response_format takes only "json_object" with a "schema" (not "json_schema").
    TokenizeDialect("llama-cpp-python", "/extras/tokenize",
                    lambda text, special, model: {"input": text}, fixed_special=True,
                    json_object_schema=True),
    # llama.cpp's llama-server: tools/server/README.md, POST /tokenize {"content",
    # "add_special", "parse_special"} -> {"tokens"}.
    TokenizeDialect("llama-server", "/tokenize",
                    lambda text, special, model: {"content": text, "add_special": special,
                                                  "parse_special": special}),
    # vLLM: POST /tokenize {"model", "prompt", "add_special_tokens"} -> {"count", "tokens"}.
    TokenizeDialect("vllm", "/tokenize",
                    lambda text, special, model: {"model": model, "prompt": text,
                                                  "add_special_tokens": special}),
)


class ServerTokenizer:
    """Counts tokens with the model server's tokenize endpoint (synchronous, thread-safe).

    Counting is synchronous in the protocol (context assembly runs in a worker thread), so this
    uses a synchronous ``httpx.Client``; counts are cached.

    Raises (from every method): :class:`ModelUnavailable` when the server cannot be reached,
    else what :func:`upstream_error` maps its answer to.

    ``retry`` is the policy for transient failures: ``None`` (one attempt) while connecting,
    where the startup policy retries the whole connection; the generator's once it serves.
    """

    def __init__(self, client: httpx.Client, dialect: TokenizeDialect, model: str,
                 retry: UpstreamRetry | None = None) -> None:
        self._client = client
        self.dialect = dialect
        self._model = model
        self.retry = retry
        self._baseline = {False: 0, True: 0}
        if dialect.fixed_special:
            self._baseline[False] = len(self.tokenize("", special=True))

    def tokenize(self, text: str, *, special: bool) -> list[int]:
        """Token ids of ``text`` as the server tokenizes it (retried by ``retry``)."""
        if self.retry is None:
            return self._tokenize_once(text, special)
        return self.retry.retrying_sync("counting tokens")(self._tokenize_once, text, special)

    def _tokenize_once(self, text: str, special: bool) -> list[int]:
        try:
            response = self._client.post(self.dialect.path,
                                         json=self.dialect.body(text, special, self._model))
        except httpx.TransportError as error:
            raise unreachable(str(self._client.base_url), error) from error
        if response.status_code != 200:
            raise upstream_error(response.status_code, response.headers, response.text)
        tokens = response.json().get("tokens")
        if not isinstance(tokens, list):
            raise GenerationFailed(f"the model server's {self.dialect.path} answered no tokens")
        return tokens

    def count(self, text: str) -> int:
        """Tokens of ``text`` on its own (no BOS)."""
        return len(self.tokenize(text, special=False)) - self._baseline[False]

    def count_rendered_prompt(self, prompt: str) -> int:
        """Tokens of a rendered prompt (special tokens parsed, BOS as the model wants)."""
        return len(self.tokenize(prompt, special=True))


def detect_dialect(client: httpx.Client, model: str) -> TokenizeDialect | None:
    """The first tokenize dialect whose endpoint answers a probe with token ids, or ``None``.

    Raises:
        ModelUnavailable: the server cannot be reached.
    """
    for dialect in DIALECTS:
        try:
            response = client.post(dialect.path, json=dialect.body("Hello", False, model))
        except httpx.TransportError as error:
            raise unreachable(str(client.base_url), error) from error
        if response.status_code == 200:
            try:
                tokens = response.json().get("tokens")
            except ValueError:
                continue
            if isinstance(tokens, list) and tokens and all(isinstance(t, int) for t in tokens):
                return dialect
    return None


class RemoteGenerator:
    """A model on an OpenAI-compatible server, implementing
    :class:`app.llm.protocol.TextGenerator`.

    Build it with :meth:`connect`, which checks the server and the tokenizers. ``retry`` is
    the policy for transient failures of the server while serving requests.

    It serves the base model only (``serves_adapters`` false): the server's own adapters
    cannot be checked against the base model, so a generation naming a LoRA adapter is
    refused (the runner refuses such a request before it gets here).
    """

    #: LoRA adapters are not served through a remote model server.
    serves_adapters = False

    def __init__(
        self,
        settings: ModelSettings,
        *,
        model: str,
        n_ctx: int,
        local: Any,
        server: ServerTokenizer | None,
        count_with_server: bool,
        http: httpx.Client,
        retry: UpstreamRetry = UPSTREAM_RETRY,
    ) -> None:
        self._settings = settings
        self._model = model
        self._n_ctx = n_ctx
        self._local = local
        self._server = server
        self._count_with_server = count_with_server
        self._http = http
        self.retry = retry
        self._json_object_schema = bool(server and server.dialect.json_object_schema)
        api_key = settings.remote.api_key.get_secret_value() if settings.remote.api_key else "none"
        # The client's own retries are off: ``self.retry`` is the one policy (bounded, since the
        # model lock is held meanwhile; a long Retry-After goes to the caller instead).
        self._client = openai.AsyncOpenAI(
            base_url=settings.remote.base_url, api_key=api_key, max_retries=0,
            timeout=settings.remote.request_timeout_s,
        )
        self._lock = asyncio.Lock()
        self._counting = ThreadPoolExecutor(max_workers=2, thread_name_prefix="remote-tokenize")
        self._cache: OrderedDict[bytes, int] = OrderedDict()
        self._cache_lock = threading.Lock()
        self._warned_prompt_mismatch = False

    # --- construction -----------------------------------------------------------------------
    @classmethod
    def connect(cls, settings: ModelSettings) -> RemoteGenerator:
        """Reach the server, find its model, context window and tokenize endpoint, load the
        local tokenizer and compare the two (blocking; run it in a worker thread). One attempt:
        the startup policy (:func:`app.llm.retry.startup_retrying`) retries it.

        Raises:
            ModelUnavailable: the server is unreachable or loading (``error.retryable``),
                refused the API key, serves no model, or the tokenizers disagree.
        """
        from app.llm.llama import GgufTokenizer, default_model_path

        base = (settings.remote.base_url or "").rstrip("/")
        root = base.removesuffix("/v1")
        headers = {}
        if settings.remote.api_key is not None:
            headers["Authorization"] = f"Bearer {settings.remote.api_key.get_secret_value()}"
        http = httpx.Client(base_url=root, headers=headers,
                            timeout=settings.remote.request_timeout_s)
        try:
            model, n_ctx = _discover(http, base, settings)
            dialect = detect_dialect(http, model)
            server = ServerTokenizer(http, dialect, model) if dialect else None
            path = settings.remote.tokenizer_path or default_model_path()
            local = GgufTokenizer.load(Path(path), "LLM_TOKENIZER_PATH")
            count_with_server = _choose_counter(settings, server)
            _compare_tokenizers(settings, local, server, count_with_server)
        except BaseException:
            http.close()
            raise
        logger.info(
            "remote model ready: %s at %s (n_ctx %d, token counts from %s, tokenizer %s)",
            model, base, n_ctx,
            f"the server ({dialect.name})" if count_with_server and dialect else "local GGUF",
            local.name,
        )
        return cls(settings, model=model, n_ctx=n_ctx, local=local, server=server,
                   count_with_server=count_with_server, http=http)

    @property
    def retry(self) -> UpstreamRetry:
        """The policy for transient failures while serving (opening a stream, counting)."""
        return self._retry

    @retry.setter
    def retry(self, policy: UpstreamRetry) -> None:
        self._retry = policy
        if self._server is not None:
            self._server.retry = policy

    async def aclose(self) -> None:
        """Close the HTTP clients and the counting threads."""
        await self._client.close()
        self._http.close()
        self._counting.shutdown(wait=False)

    # --- TextGenerator ----------------------------------------------------------------------
    @property
    def n_ctx(self) -> int:
        return self._n_ctx

    @property
    def model_name(self) -> str:
        # llama-cpp-python names a model by its file path: show the file stem, like llama.py.
        return Path(self._model).stem if self._model.endswith(".gguf") else self._model

    @property
    def token_source(self) -> str:
        """Where counts come from: the server dialect's name, or ``local``."""
        if self._count_with_server and self._server is not None:
            return self._server.dialect.name
        return "local"

    def count_tokens(self, text: str) -> int:
        if not text:
            return 0
        if not (self._count_with_server and self._server):
            return self._local.count_tokens(text)
        key = hashlib.blake2b(text.encode("utf-8", "surrogatepass"), digest_size=16).digest()
        with self._cache_lock:
            if key in self._cache:
                self._cache.move_to_end(key)
                return self._cache[key]
        count = self._server.count(text)
        with self._cache_lock:
            self._cache[key] = count
            if len(self._cache) > _COUNT_CACHE_SIZE:
                self._cache.popitem(last=False)
        return count

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        return self._local.render_prompt(messages)

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        if self._count_with_server and self._server:
            return self._server.count_rendered_prompt(self.render_prompt(messages))
        return self._local.count_prompt_tokens(messages)

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        if shared <= 0:
            return 0
        head = rendered_prefix(self.render_prompt, messages, shared)
        if self._count_with_server and self._server:
            return self._server.count_rendered_prompt(head)
        return self._local.count_prefix_tokens(messages, shared)

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        return await final_completion(self.stream(messages, params, prefix))

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        if params.adapter is not None:
            raise InvalidRequest(f"The adapter {params.adapter.name} cannot be served: this "
                                 "server's model runs on a remote model server, which serves "
                                 "only the base model.", param="model")
        prompt_tokens = await asyncio.get_running_loop().run_in_executor(
            self._counting, functools.partial(self.count_prompt_tokens, messages))
        check_window(prompt_tokens, params.max_tokens, self.n_ctx)
        request = self._request(messages, params)
        queued = time.perf_counter()
        async with self._lock:
            start = time.perf_counter()
            # Retried only here, before the first token: nothing below is ever retried.
            upstream: openai.AsyncStream[ChatCompletionChunk] = await self.retry.retrying(
                "generating")(self._open_stream, request)
            first_token_at: float | None = None
            text: list[str] = []
            pieces = 0
            finish: str | None = None
            usage: Any = None
            try:
                async for chunk in upstream:
                    if chunk.usage is not None:
                        usage = chunk.usage
                    if not chunk.choices:
                        continue
                    choice = chunk.choices[0]
                    # A server may leave the delta out, whatever the type says.
                    content = choice.delta.content if choice.delta else None
                    if content:
                        if first_token_at is None:
                            first_token_at = time.perf_counter()
                        pieces += 1
                        text.append(content)
                        yield TokenDelta(content)
                    if choice.finish_reason:
                        finish = choice.finish_reason
            except Exception as error:  # any break after the first byte
                # The openai client wraps transport failures (a dropped connection, a read
                # timeout) in APIError subclasses; anything else is unexpected, so log it whole.
                logger.warning("model server stream failed after %d pieces: %s (%s)", pieces,
                               type(error).__name__, _describe(error),
                               exc_info=not isinstance(error, openai.APIError))
                raise GenerationFailed(
                    f"The model server's stream broke after {pieces} pieces; try again."
                ) from error
            finally:
                await upstream.close()
            if finish is None:
                # llama-cpp-python's server, started with interrupt_requests on (its default),
                # ends a stream with [DONE] and no finish reason when another request arrives.
                raise GenerationFailed(
                    f"The model server ended the stream after {pieces} pieces without a finish "
                    "reason (was it interrupted by another request?); try again."
                )
            end = time.perf_counter()
            completion_tokens = usage.completion_tokens if usage is not None else pieces
            served_prompt = usage.prompt_tokens if usage is not None else prompt_tokens
            if served_prompt != prompt_tokens and not self._warned_prompt_mismatch:
                self._warned_prompt_mismatch = True
                logger.warning(
                    "the model server counted %d prompt tokens where we counted %d: budgets may "
                    "be off (check LLM_TOKENIZER_PATH)", served_prompt, prompt_tokens)
            yield Completion(
                text="".join(text),
                prompt_tokens=served_prompt,
                completion_tokens=completion_tokens,
                finish_reason=_finish_reason(finish),
                timings=Timings.measured(queued, start, first_token_at, end, completion_tokens),
                cached_tokens=_cached_tokens(usage),
            )

    async def _open_stream(
        self, request: dict[str, Any]
    ) -> openai.AsyncStream[ChatCompletionChunk]:
        """One attempt at opening a generation's stream (nothing read from it yet).

        Raises:
            ModelUnavailable | ModelOverloaded | ContextLengthExceeded | GenerationFailed:
                :func:`_map_openai_error`.
        """
        try:
            return await self._client.chat.completions.create(**request)
        except openai.APIError as error:
            raise _map_openai_error(error, str(self._client.base_url)) from error

    def _request(self, messages: Sequence[ChatMessage], params: SamplingParams) -> dict[str, Any]:
        """Keyword arguments of ``chat.completions.create`` for one generation."""
        request: dict[str, Any] = {
            "model": self._model,
            "messages": [{"role": m.role, "content": m.content} for m in messages],
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
            "top_p": params.top_p,
            "stream": True,
            "stream_options": {"include_usage": True},
            # Not in the OpenAI API; llama.cpp's servers take both, vLLM takes top_k.
            "extra_body": {"top_k": params.top_k, "repeat_penalty": params.repeat_penalty},
        }
        if params.seed is not None:
            request["seed"] = params.seed
        if params.stop:
            request["stop"] = list(params.stop)
        if params.json_schema is not None:
            if self._json_object_schema:
                request["response_format"] = {"type": "json_object", "schema": params.json_schema}
            else:
                request["response_format"] = {
                    "type": "json_schema",
                    "json_schema": {"name": "output", "schema": params.json_schema},
                }
        return request


# --- startup checks ---------------------------------------------------------------------------
def _discover(http: httpx.Client, base: str, settings: ModelSettings) -> tuple[str, int]:
    """The model id and context window the server reports.

    The id is ``LLM_MODEL`` or the first listed at ``/v1/models``; the window is llama-server's
    ``/props`` ``n_ctx``, else vLLM's ``max_model_len`` in the model list, else ``LLM_N_CTX``
    (llama-cpp-python reports none).

    Raises:
        ModelUnavailable: unreachable, loading or busy (``retryable``), refusing the key,
            answering another error, or listing no model.
    """
    try:
        response = http.get(f"{base}/models")
    except httpx.TransportError as error:
        raise unreachable(base, error) from error
    if response.status_code in (401, 403):
        logger.error("the model server at %s refused our credentials (%d)", base,
                     response.status_code)
        raise ModelUnavailable(
            f"The model server refused our credentials ({response.status_code}): check "
            "LLM_API_KEY.")
    if response.status_code != 200:
        refusal = upstream_error(response.status_code, response.headers, response.text,
                                 during="listing its models")
        if refusal.retryable:  # loading (503) or busy (429)
            raise refusal
        raise ModelUnavailable(
            f"The model server answered {response.status_code} when asked for its models: "
            "check LLM_BASE_URL (see the server log).", upstream_status=response.status_code)
    listed = [m for m in response.json().get("data", []) if isinstance(m, dict) and "id" in m]
    chosen = settings.remote.model
    entry = next((m for m in listed if m["id"] == chosen), None) if chosen else None
    if chosen is None:
        if not listed:
            logger.error("the model server at %s lists no model", base)
            raise ModelUnavailable("The model server lists no model: set LLM_MODEL.")
        entry = listed[0]
        chosen = entry["id"]
    n_ctx = _props_n_ctx(http)
    if n_ctx is None and entry is not None and isinstance(entry.get("max_model_len"), int):
        n_ctx = entry["max_model_len"]
    return chosen, n_ctx or settings.n_ctx


def _props_n_ctx(http: httpx.Client) -> int | None:
    """llama-server's context window from ``/props`` (per slot), or ``None`` elsewhere."""
    try:
        response = http.get("/props")
    except httpx.TransportError:
        return None
    if response.status_code != 200:
        return None
    try:
        props = response.json()
    except ValueError:
        return None
    settings = props.get("default_generation_settings") or {}
    n_ctx = settings.get("n_ctx", props.get("n_ctx"))
    return n_ctx if isinstance(n_ctx, int) and n_ctx > 0 else None


def _choose_counter(settings: ModelSettings, server: ServerTokenizer | None) -> bool:
    """Whether token counts come from the server (else from the local tokenizer).

    Raises:
        ModelUnavailable: ``LLM_TOKENIZER=server`` and the server has no tokenize endpoint.
    """
    if settings.remote.tokenizer == "server" and server is None:
        raise ModelUnavailable(
            "LLM_TOKENIZER=server, but the model server has no tokenize endpoint we know "
            "(/extras/tokenize, /tokenize); use LLM_TOKENIZER=local with LLM_TOKENIZER_PATH")
    return settings.remote.tokenizer != "local" and server is not None


def _compare_tokenizers(settings: ModelSettings, local: Any, server: ServerTokenizer | None,
                        count_with_server: bool) -> None:
    """Count the probe texts and a probe chat prompt with both tokenizers.

    Raises:
        ModelUnavailable: they disagree and ``LLM_TOKENIZER`` is not ``server``.
    """
    if server is None:
        logger.warning("the model server has no tokenize endpoint: token counts come from %s "
                       "unchecked; make sure it is the served model's", local.name)
        return
    prompt = local.render_prompt([ChatMessage("system", PROBE_TEXTS[0]),
                                  ChatMessage("user", PROBE_TEXTS[1])])
    pairs = [(local.count_tokens(text), server.count(text)) for text in PROBE_TEXTS]
    pairs.append((local.count_rendered_prompt(prompt), server.count_rendered_prompt(prompt)))
    if all(mine == theirs for mine, theirs in pairs):
        return
    figures = ", ".join(f"{mine} vs {theirs}" for mine, theirs in pairs)
    message = (
        f"the local tokenizer ({local.name}) and the model server's ({server.dialect.name}) "
        f"disagree on the probe texts (local vs server tokens: {figures}): the server serves "
        "another model; set LLM_TOKENIZER_PATH to a GGUF of the served model"
    )
    if settings.remote.tokenizer == "server":
        logger.warning("%s; counting with the server's tokenizer, but prompts are rendered with "
                       "the local chat template, so template overhead may be off", message)
        return
    raise ModelUnavailable(message)


# --- errors -----------------------------------------------------------------------------------
def unreachable(base: str, error: Exception) -> ModelUnavailable:
    """The error for a model server that cannot be reached (retryable); ``base`` and the
    cause are logged, not put in the message."""
    logger.warning("the model server at %s is unreachable (%s: %s)", base,
                   type(error).__name__, error)
    return ModelUnavailable(
        "The model server is unreachable: check LLM_BASE_URL and that the server runs; retry "
        "later.", retryable=True,
    )


def retry_after_seconds(headers: Any) -> float | None:
    """Seconds from a ``Retry-After`` header (delay-seconds or an HTTP date), or ``None``."""
    value = headers.get("retry-after") if headers is not None else None
    if not value:
        return None
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    return max(0.0, when.timestamp() - time.time())


def upstream_error(status: int, headers: Any, body: str, *,
                   during: str = "generating") -> WriterAssistantError:
    """Our error for an HTTP error answer of the model server.

    429 -> :class:`ModelOverloaded`, 503 -> :class:`ModelUnavailable`, both retryable and with
    the server's ``Retry-After``; anything else -> :class:`GenerationFailed`. The server's
    ``body`` is logged, never put in the message.
    """
    retry_after = retry_after_seconds(headers)
    details: dict[str, Any] = {"upstream_status": status}
    if retry_after is not None:
        details["retry_after_s"] = round(retry_after, 1)
    if status == 429:
        return ModelOverloaded("The model server is busy (429); retry after the delay given.",
                               retry_after=retry_after, retryable=True, **details)
    if status == 503:
        return ModelUnavailable("The model server is unavailable or still loading (503); "
                                "retry after the delay given.", retry_after=retry_after,
                                retryable=True, **details)
    quoted = " ".join(body.split())[:_UPSTREAM_MESSAGE_CHARS]
    logger.warning("the model server answered %d while %s: %s", status, during, quoted)
    return GenerationFailed(f"The model server answered {status} while {during}; try again "
                            "(see the server log).", **details)


def context_exceeded(status: int, body: Any) -> ContextLengthExceeded | None:
    """Our :class:`ContextLengthExceeded` when a model server's error answer (``status``, its
    JSON ``body`` or just the ``error`` object in it) says the prompt is over its window, with
    ``needed_tokens`` and ``available_tokens`` where the server gives them; else ``None``.

    Our own count found the prompt within the window, so the server counts otherwise (another
    model or tokenizer: check ``LLM_TOKENIZER_PATH``) or serves a smaller window per slot; the
    caller's remedy is the same: a shorter context or a lower ``max_tokens``.
    """
    if status not in (400, 413):
        return None
    error = body.get("error", body) if isinstance(body, dict) else None
    error = error if isinstance(error, dict) else {}
    message = str(error.get("message") or "")
    marks = {str(error.get("type")), str(error.get("code"))}
    if not (marks & _CONTEXT_EXCEEDED_MARKS or _CONTEXT_EXCEEDED_TEXT.search(message)):
        return None
    needed, available = error.get("n_prompt_tokens"), error.get("n_ctx")
    if not isinstance(needed, int) and (found := _REQUESTED.search(message)):
        needed = int(found.group(1))
    if not isinstance(available, int) and (found := _MAX_CONTEXT.search(message)):
        available = int(found.group(1))
    logger.warning("the model server refused the prompt as over its context window (%d): %s; "
                   "our count found it fits: check LLM_TOKENIZER_PATH and the server's window",
                   status, " ".join(message.split())[:_UPSTREAM_MESSAGE_CHARS])
    details: dict[str, Any] = {"upstream_status": status}
    figures = ""
    if isinstance(needed, int) and isinstance(available, int):
        details |= {"needed_tokens": needed, "available_tokens": available}
        figures = f" ({needed} tokens needed, {available} available)"
    return ContextLengthExceeded(
        f"The prompt does not fit the model server's context window{figures}; shorten the "
        "story context or lower max_tokens.", **details)


def _map_openai_error(error: openai.APIError, base: str) -> WriterAssistantError:
    if isinstance(error, openai.APIStatusError):
        return (context_exceeded(error.status_code, error.body)
                or upstream_error(error.status_code, error.response.headers, _describe(error)))
    if isinstance(error, openai.APITimeoutError):
        return GenerationFailed("The model server did not answer within "
                                "LLM_REQUEST_TIMEOUT_S; try again or raise it.")
    if isinstance(error, openai.APIConnectionError):
        return unreachable(base, error)
    logger.warning("the model server failed: %s", _describe(error))
    return GenerationFailed("The model server failed; try again (see the server log).")


def _describe(error: BaseException) -> str:
    message = getattr(error, "message", "") or type(error).__name__
    return " ".join(str(message).split())[:_UPSTREAM_MESSAGE_CHARS]


def _cached_tokens(usage: Any) -> int:
    """``usage.prompt_tokens_details.cached_tokens`` where the server reports it, else 0."""
    details = getattr(usage, "prompt_tokens_details", None)
    cached = getattr(details, "cached_tokens", None)
    return cached if isinstance(cached, int) and cached >= 0 else 0


def _finish_reason(reason: str) -> FinishReason:
    # The protocol knows stop and length; content_filter, tool_calls and the like end the text.
    return "length" if reason == "length" else "stop"
