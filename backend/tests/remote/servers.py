"""Servers on loopback for the remote-backend tests: any ASGI app under uvicorn in a thread, a
real ``python -m llama_cpp.server`` in a subprocess, and a scripted fake upstream."""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response, StreamingResponse
from starlette.routing import Route

from app.llm.llama import GgufTokenizer, default_model_path


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@contextmanager
def serve(app: Any, port: int | None = None) -> Iterator[str]:
    """Serve an ASGI app with uvicorn on loopback in a thread; yields its base URL."""
    port = port or free_port()
    server = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port,
                                           log_level="warning"))
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert time.monotonic() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)


def wait_for_model(base: str, timeout: float = 120) -> dict:
    """Poll ``/health`` until the model is ready (or ``timeout``); returns the last answer."""
    deadline = time.monotonic() + timeout
    health: dict = {}
    while time.monotonic() < deadline:
        try:
            health = httpx.get(f"{base}/health", timeout=5).json()
        except httpx.TransportError:
            health = {}
        if health.get("model_status") == "ready":
            break
        time.sleep(0.1)
    return health


@contextmanager
def llama_cpp_server(log: Path) -> Iterator[str]:
    """llama-cpp-python's OpenAI-compatible server on the embedded GGUF; yields ``.../v1``.

    ``--interrupt_requests False``: by default that server ends a running stream when another
    request (a tokenize call included) arrives.
    """
    port = free_port()
    threads = str(os.cpu_count() or 1)
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(default_model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "8192",
               "--n_threads", threads, "--n_threads_batch", threads,
               "--interrupt_requests", "False"]
    with log.open("wb") as out:
        process = subprocess.Popen(command, stdout=out, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}/v1"
    try:
        deadline = time.monotonic() + 120
        while True:
            assert process.poll() is None, f"llama_cpp.server exited: {log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, "llama_cpp.server did not start"
            try:
                if httpx.get(f"{base}/models", timeout=5).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        yield base
    finally:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()


@dataclass
class Upstream:
    """What the fake upstream does and what it saw.

    ``mode`` scripts ``/v1/chat/completions``: ``ok`` streams ``pieces`` then stops; ``drop``
    streams three pieces then breaks the connection; ``slow`` streams a piece every 20 ms for
    a minute; ``nofinish`` ends with ``[DONE]`` but no finish reason; a number (``429``,
    ``503``, ``400``) answers that status with ``Retry-After`` (none when ``retry_after`` is
    empty) and ``message`` as the error's text; ``exceed_context_size_error`` answers 400 as
    llama.cpp's llama-server does when the prompt is over its window (``n_prompt_tokens``
    5000, ``n_ctx`` 4096), ``context_length_exceeded`` as OpenAI's API (and
    llama-cpp-python's and vLLM's servers) do.
    ``fail_first`` lists statuses answered (the same way) to the next chat requests before
    ``mode`` applies, and ``fail_tokenize`` to the next tokenize calls: a transient failure.
    ``tokenize_offset`` is added to every count of a non-empty text (a server that serves
    another model). ``dialect`` is ``llama-cpp-python`` (``/extras/tokenize``),
    ``llama-server`` (``/tokenize`` and ``/props``) or anything else (no tokenize endpoint).
    ``usage``, when set, is sent in a last chunk with no choices (OpenAI's
    ``stream_options.include_usage``).
    """

    mode: str = "ok"
    pieces: list[str] = field(default_factory=lambda: ["Aria ", "walked ", "on."])
    retry_after: str = "7"
    tokenize_offset: int = 0
    dialect: str = "llama-cpp-python"
    n_ctx: int = 4096
    fail_first: list[str] = field(default_factory=list)
    fail_tokenize: list[str] = field(default_factory=list)
    requests: list[dict] = field(default_factory=list)
    authorization: list[str] = field(default_factory=list)
    streams_closed: int = 0
    usage: dict | None = None
    message: str = "busy"


