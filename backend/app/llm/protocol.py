"""What a text generator offers the rest of the service.

The in-process llama.cpp runtime (``app.llm.llama``), the scripted fake (``app.llm.fake``) and,
later, a remote OpenAI-compatible client all implement :class:`TextGenerator`. Nothing above
``app.llm`` knows which one it talks to.
"""

from __future__ import annotations

import os
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Protocol, runtime_checkable

from app.config import SamplingSettings
from app.errors import ContextLengthExceeded, GenerationFailed

Role = Literal["system", "user", "assistant"]
FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ChatMessage:
    """One chat message before the model's chat template is applied."""

    role: Role
    content: str


#: The request ``model`` that names the served model itself, without an adapter.
BASE_MODEL = "base"


@dataclass(frozen=True)
class LoraAdapter:
    """A registered LoRA adapter to apply to the base model for one generation.

    ``name``: its registry name; ``path``: its GGUF LoRA adapter file; ``sha256``: that file's
    SHA-256 (hex), which identifies it wherever state computed with it is kept (the KV cache,
    prefix snapshots, the response cache). Checked against the base model when registered
    (:mod:`app.finetune.registry`).
    """

    name: str
    path: Path
    sha256: str


@dataclass(frozen=True)
class SamplingParams:
    """Sampling settings for one generation.

    ``max_tokens`` counts completion tokens. ``json_schema`` (a JSON Schema dict), when set,
    constrains decoding to JSON matching it. ``seed`` ``None`` means a random seed. ``stop``:
    strings that end the completion where one first appears (it is not part of the text, and
    the finish reason is ``stop``); every backend honours them (see :class:`StopScanner`).
    ``adapter``: the LoRA adapter to generate with (``None``: the base model); a backend
    that serves no adapters (``serves_adapters`` false) refuses one.
    """

    max_tokens: int
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 40
    repeat_penalty: float = 1.1
    seed: int | None = None
    json_schema: dict[str, Any] | None = None
    stop: tuple[str, ...] = ()
    adapter: LoraAdapter | None = None

    @classmethod
    def of(cls, defaults: SamplingSettings, *, max_tokens: int | None = None,
           temperature: float | None = None, seed: int | None = None,
           json_schema: dict[str, Any] | None = None,
           stop: Sequence[str] = ()) -> SamplingParams:
        """The one way sampling is built: what is given, else the server's defaults
        (``LLM_MAX_TOKENS``, ``LLM_TEMPERATURE``; top-p, top-k and the repetition penalty
        always from them). Limits are the caller's to check."""
        return cls(
            max_tokens=max_tokens or defaults.max_tokens,
            temperature=defaults.temperature if temperature is None else temperature,
            top_p=defaults.top_p,
            top_k=defaults.top_k,
            repeat_penalty=defaults.repeat_penalty,
            seed=seed,
            json_schema=json_schema,
            stop=tuple(stop),
        )


@dataclass(frozen=True)
class SharedPrefix:
    """Which part of a prompt other prompts share, so its KV state may be kept and reused.

    ``messages``: how many leading messages form the shared block (the story context every
    agent on one story sees byte for byte). ``owner``: whose it is (the tenant); state made
    for one owner is never reused for another.
    """

    messages: int = 1
    owner: str = ""


@dataclass
class Timings:
    """Wall-clock timings of one generation, in milliseconds.

    ``queue_ms``: waiting for a turn in the model's queue. ``time_to_first_token_ms``: from holding
    the lock to the first completion token (prompt processing included). ``total_ms``: from holding
    the lock to the end. ``decode_tokens_per_s``: completion tokens after the first, per second of
    decoding (0 when fewer than two tokens were produced).
    """

    queue_ms: float = 0.0
    time_to_first_token_ms: float = 0.0
    total_ms: float = 0.0
    decode_tokens_per_s: float = 0.0

    @classmethod
    def measured(
        cls, queued: float, start: float, first: float | None, end: float, completion_tokens: int
    ) -> Timings:
        """Timings from ``time.perf_counter()`` readings (seconds): when the call queued, when
        it held the model, its first token (``None``: none came) and its end."""
        first = first if first is not None else end
        decode_s = end - first
        rate = (completion_tokens - 1) / decode_s if completion_tokens > 1 and decode_s > 0 else 0.0
        return cls(
            queue_ms=(start - queued) * 1000,
            time_to_first_token_ms=(first - start) * 1000,
            total_ms=(end - start) * 1000,
            decode_tokens_per_s=rate,
        )


@dataclass
class Completion:
    """The outcome of one generation. Token counts are in model tokens.

    ``cached_tokens``: prompt tokens whose KV state was reused instead of processed (the
    OpenAI API's ``usage.prompt_tokens_details.cached_tokens``); 0 when none or unknown.
    """

    text: str
    prompt_tokens: int
    completion_tokens: int
    finish_reason: FinishReason
    timings: Timings = field(default_factory=Timings)
    cached_tokens: int = 0


