"""Decode benchmark: our server over HTTP against raw llama-cpp-python, in one run.

Prints one ratio, measured side by side in this run (these machines are noisy): decode
tokens/s of ``/generate-chapter/stream`` over HTTP (client-side, from the first to the last
``token`` event) divided by raw ``Llama.create_completion`` on the same prompt tokens with the
same sampling (greedy). Goal: at least 0.9 (``bench/bench_agents.py`` holds the same figure to
0.95 on a longer prompt). Runs are interleaved (raw, server, raw, server, ...) and medians
reported. The sequence of agents an author runs, cold and warm, is ``bench/bench_agents.py``.

    cd backend && python -m bench.bench_generation [--rounds 3] [--max-tokens 128]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import time
from pathlib import Path

import httpx
from httpx_sse import connect_sse

BACKEND = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(BACKEND / "examples"))

from alice_context import build_request  # noqa: E402

from app.config import Settings  # noqa: E402


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_server() -> tuple[subprocess.Popen, str]:
    port = free_port()
    process = subprocess.Popen(
        [sys.executable, "-m", "uvicorn", "app.main:create_app", "--factory",
         "--host", "127.0.0.1", "--port", str(port), "--log-level", "warning"],
        cwd=BACKEND,
    )
    base = f"http://127.0.0.1:{port}"
    for _ in range(600):
        try:
            if httpx.get(f"{base}/health", timeout=2).json()["model_status"] == "ready":
                return process, base
        except httpx.TransportError:
            pass
        time.sleep(0.2)
    process.kill()
    raise SystemExit("server did not become ready")


def stream_chapter(http: httpx.Client, path: str, body: dict) -> dict[str, float]:
    """Stream one request; client-side time to first token and decode rate."""
    start = time.perf_counter()
    token_times: list[float] = []
    done: dict = {}
    with connect_sse(http, "POST", path, json=body) as source:
        for event in source.iter_sse():
            if event.event == "token":
                token_times.append(time.perf_counter())
            elif event.event == "done":
                done = json.loads(event.data)
            elif event.event == "error":
                raise SystemExit(f"stream error: {event.data}")
    tokens = done["usage"]["completion_tokens"]
    decode_s = token_times[-1] - token_times[0]
    return {
        "ttft_s": token_times[0] - start,
        "server_ttft_s": done["timings"]["time_to_first_token_ms"] / 1000,
        "tokens": tokens,
        "decode_tps": (tokens - 1) / decode_s if decode_s > 0 else 0.0,
    }


def raw_decode(llama, tokens: list[int], max_tokens: int, settings: Settings) -> dict[str, float]:
    """Raw llama-cpp-python on the same prompt tokens and sampling as the server's request
    (greedy; the prompt is in the KV cache after the first run, as it is for the server)."""
    start = time.perf_counter()
    times: list[float] = []
    checks = 0

    def count(_ids, _logits):
        nonlocal checks
        checks += 1  # once per sampled token, and once more at the end (as in the server)
        return False

    from llama_cpp import StoppingCriteriaList

    for chunk in llama.create_completion(
        tokens, max_tokens=max_tokens, temperature=0.0, top_p=settings.model.sampling.top_p,
        top_k=settings.model.sampling.top_k,
        repeat_penalty=settings.model.sampling.repeat_penalty, seed=1,
        stream=True, stopping_criteria=StoppingCriteriaList([count]),
    ):
        if chunk["choices"][0]["text"]:
            times.append(time.perf_counter())
    produced = checks - 1
    finish_eog = produced < max_tokens
    produced -= 1 if finish_eog else 0
    decode_s = times[-1] - times[0]
    return {"ttft_s": times[0] - start, "tokens": produced,
            "decode_tps": (produced - 1) / decode_s if decode_s > 0 else 0.0}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--max-tokens", type=int, default=128)
    args = parser.parse_args()

    from llama_cpp import Llama

    from app.llm.llama import default_model_path

    settings = Settings()
    process, base = start_server()
    try:
        with httpx.Client(base_url=base, timeout=600) as http:
            request = build_request(chapters=1)
            request.update(max_tokens=args.max_tokens, temperature=0.0, seed=1)
            preview = http.post("/api/v1/context/preview",
                                json={"operation": "generate-chapter", "request": request}).json()
            prompt = preview["prompt"]

            threads = settings.model.n_threads or os.cpu_count() or 1
            llama = Llama(model_path=str(settings.model.path or default_model_path()),
                          n_ctx=settings.model.n_ctx, n_threads=threads, n_threads_batch=threads,
                          n_batch=settings.model.n_batch, flash_attn=settings.model.flash_attn,
                          verbose=False)
            tokens = llama.tokenize(prompt.encode(), add_bos=False, special=True)

            raw_runs, server_runs = [], []
            for _ in range(args.rounds):
                raw_runs.append(raw_decode(llama, tokens, args.max_tokens, settings))
                server_runs.append(stream_chapter(http, "/api/v1/generate-chapter/stream",
                                                  request))
    finally:
        process.terminate()
        process.wait(timeout=30)

    raw_tps = statistics.median(r["decode_tps"] for r in raw_runs)
    http_tps = statistics.median(r["decode_tps"] for r in server_runs)
    print(f"prompt: Alice example, {len(tokens)} prompt tokens, max_tokens {args.max_tokens}, "
          f"{args.rounds} interleaved rounds, model {Path(llama.model_path).name}")
    print(f"{'':34}{'raw llama-cpp':>15}{'server (HTTP)':>15}{'ratio':>8}")
    print(f"{'decode tokens/s (median)':34}{raw_tps:15.1f}{http_tps:15.1f}"
          f"{http_tps / raw_tps:8.2f}   goal >= 0.9")
    print(f"{'completion tokens (median)':34}"
          f"{statistics.median(r['tokens'] for r in raw_runs):15.0f}"
          f"{statistics.median(r['tokens'] for r in server_runs):15.0f}")


if __name__ == "__main__":
    main()