#: The 400 bodies of a prompt over the window: llama-server's (tools/server/utils.hpp,
#: format_error_response) and OpenAI's (also llama-cpp-python's and vLLM's wording).
CONTEXT_EXCEEDED = {
    "exceed_context_size_error": {"error": {
        "code": 400, "type": "exceed_context_size_error", "n_prompt_tokens": 5000,
        "n_ctx": 4096,
        "message": "request (5000 tokens) exceeds the available context size (4096 tokens), "
                   "try increasing it"}},
    "context_length_exceeded": {"error": {
        "message": "This model's maximum context length is 4096 tokens. However, you "
                   "requested 5000 tokens (4800 in the messages, 200 in the completion). "
                   "Please reduce the length of the messages or completion.",
        "type": "invalid_request_error", "param": "messages",
        "code": "context_length_exceeded"}},
}


def _chunk(content: str | None = None, finish: str | None = None) -> str:
    delta = {"content": content} if content is not None else {}
    body = {"id": "x", "object": "chat.completion.chunk", "created": 0, "model": "fake-model",
            "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
    return f"data: {json.dumps(body)}\n\n"


def fake_upstream(state: Upstream) -> Starlette:
    """A scripted OpenAI-compatible server that tokenizes with the embedded GGUF's tokenizer."""
    tokenizer = GgufTokenizer.load(default_model_path())

    def failure(status: str) -> JSONResponse:
        headers = {"Retry-After": state.retry_after} if state.retry_after else None
        return JSONResponse({"error": {"message": state.message, "type": "server_error"}},
                            status_code=int(status), headers=headers)

    def tokens(count: int) -> JSONResponse:
        offset = state.tokenize_offset if count else 0  # another model, on real text
        return JSONResponse({"tokens": list(range(count + offset))})

    async def models(request: Request) -> Response:
        state.authorization.append(request.headers.get("authorization", ""))
        return JSONResponse({"object": "list", "data": [{"id": "fake-model", "object": "model"}]})

    async def extras_tokenize(request: Request) -> Response:
        if state.dialect != "llama-cpp-python":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if state.fail_tokenize:
            return failure(state.fail_tokenize.pop(0))
        text = (await request.json())["input"]
        # llama-cpp-python tokenizes with special=True and BOS as the model wants.
        return tokens(tokenizer.count_rendered_prompt(text) if text else 0)

    async def tokenize(request: Request) -> Response:
        if state.dialect != "llama-server":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        if state.fail_tokenize:
            return failure(state.fail_tokenize.pop(0))
        body = await request.json()
        text = body["content"]
        special = body.get("parse_special", True)
        count = tokenizer.count_rendered_prompt(text) if special else tokenizer.count_tokens(text)
        return tokens(count)

    async def props(_request: Request) -> Response:
        if state.dialect != "llama-server":
            return JSONResponse({"detail": "Not Found"}, status_code=404)
        return JSONResponse({"default_generation_settings": {"n_ctx": state.n_ctx}})

    async def chat(request: Request) -> Response:
        state.requests.append(await request.json())
        if state.fail_first:
            return failure(state.fail_first.pop(0))
        if state.mode.isdigit():
            return failure(state.mode)
        if state.mode in CONTEXT_EXCEEDED:
            return JSONResponse(CONTEXT_EXCEEDED[state.mode], status_code=400)

        async def events():
            if state.mode == "slow":
                try:
                    for _ in range(3000):
                        yield _chunk("word ")
                        await asyncio.sleep(0.02)
                finally:
                    state.streams_closed += 1
                return
            for piece in state.pieces:
                yield _chunk(piece)
                await asyncio.sleep(0.01)
            if state.mode == "drop":
                raise ConnectionResetError("the fake upstream drops the connection")
            if state.mode != "nofinish":
                yield _chunk(finish="stop")
            if state.usage is not None:
                yield "data: " + json.dumps({"id": "x", "object": "chat.completion.chunk",
                                             "created": 0, "model": "fake-model", "choices": [],
                                             "usage": state.usage}) + "\n\n"
            yield "data: [DONE]\n\n"

        return StreamingResponse(events(), media_type="text/event-stream")

    return Starlette(routes=[
        Route("/v1/models", models),
        Route("/extras/tokenize", extras_tokenize, methods=["POST"]),
        Route("/tokenize", tokenize, methods=["POST"]),
        Route("/props", props),
        Route("/v1/chat/completions", chat, methods=["POST"]),
    ])