@dataclass(frozen=True)
class TokenDelta:
    """A piece of completion text as the model produced it (one or more tokens)."""

    text: str


StreamItem = TokenDelta | Completion


@runtime_checkable
class TextGenerator(Protocol):
    """A loaded language model that can count tokens and generate text.

    Implementations serialise generations (one at a time per model) and run blocking work off
    the event loop. ``count_tokens`` and ``count_prompt_tokens`` are synchronous, thread-safe
    and exact for the served model.
    """

    @property
    def n_ctx(self) -> int:
        """Context window in tokens (prompt plus completion)."""
        ...

    @property
    def model_name(self) -> str:
        """A short name of the served model (file stem or server-side id)."""
        ...

    def count_tokens(self, text: str) -> int:
        """Tokens of ``text`` on its own, without special tokens."""
        ...

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        """The exact prompt text the model sees: chat template applied, generation prompt added."""
        ...

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        """Prompt tokens of ``messages`` with the chat template applied (template overhead in)."""
        ...

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        """Leading prompt tokens of ``messages`` that the first ``shared`` messages fix,
        whatever follows them (the shared block's length in tokens)."""
        ...

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        """Generate a whole completion. ``prefix``, when given, names the shared block whose
        KV state may be reused and kept (backends without a prefix cache ignore it).

        Raises:
            app.errors.ContextLengthExceeded: prompt tokens + max_tokens exceed ``n_ctx``.
            app.errors.GenerationFailed: the model raised.
        """
        ...

    def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        """Yield :class:`TokenDelta` items as the model produces them, then one :class:`Completion`.

        Closing the iterator early (``aclose``) cancels the generation between tokens and frees
        the model. Raises as :meth:`generate`.
        """
        ...


def serves_adapters(generator: object) -> bool:
    """Whether ``generator`` applies LoRA adapters (``SamplingParams.adapter``): it says so
    with a true ``serves_adapters`` attribute (the in-process llama.cpp runtime does; a remote
    model server does not)."""
    return bool(getattr(generator, "serves_adapters", False))


async def final_completion(stream: AsyncIterator[StreamItem]) -> Completion:
    """The :class:`Completion` that ends ``stream`` (what ``generate`` is, for every backend).

    Raises:
        app.errors.GenerationFailed: the stream ended without one.
    """
    async for item in stream:
        if isinstance(item, Completion):
            return item
    raise GenerationFailed("the model stream ended without a completion")


class StopScanner:
    """Cuts a streamed completion at the first of ``stops``.

    :meth:`feed` takes each piece as the model produces it and returns what may be passed on
    now: text that could be the start of a stop string is held back until the next pieces
    show it is not (then it comes out) or it is (then it and everything after it is dropped,
    and :attr:`stopped` is set). :meth:`flush` returns what is held when the model ends on
    its own. Without stop strings every piece passes through unchanged.
    """

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stop for stop in stops if stop)
        self.stopped = False
        self._held = ""

    def feed(self, piece: str) -> str:
        """What of ``piece`` (after what was held) may be emitted now."""
        if self.stopped:
            return ""
        if not self.stops:
            return piece
        text = self._held + piece
        found = [at for at in (text.find(stop) for stop in self.stops) if at >= 0]
        if found:
            self.stopped, self._held = True, ""
            return text[:min(found)]
        keep = max((k for stop in self.stops for k in range(min(len(stop) - 1, len(text)), 0, -1)
                    if text.endswith(stop[:k])), default=0)
        self._held = text[len(text) - keep:]
        return text[:len(text) - keep]

    def flush(self) -> str:
        """The text held back, for when the completion ended without a stop string."""
        held, self._held = self._held, ""
        return "" if self.stopped else held


def check_window(prompt_tokens: int, max_tokens: int, n_ctx: int) -> None:
    """Refuse a generation whose prompt plus ``max_tokens`` would not fit ``n_ctx`` (tokens).

    Raises:
        app.errors.ContextLengthExceeded: with ``needed_tokens`` and ``available_tokens``.
    """
    if prompt_tokens + max_tokens > n_ctx:
        raise ContextLengthExceeded(
            f"prompt tokens ({prompt_tokens}) + max_tokens ({max_tokens}) exceed the context "
            f"window of {n_ctx}",
            param="max_tokens",
            needed_tokens=prompt_tokens + max_tokens,
            available_tokens=n_ctx,
        )


def rendered_prefix(render: Callable[[Sequence[ChatMessage]], str],
                    messages: Sequence[ChatMessage], shared: int) -> str:
    """The text at the start of ``render(messages)`` that the first ``shared`` messages fix.

    Rendered twice more with different probe messages after them; what all three renderings
    share is what no later message can change (the chat template's own text included).
    """
    head = list(messages[:shared])
    probes = [render([*head, ChatMessage("user", probe)]) for probe in ("A", "B")]
    return os.path.commonprefix([render(messages), *probes])  # noqa: RUF071 - strings, not paths


def common_prefix_length(a: Sequence[int], b: Sequence[int]) -> int:
    """Length of the longest common prefix of two token sequences."""
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n
