"""A scripted text generator for fast, deterministic unit tests.

It tokenizes with a simple rule (a word or a punctuation mark is one token), renders a
ChatML-like prompt, and answers with scripted replies. It enforces the same window invariant as
the real runtime, so budgeting bugs fail tests instead of passing silently.
"""

from __future__ import annotations

import asyncio
import re
from collections.abc import AsyncGenerator, Callable, Sequence
from dataclasses import dataclass, field

from app.errors import GenerationFailed, InvalidRequest
from app.llm.protocol import (
    ChatMessage,
    Completion,
    FinishReason,
    SamplingParams,
    SharedPrefix,
    StopScanner,
    StreamItem,
    TokenDelta,
    check_window,
    final_completion,
)

_TOKEN = re.compile(r"\w+|[^\w\s]|\n")

Reply = str | Callable[[Sequence[ChatMessage], SamplingParams], str]


@dataclass
class FakeGenerator:
    """Scripted generator.

    ``replies`` are used in order (the last one repeats); a callable reply gets the messages and
    params. ``fail_after`` raises :class:`GenerationFailed` after that many streamed tokens.
    ``token_delay_s`` sleeps between tokens (seconds), to play a slow model. ``calls`` records
    every ``(messages, params)`` it was asked to generate for, ``prefixes`` the
    :class:`SharedPrefix` of each, and ``produced`` the tokens each call produced (updated as it
    streams). It keeps no KV state: ``cached_tokens`` is always 0. It honours
    ``params.stop`` as the real runtime does: the reply ends before the first stop string
    (finish reason ``stop``); the token that completed it counts as produced.
    ``serves_adapters``: whether it accepts ``params.adapter`` (a reply callable sees it in
    the params; ``adapters`` records the adapter name of each call, ``None`` for the base);
    when false it refuses one as the remote backend does.
    """

    replies: list[Reply] = field(default_factory=lambda: ["Once upon a time."])
    context_window: int = 8192
    name: str = "fake"
    #: Stands for a model file's SHA-256 (generation records and the response cache key on it).
    sha256: str = "fa4e" * 16
    runtime: str = "fake"
    fail_after: int | None = None
    token_delay_s: float = 0.0
    calls: list[tuple[list[ChatMessage], SamplingParams]] = field(default_factory=list)
    prefixes: list[SharedPrefix | None] = field(default_factory=list)
    produced: list[int] = field(default_factory=list)
    serves_adapters: bool = True
    adapters: list[str | None] = field(default_factory=list)

    @property
    def n_ctx(self) -> int:
        return self.context_window

    @property
    def model_name(self) -> str:
        return self.name

    def count_tokens(self, text: str) -> int:
        return len(_TOKEN.findall(text))

    def render_prompt(self, messages: Sequence[ChatMessage]) -> str:
        parts = [f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages]
        return "".join(parts) + "<|im_start|>assistant\n"

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        # Each special marker counts as one token, like a real chat template.
        return sum(self.count_tokens(m.content) + 4 for m in messages) + 3

    def count_prefix_tokens(self, messages: Sequence[ChatMessage], shared: int) -> int:
        return sum(self.count_tokens(m.content) + 4 for m in messages[:shared])

    def _reply(self, messages: Sequence[ChatMessage], params: SamplingParams) -> str:
        index = min(len(self.calls), len(self.replies) - 1)
        self.calls.append((list(messages), params))
        reply = self.replies[index] if self.replies else ""
        return reply(messages, params) if callable(reply) else reply

    def _check(self, messages: Sequence[ChatMessage], params: SamplingParams) -> int:
        prompt_tokens = self.count_prompt_tokens(messages)
        check_window(prompt_tokens, params.max_tokens, self.n_ctx)
        return prompt_tokens

    async def generate(self, messages: Sequence[ChatMessage], params: SamplingParams,
                       prefix: SharedPrefix | None = None) -> Completion:
        return await final_completion(self.stream(messages, params, prefix))

    async def stream(
        self, messages: Sequence[ChatMessage], params: SamplingParams,
        prefix: SharedPrefix | None = None,
    ) -> AsyncGenerator[StreamItem, None]:
        if params.adapter is not None and not self.serves_adapters:
            raise InvalidRequest("the fake model serves no adapters", param="model")
        prompt_tokens = self._check(messages, params)
        self.prefixes.append(prefix)
        self.adapters.append(params.adapter.name if params.adapter else None)
        pieces = re.findall(r"\S+\s*|\s+", self._reply(messages, params))
        call = len(self.produced)
        self.produced.append(0)
        scanner = StopScanner(params.stop)
        text, produced = "", 0
        for piece in pieces:
            if produced >= params.max_tokens:
                break
            if self.fail_after is not None and produced >= self.fail_after:
                raise GenerationFailed("the fake model failed mid-stream")
            await asyncio.sleep(self.token_delay_s)
            out = scanner.feed(piece)
            text += out
            produced += 1
            self.produced[call] = produced
            if out:
                yield TokenDelta(out)
            if scanner.stopped:
                break
        if tail := scanner.flush():
            text += tail
            yield TokenDelta(tail)
        finished = scanner.stopped or produced == len(pieces)
        finish: FinishReason = "stop" if finished else "length"
        yield Completion(text, prompt_tokens, produced, finish)
